"""Fixtures shared by several test modules: CPU instruction-set levels, the compiled operators,
tiny reference checkpoints (saved by transformers, loaded by both sides), the tiny fine-tuning
checkpoint and dataset, the demo checkpoint for the example scripts. Helper code lives in
``tests/helpers/``."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # the one place: test modules import ``helpers``
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

from paddlemix_qwen25vl.cpu import ISA_ENV, ISA_LEVELS, detected_isa  # noqa: E402
from paddlemix_qwen25vl.runtime import prepare_cpu  # noqa: E402

prepare_cpu()  # what a model load does: threads, MKL's AVX2 path on AMD (importing the package does neither)

from paddlemix_qwen25vl import Qwen2_5_VLProcessor  # noqa: E402

from helpers.checkpoints import save_tiny_checkpoint  # noqa: E402
from helpers.data import qa_records, write_dataset  # noqa: E402
from helpers.reference import build_reference_model  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny model with the demo tokenizer and processor files."""
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_ckpt")))


@pytest.fixture(scope="session")
def processor(tiny_checkpoint):
    return Qwen2_5_VLProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def meta_path(tmp_path_factory):
    """Meta file of 8 single-image colour questions and a text-only record."""
    root = str(tmp_path_factory.mktemp("qa"))
    return write_dataset(root, qa_records(root, count=8))


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    """Environment for the example scripts: the demo checkpoint built once into a temporary cache."""
    from paddlemix_qwen25vl.demo import demo_checkpoint

    cache = str(tmp_path_factory.mktemp("demo_cache"))
    demo_checkpoint(cache)
    return {**os.environ, "PADDLEMIX_DEMO_DIR": cache}
