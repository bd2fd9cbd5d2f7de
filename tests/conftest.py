"""Shared fixtures: tiny reference checkpoints saved by transformers, loaded by both sides."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

from reference import build_reference_model  # noqa: E402

from paddlemix_qwen25vl.cpu import ISA_ENV, ISA_LEVELS, detected_isa  # noqa: E402
from paddlemix_qwen25vl.runtime import prepare_cpu  # noqa: E402

prepare_cpu()  # what a model load does: threads, MKL's AVX2 path on AMD (importing the package does neither)

# The instruction-set levels this CPU runs; PORTABLE_LEVELS are what the tests that matter run
# under PADDLEMIX_CPU_ISA: the AVX2 path always (what AVX2-only machines execute) and this CPU's
# own best path where it is a different one.
CPU_LEVELS = ISA_LEVELS[: ISA_LEVELS.index(detected_isa()) + 1]
PORTABLE_LEVELS = sorted({"avx2", detected_isa()} & set(CPU_LEVELS), key=ISA_LEVELS.index, reverse=True)


def pytest_generate_tests(metafunc):
    """``portable_cpu`` runs a test under each of PORTABLE_LEVELS, ``cpu_level`` under every level."""
    if "portable_cpu" in metafunc.fixturenames:
        metafunc.parametrize("portable_cpu", PORTABLE_LEVELS, indirect=True)
    if "cpu_level" in metafunc.fixturenames:
        metafunc.parametrize("cpu_level", CPU_LEVELS, indirect=True)


def _cap_isa(request, monkeypatch):
    monkeypatch.setenv(ISA_ENV, request.param)  # subprocesses inherit it too
    return request.param


@pytest.fixture
def portable_cpu(request, monkeypatch):
    """The test runs with PADDLEMIX_CPU_ISA set to one of PORTABLE_LEVELS."""
    return _cap_isa(request, monkeypatch)


@pytest.fixture
def cpu_level(request, monkeypatch):
    """The test runs with PADDLEMIX_CPU_ISA set to each level this CPU executes."""
    return _cap_isa(request, monkeypatch)


@pytest.fixture(scope="session")
def custom_ops():
    """Build (or reuse) the custom operators once per session; modules whose tests run
    attn_implementation="flash_attention_2" or the operators ask for it (``pytestmark``), so
    they run the operators rather than the fallbacks and other test runs compile nothing."""
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
