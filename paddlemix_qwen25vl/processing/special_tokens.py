"""The Qwen2/2.5 special and added tokens, at their released ids."""
from typing import Dict, List, Tuple

# First id after the 151,643 BPE ranks of qwen.tiktoken.
FIRST_ADDED_ID = 151643

# (content, special) in id order from FIRST_ADDED_ID; the released tokenizer marks the
# tool-call, fim, repo and file tokens as added but not special (they survive
# skip_special_tokens).
ADDED_TOKENS: List[Tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]

ADDED_TOKEN_IDS: Dict[str, int] = {tok: FIRST_ADDED_ID + i for i, (tok, _) in enumerate(ADDED_TOKENS)}

# The special ones other than <|endoftext|> (which is the pad token).
ADDITIONAL_SPECIAL_TOKENS: List[str] = [tok for tok, special in ADDED_TOKENS[1:] if special]


def added_tokens_decoder() -> Dict[int, dict]:
    """`added_tokens_decoder` as tokenizer_config.json stores it: id -> AddedToken fields.

    No token strips the white space next to it (lstrip/rstrip False), as released.
    """
    return {
        FIRST_ADDED_ID + i: {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, (content, special) in enumerate(ADDED_TOKENS)
    }

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
