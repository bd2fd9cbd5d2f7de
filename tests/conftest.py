"""Shared fixtures: tiny reference checkpoints saved by transformers, loaded by both sides."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

from reference import build_reference_model  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def custom_ops():
    """Build (or reuse) the custom flash-attention operator once, so that every
    attn_implementation="flash_attention_2" test runs it rather than the sdpa fallback."""
    from paddlemix_qwen25vl.ops import build_ops

    return build_ops()


@pytest.fixture(scope="session", params=[True, False], ids=["tied", "untied"])
def reference_checkpoint(request, tmp_path_factory):
    """(reference torch model, directory it was saved to with transformers' save_pretrained)."""
    tied = request.param
    model = build_reference_model(tie_word_embeddings=tied)
    path = tmp_path_factory.mktemp("tied" if tied else "untied")
    model.save_pretrained(str(path))
    return model, str(path)
