"""Every CPU: instruction sets checked at run time, the PADDLEMIX_CPU_ISA cap, MKL's path on AMD,
and what importing the package leaves untouched."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl import cpu, layers, runtime
from paddlemix_qwen25vl.layers import RMSNorm
from paddlemix_qwen25vl.ops import build_ops, flash_attn_varlen_func

from helpers.paths import REPO

pytestmark = pytest.mark.usefixtures("custom_ops")  # these tests run the compiled operators


def test_cap_never_exceeds_the_cpu(monkeypatch):
    best = cpu.detected_isa()
    monkeypatch.delenv(cpu.ISA_ENV, raising=False)
    assert cpu.cpu_isa() == best
    for level in cpu.ISA_LEVELS:
        monkeypatch.setenv(cpu.ISA_ENV, level)
        expected = min(level, best, key=cpu.ISA_LEVELS.index)
        assert cpu.cpu_isa() == expected
    monkeypatch.setenv(cpu.ISA_ENV, "AUTO")
    assert cpu.cpu_isa() == best


def test_unknown_cap_names_the_variable(monkeypatch):
    monkeypatch.setenv(cpu.ISA_ENV, "sse9")
    with pytest.raises(ValueError, match=r"PADDLEMIX_CPU_ISA='sse9' is not one of auto, avx512, avx2, baseline"):
        cpu.cpu_isa()


def test_rms_norm_uses_the_fused_kernel_only_with_avx512(cpu_level, monkeypatch):
    """Paddle's fused RMSNorm CPU kernel executes AVX-512 unconditionally: below that level it
    must not be called at all, and both paths equal the float64 norm."""
    calls = []
    fused = layers.fused_rms_norm

    def spy(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(layers, "fused_rms_norm", spy)
    norm = RMSNorm(64, eps=1e-6)
    norm.weight.set_value(paddle.linspace(0.5, 1.5, 64))
    x = np.random.default_rng(0).standard_normal((3, 5, 64)).astype(np.float32)
    with paddle.no_grad():
        got = norm(paddle.to_tensor(x)).numpy()
    assert bool(calls) == (cpu_level == "avx512")
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * np.linspace(0.5, 1.5, 64)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _disassembly_by_function(library: Path) -> dict:
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", str(library)], check=True,
                          capture_output=True, text=True).stdout
    functions, name = {}, None
    for line in text.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            name = header.group(1)
            functions[name] = []
        elif name is not None and "\t" in line:
            functions[name].append(line.split("\t", 1)[1])
    return functions


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_operator_library_keeps_wide_instructions_in_their_variants():
    """Outside the *_avx512 / *_avx2 copies the library is plain x86-64 (no VEX/EVEX code), and
    the AVX2 copies use no AVX-512 registers: nothing runs that the CPU was not asked about."""
    library = Path(build_ops().__file__).with_suffix(".so")
    if not library.exists():
        library = next(Path(build_ops().__file__).parent.glob("*.so"))
    avx = re.compile(r"%[yz]mm|%k[0-7]\b|^v[a-z]")
    avx512 = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2[0-9]|3[01])\b")
    variants = {"avx512": 0, "avx2": 0}
    for name, instructions in _disassembly_by_function(library).items():
        level = "avx512" if "_avx512<" in name else "avx2" if "_avx2<" in name else "baseline"
        if level in variants:
            variants[level] += 1
        if level == "baseline":
            wide = [i for i in instructions if avx.search(i)]
            assert not wide, f"{name} runs AVX code unchecked: {wide[:3]}"
        elif level == "avx2":
            wide = [i for i in instructions if avx512.search(i)]
            assert not wide, f"{name} runs AVX-512 code in the AVX2 copy: {wide[:3]}"
    assert variants["avx512"] >= 3 and variants["avx2"] >= 3, variants


@pytest.mark.skipif(cpu.detected_isa() == "baseline", reason="this CPU has no AVX2: one code path only")
def test_cap_switches_the_operator_code_path(monkeypatch):
    """Baseline (SSE, separate multiply and add) and AVX2 (fused multiply-add) round differently:
    outputs that differ in their last bits show the cap reached the compiled operator."""
    build_ops()
    rng = np.random.default_rng(0)
    q, k, v = (paddle.to_tensor(rng.standard_normal((200, 4, 64)).astype(np.float32)) for _ in range(3))
    cu = paddle.to_tensor(np.array([0, 200], dtype=np.int32))
    outputs = {}
    for level in ("baseline", "avx2"):
        monkeypatch.setenv(cpu.ISA_ENV, level)
        outputs[level] = flash_attn_varlen_func(q, k, v, cu, cu, 200, 200, causal=True).numpy()
    np.testing.assert_allclose(outputs["baseline"], outputs["avx2"], atol=1e-5)
    assert not np.array_equal(outputs["baseline"], outputs["avx2"])


@pytest.mark.parametrize(
    "vendor, env, expected",
    [
        ("AuthenticAMD", {}, "5"),
        ("AuthenticAMD", {"PADDLEMIX_MKL_AMD_FAST": "0"}, None),
        ("AuthenticAMD", {"PADDLEMIX_CPU_ISA": "baseline"}, None),
        ("AuthenticAMD", {"MKL_DEBUG_CPU_TYPE": "4"}, "4"),
        ("GenuineIntel", {}, None),
    ],
    ids=["amd", "opted_out", "baseline_cap", "user_choice_kept", "intel"],
)
def test_mkl_fast_path_only_on_amd_with_avx2(monkeypatch, vendor, env, expected):
    for name in ("MKL_DEBUG_CPU_TYPE", "PADDLEMIX_MKL_AMD_FAST", cpu.ISA_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cpu, "cpu_vendor_and_model", lambda: (vendor, "test CPU"))
    monkeypatch.setattr(cpu, "detected_isa", lambda: "avx2")
    cpu.enable_fast_mkl_on_amd()
    assert os.environ.get("MKL_DEBUG_CPU_TYPE") == expected


@pytest.mark.parametrize("value, threads", [("3", 3), ("4,2", 4), (" 2 , 1 ", 2)])
def test_thread_count_accepts_openmp_list_form(monkeypatch, value, threads):
    monkeypatch.delenv("PADDLEMIX_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert runtime.default_num_threads() == threads


THREADS_AFTER_PADDLE_PROBE = """
import os, paddle  # Paddle first: its import writes OMP_NUM_THREADS=1 over an unset variable
from paddlemix_qwen25vl.runtime import default_num_threads
print("threads", default_num_threads(), "of", len(os.sched_getaffinity(0)))
"""


@pytest.mark.parametrize("given", [None, "1"], ids=["unset", "one"])
def test_default_threads_survive_paddles_import(tmp_path, given):
    """Unset OMP_NUM_THREADS means every usable core even when Paddle, imported first, has set
    it to 1; a 1 the user gave stays 1."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PADDLEMIX_NUM_THREADS")}
    if given is not None:
        env["OMP_NUM_THREADS"] = given
    result = subprocess.run([sys.executable, "-c", THREADS_AFTER_PADDLE_PROBE], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    _, threads, _, cores = result.stdout.strip().splitlines()[-1].split()
    assert int(threads) == (int(cores) if given is None else 1)


@pytest.mark.parametrize("value", ["two", "0", ",2"])
def test_bad_thread_count_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("PADDLEMIX_NUM_THREADS", value)
    with pytest.raises(ValueError, match="PADDLEMIX_NUM_THREADS"):
        runtime.default_num_threads()


def test_import_changes_no_process_wide_state(tmp_path):
    """Threads and MKL's code path are set by a model load or a script start, not by ``import``."""
    probe = (
        "import os\n"
        "import paddlemix_qwen25vl\n"
        "from paddlemix_qwen25vl import runtime\n"
        "assert not runtime._threads_set, 'import set the thread count'\n"
        "assert 'MKL_DEBUG_CPU_TYPE' not in os.environ, 'import chose an MKL code path'\n"
        "print('untouched')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "untouched" in result.stdout, result.stderr[-2000:]


ONE_OPENMP_PROBE = """
import os, paddle
from paddlemix_qwen25vl import set_num_threads
from paddlemix_qwen25vl.ops import build_ops
from paddlemix_qwen25vl.ops.weight_only import quantize_weight, weight_only_linear
set_num_threads(2)
build_ops()
qweight, scales = quantize_weight(paddle.randn([64, 256]), "weight_only_int8")
x = paddle.randn([1024, 1024])
(x @ x).numpy()  # MKL's OpenMP team is running now
before = len(os.listdir("/proc/self/task"))
for _ in range(3):
    weight_only_linear(paddle.randn([1, 256]), qweight, scales, None, "weight_only_int8").numpy()
print("new threads", len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not (Path(paddle.__file__).parent / "libs" / "libiomp5.so").is_file(),
                    reason="this Paddle build ships no Intel OpenMP runtime")
def test_custom_operators_share_paddles_openmp_threads(tmp_path):
    """The custom operators run on the OpenMP runtime of Paddle and MKL, not a second team of
    their own whose idle threads spun on the cores the other needed (or, with MKL's threads
    put to sleep to make room, paid a wake-up in every Paddle operator): calling one after a
    matrix product starts no thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # a team of one would start no thread either way
    result = subprocess.run([sys.executable, "-c", ONE_OPENMP_PROBE], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "new threads 0"


def test_cpu_description_names_the_path_in_use():
    description = cpu.cpu_description()
    assert description["isa_in_use"] in cpu.ISA_LEVELS
    assert "AVX2" in description["instruction_sets"] or description["isa_in_use"] == "baseline"
    assert description["mkl_code_path"]


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 not installed (Debian: apt-get install qemu-user)")
def test_main_job_on_an_emulated_cpu_without_avx512(tmp_path):
    """The README's main command on an emulated Haswell (AVX2 + FMA, no AVX-512): what runs on
    an AVX2-only machine even when this one has AVX-512. A few minutes under emulation."""
    env = {k: v for k, v in os.environ.items() if k not in (cpu.ISA_ENV, "MKL_DEBUG_CPU_TYPE")}
    from paddlemix_qwen25vl.demo import demo_checkpoint

    demo_checkpoint(str(tmp_path / "demo"))  # built natively: emulation is for the main job itself
    env["PADDLEMIX_DEMO_DIR"] = str(tmp_path / "demo")
    emulated = ["qemu-x86_64", "-cpu", "Haswell", os.path.realpath(sys.executable)]
    probe = "from paddlemix_qwen25vl.cpu import cpu_isa; print('level', cpu_isa())"
    detected = subprocess.run([*emulated, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
    assert "level avx2" in detected.stdout, detected.stderr[-3000:]
    command = [*emulated, str(REPO / "examples" / "single_image_infer.py"), "--max_new_tokens", "3"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("output_text:")[1].strip() == "circle"
