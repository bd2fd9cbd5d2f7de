"""The Qwen2.5-VL tokenizer: paddlenlp's byte-level BPE Qwen2 tokenizer plus the VL chat template."""
import json
import os
from typing import Any, Dict, List, Optional, Union

import jinja2

from paddlenlp.transformers import AddedToken
from paddlenlp.transformers.qwen2.tokenizer import Qwen2Tokenizer
from paddlenlp.transformers.tokenizer_utils import ChatTemplate

from .chat_template import QWEN2_5_VL_CHAT_TEMPLATE
from .special_tokens import (
    ADDITIONAL_SPECIAL_TOKENS,
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    VIDEO_TOKEN,
    added_tokens_decoder,
)

Message = Dict[str, Any]


class MIXQwen2_5_Tokenizer(Qwen2Tokenizer):
    """Qwen2.5-VL tokenizer (the real Qwen2/2.5 vocabulary, special tokens at ids 151643-151664).

    Differences from paddlenlp's `Qwen2Tokenizer`: eos is `<|im_end|>`, padding is on the
    left by default (batched generation), and `apply_chat_template` follows transformers'
    signature and renders the Qwen2.5-VL template (images, videos, `add_vision_id`).
    Build the files with `build_tokenizer_files(dir)` and load them with `from_pretrained(dir)`.
    """

    image_token = IMAGE_TOKEN
    video_token = VIDEO_TOKEN

    def __init__(
        self,
        vocab_file: str,
        merges_file: str,
        eos_token: str = EOS_TOKEN,
        pad_token: str = PAD_TOKEN,
        padding_side: str = "left",
        chat_template: Optional[str] = None,
        **kwargs,
    ):
        # Built without a tokenizer_config.json, the added tokens still get their released ids.
        kwargs.setdefault(
            "added_tokens_decoder", {i: AddedToken(**fields) for i, fields in added_tokens_decoder().items()}
        )
        kwargs.setdefault("additional_special_tokens", ADDITIONAL_SPECIAL_TOKENS)
        super().__init__(
            vocab_file, merges_file, eos_token=eos_token, pad_token=pad_token, padding_side=padding_side, **kwargs
        )
        # paddlenlp only keeps special tokens whole; the non-special added ones (<tool_call>,
        # fim, ...) must not be split by BPE either.
        self.unique_no_split_tokens = sorted(
            set(self.unique_no_split_tokens) | set(self.added_tokens_encoder) | set(self.all_special_tokens)
        )
        self._create_trie(self.unique_no_split_tokens)
        # a saved template (tokenizer_config.json) arrives as `chat_template`; else Qwen2.5-VL's
        self.init_chat_template(chat_template or QWEN2_5_VL_CHAT_TEMPLATE)

    def init_chat_template(self, chat_template: Union[str, dict]) -> None:
        """Install a jinja template string, or a chat_template.json path/dict.

        Also accepts transformers' chat_template.json ({"chat_template": "..."}), which the
        released checkpoints ship and paddlenlp alone cannot read.
        """
        if isinstance(chat_template, str) and os.path.isfile(chat_template):
            with open(chat_template, encoding="utf-8") as f:
                chat_template = json.load(f)
        if isinstance(chat_template, dict) and "chat_template" in chat_template:
            chat_template = chat_template["chat_template"]
        super().init_chat_template(chat_template)

    def tokenize(self, text: str, **kwargs) -> List[str]:
        """Split `text` on the added tokens, then BPE each piece (NFC-normalised first).

        Unlike paddlenlp's default, never strips the white space around an added token:
        every Qwen added token has lstrip = rstrip = False, so "<|im_end|>\n" keeps its "\n".
        """
        split_special_tokens = kwargs.pop("split_special_tokens", self.split_special_tokens)
        text, _ = self.prepare_for_tokenization(text, **kwargs)
        pieces = [text] if split_special_tokens else self.tokens_trie.split(text)
        no_split = set() if split_special_tokens else set(self.unique_no_split_tokens)
        tokens = []
        for piece in pieces:
            if piece in no_split:
                tokens.append(piece)
            elif piece:
                tokens.extend(self._tokenize(piece))
        return tokens

    @property
    def image_token_id(self) -> int:
        """Id of `<|image_pad|>`."""
        return self.convert_tokens_to_ids(self.image_token)

    @property
    def video_token_id(self) -> int:
        """Id of `<|video_pad|>`."""
        return self.convert_tokens_to_ids(self.video_token)

    def apply_chat_template(
        self,
        conversation: Union[List[Message], str],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        add_vision_id: bool = False,
        chat_template: Optional[str] = None,
        **tokenizer_kwargs,
    ) -> Union[str, List[int], Dict[str, Any]]:
        """Render messages with the Qwen2.5-VL chat template.

        `conversation` is a list of {"role", "content"} messages whose content is a string
        or a list of {"type": "image"|"video"|"text", ...} items (a bare string is one user
        message). Returns the prompt string when `tokenize` is False, else its ids (a list),
        or the tokenizer's batch encoding when `return_tensors` is given.
        """
        if isinstance(conversation, str):
            conversation = [{"role": "user", "content": conversation}]
        template = (
            ChatTemplate._compile_jinja_template(chat_template) if chat_template is not None else self.chat_template
        )
        if not isinstance(template, jinja2.Template):
            raise ValueError(f"apply_chat_template needs a jinja chat template, got {type(template).__name__}")
        prompt = template.render(
            messages=conversation,
            add_generation_prompt=add_generation_prompt,
            add_vision_id=add_vision_id,
            **self.special_tokens_map,
        )
        if not tokenize:
            return prompt
        encoded = self(prompt, add_special_tokens=False, **tokenizer_kwargs)
        return encoded if tokenizer_kwargs.get("return_tensors") else encoded["input_ids"]
