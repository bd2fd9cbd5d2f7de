"""The comparison harness (benchmarks/compare.py, benchmarks/harness/): FLOP/byte counting, the
report writer, the vision-memory check, the streamed checkpoint writer, a smoke run of this
library's worker, and the worker's standard-library-only imports."""

import importlib.util
import json
import subprocess
import sys

import pytest

from helpers.paths import REPO
from helpers.scripts import import_script

import_script("benchmarks/harness")  # as ``harness``, the name benchmarks/compare.py imports it by

from harness import checkpoints, counts, llamacpp, machine as machine_probe, options, orchestrate, report, runs, summary  # noqa: E402
from harness.common import run_worker  # noqa: E402

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
    reason="building benchmark checkpoints needs torch and transformers (requirements-test.txt)",
)


def test_quick_config_shapes():
    config = checkpoints.bench_config("quick")
    assert config["num_hidden_layers"] == 4 and config["vocab_size"] == 151936 and config["tie_word_embeddings"]
    assert config["vision_config"]["depth"] == 8 and config["vision_config"]["fullatt_block_indexes"] == [3, 7]
    assert checkpoints.bench_config("full")["num_hidden_layers"] == 36


def test_window_lengths_follow_the_reference_partition():
    vision = checkpoints.bench_config("quick")["vision_config"]
    # 672 px: 48x48 patches = 24x24 merged tokens = 6x6 windows of 4x4 merged tokens (64 patches)
    assert counts.vision_window_lengths((1, 48, 48), vision) == [64] * 36
    # 20x28 patches: 10x14 merged tokens -> rows of 4, 4, 2 and columns of 4, 4, 4, 2; two frames
    rows, cols = [4, 4, 2], [4, 4, 4, 2]
    expected = [4 * r * c for r in rows for c in cols] * 2
    assert counts.vision_window_lengths((2, 20, 28), vision) == expected
    assert sum(expected) == 2 * 20 * 28


def test_prefill_flops_of_the_quick_model():
    config = checkpoints.bench_config("quick")
    flops = counts.prefill_flops([(1, 48, 48)], prompt_tokens=600, config=config)
    patches, d, inter = 2304, 1280, 3420
    vision = (
        2 * 1176 * d * patches  # patch embedding (3 x 2 x 14 x 14 inputs)
        + 8 * 2 * (d * 3 * d + d * d + 3 * d * inter) * patches  # qkv, proj, gate/up/down
        + 4 * d * (6 * 36 * 64**2 + 2 * patches**2)  # 6 window blocks, 2 full blocks
        + 576 * 2 * (4 * d * 4 * d + 4 * d * 2048)  # merger
    )
    layer = 2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 11008
    assert flops["vision"] == vision
    assert flops["decoder_linear"] == 2 * layer * 600 * 4
    assert flops["decoder_attention"] == 2 * 2048 * 600 * 601 * 4
    assert flops["lm_head_last_token"] == 2 * 2048 * 151936  # one position only
    assert flops["total"] == pytest.approx(sum(v for k, v in flops.items() if k != "total"))


def test_decode_bytes_of_the_quick_model():
    config = checkpoints.bench_config("quick")
    nbytes = counts.decode_bytes_per_token(config, context=100)
    layer = 2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 11008 + (2048 + 512) + 2 * 2048
    assert nbytes["decoder_weights"] == 4 * (4 * layer + 2048)
    assert nbytes["lm_head"] == 4 * 2048 * 151936
    assert nbytes["kv_cache"] == 4 * 4 * 2 * 256 * 100
    assert nbytes["total"] == sum(v for k, v in nbytes.items() if k != "total")


def test_vision_memory_linearity():
    linear = [{"patches": n, "extra_peak_mib": 10 + 0.1 * n} for n in (576, 2304, 5184)]
    quadratic = [{"patches": n, "extra_peak_mib": 10 + 1e-4 * n * n} for n in (576, 2304, 5184)]
    assert summary.vision_memory_linearity(linear)[0] == "PASS"
    verdict, growth = summary.vision_memory_linearity(quadratic)
    assert verdict == "FAIL" and growth == pytest.approx((5184 + 2304) / (2304 + 576))
    assert summary.vision_memory_linearity(linear[:2]) == ("n/a", None)


def _row(impl, label, prefill_s, decode_tok_s):
    return {"impl": impl, "label": label, "media": "image", "preprocess_s": 0.1, "vision_s": 1.0,
            "prefill_s": prefill_s, "generate_s": prefill_s + 31 / decode_tok_s, "decode_tok_s": decode_tok_s,
            "prompt_tokens": 600, "grids": [[1, 48, 48]], "new_tokens": 32, "tokens": [1, 2, 3],
            "peak_rss_mib": 4096.0}


def test_summary_targets_and_reports(tmp_path):
    results = {
        "config_name": "quick", "config": checkpoints.bench_config("quick"), "threads": 2, "repeats": 3,
        "paddleformers_repeats": 1, "new_tokens": 32, "notes": ["a note"],
        "machine": {"bandwidth_gb_s": {"numpy": 10.0, "paddle": 12.0}, "gemm_gflop_s": 200.0, "gemm_n": 4096},
        "rows": [
            _row("paddlemix", "paddlemix-sdpa", 3.5, 3.5),
            _row("paddlemix", "paddlemix-flash_attention_2", 3.0, 4.0),
            _row("transformers", "transformers-sdpa", 5.0, 3.0) | {"read_gb_s_after_decode": 15.0},
            _row("transformers", "transformers-eager", 6.0, 2.0) | {"read_gb_s_after_decode": 9.0},
            _row("paddleformers", "paddleformers", 2.0, 5.0),
            {"impl": "paddleformers", "label": "paddleformers", "media": "video", "error": "exit code 1: boom"},
        ],
        "vision_memory": {"paddlemix-flash_attention_2": [{"patches": n, "extra_peak_mib": 0.1 * n} for n in (576, 2304, 5184)]},
    }
    summary.summarize(results)
    targets = {t["target"]: t for t in results["targets"] if t["media"] == "image"}
    assert {t["verdict"] for t in results["targets"] if t["media"] == "video"} == {"n/a"}  # only an error row
    # each library's fastest attention: ours flash_attention_2, transformers' sdpa
    assert targets["prefill_vs_transformers"]["value"] == pytest.approx(3.0 / 5.0)
    assert targets["prefill_vs_transformers"]["verdict"] == "PASS"
    assert targets["decode_vs_transformers"]["value"] == pytest.approx(4.0 / 3.0)
    assert targets["prefill_vs_paddleformers"]["verdict"] == "FAIL"
    assert targets["decode_vs_paddleformers"]["verdict"] == "FAIL"
    assert targets["vision_memory_linear"]["verdict"] == "PASS"
    ours = results["rows"][1]
    total_flops = counts.prefill_flops([[1, 48, 48]], 600, results["config"])["total"]
    assert ours["prefill_frac_gemm"] == pytest.approx(total_flops / 3.0 / 1e9 / 200.0)
    bound = 12e9 / counts.decode_bytes_per_token(results["config"], 600 + 16)["total"]  # best bandwidth
    assert ours["decode_frac_bound"] == pytest.approx(4.0 / bound)
    # a row's own read after its decode raises its bound, never lowers it below the run's probe
    sdpa, eager = results["rows"][2], results["rows"][3]
    assert (sdpa["bound_gb_s"], eager["bound_gb_s"], ours["bound_gb_s"]) == (15.0, 12.0, 12.0)
    assert sdpa["decode_frac_bound"] == pytest.approx(3.0 / (bound * 15.0 / 12.0))
    assert ours["tokens_agree_with_transformers"] == 3

    paths = report.write_reports(results, tmp_path / "compare")
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    assert json.loads(paths[0].read_text())["targets"]
    table = paths[1].read_text()
    assert "transformers-sdpa (fastest)" in table and "paddlemix-flash_attention_2 (fastest)" in table
    assert "paddlemix-sdpa |" in table and "PASS" in table and "FAIL" in table
    assert "error: exit code 1: boom" in table and "a note" in table
    assert "best of 3 timed runs after a warm-up (PaddleFormers: 1)." in table


def test_paddleformers_runs_get_their_own_repeats(tmp_path, monkeypatch):
    """PaddleFormers decodes without its KV cache (minutes per run): --paddleformers_repeats, not --repeats."""
    python = tmp_path / "python"
    python.write_text("")
    args = options.parse_args(["--repeats", "3", "--paddleformers_repeats", "1", "--paddleformers_python", str(python)])
    monkeypatch.setattr(orchestrate, "_available", lambda module, python=None: True)  # both peers "installed"
    runs = orchestrate.plan_runs(args, tmp_path, [])
    repeats = {(r["impl"], r["media"]): r["repeats"] for r in runs}
    assert repeats[("paddleformers", "image")] == repeats[("paddleformers", "video")] == 1
    assert {v for (impl, _), v in repeats.items() if impl != "paddleformers"} == {3}


def test_decode_bytes_per_precision():
    """Weight-only layouts (ops/weight_only.py): int8 one float32 scale per output row, int4 two
    weights per byte and one float32 scale per row and group of 128 inputs."""
    config = checkpoints.bench_config("quick")
    assert counts.matrix_bytes(11008, 2048, "bfloat16") == 2 * 11008 * 2048
    assert counts.matrix_bytes(2048, 11008, "weight_only_int8") == 2048 * 11008 + 4 * 2048
    assert counts.matrix_bytes(5, 129, "weight_only_int4") == 5 * 65 + 4 * 5 * 2  # odd width, a short last group
    f32 = counts.decode_bytes_per_token(config, context=100)
    int4 = counts.decode_bytes_per_token(config, context=100, kind="weight_only_int4")
    assert int4["lm_head"] == 151936 * 1024 + 4 * 151936 * 16
    assert int4["kv_cache"] == f32["kv_cache"] and 0.13 < int4["total"] / f32["total"] < 0.14
    with pytest.raises(ValueError, match="unknown weight kind"):
        counts.matrix_bytes(1, 1, "int3")


def _precision_results():
    def row(impl, precision, label, decode, prefill=3.0, rss=4096.0, **extra):
        return {**_row(impl, label, prefill, decode), "precision": precision, "peak_rss_mib": rss, **extra}

    return {
        "config_name": "quick", "config": checkpoints.bench_config("quick"), "threads": 2, "repeats": 3,
        "new_tokens": 32, "notes": [],
        "machine": {"bandwidth_gb_s": {"gemv": 20.0}, "gemm_gflop_s": 200.0, "gemm_n": 4096},
        "rows": [
            row("paddlemix", "float32", "paddlemix-sdpa", 8.0, top1_agreement=1.0, teacher_steps=64),
            row("paddlemix", "bfloat16", "paddlemix-sdpa-bfloat16", 15.0, prefill=3.2, rss=2400.0,
                top1_agreement=1.0, teacher_steps=64),
            row("paddlemix", "weight_only_int8", "paddlemix-sdpa-weight_only_int8", 24.0, top1_agreement=0.98,
                teacher_steps=64),
            row("paddlemix", "weight_only_int4", "paddlemix-sdpa-weight_only_int4", 40.0, top1_agreement=0.97,
                teacher_steps=64),
            row("transformers", "float32", "transformers-sdpa", 7.5),
            row("transformers", "bfloat16", "transformers-sdpa-bfloat16", 2.0),
            {**row("llamacpp", "Q8_0", "llamacpp-Q8_0", 20.0), "grids": [], "vision_s": None, "preprocess_s": None,
             "weight_bytes": 700_000_000, "kv_bytes": 2},
            {**row("llamacpp", "Q4_0", "llamacpp-Q4_0", 45.0), "grids": [], "vision_s": None, "preprocess_s": None,
             "weight_bytes": 400_000_000, "kv_bytes": 2},
        ],
    }


def test_precision_rows_targets_and_report(tmp_path):
    """Issue 20's rows: issue 8's targets see only float32 rows; each precision is held to its
    targets against transformers float32, our float32 and llama.cpp; bytes per token per precision."""
    results = summary.summarize(_precision_results())
    targets = {t["target"]: t for t in results["targets"]}
    assert targets["decode_vs_transformers"]["ours"] == "paddlemix-sdpa"  # not the faster int4 row
    assert targets["bfloat16_decode_tok_s_vs_transformers_float32"]["value"] == pytest.approx(15.0 / 7.5)
    assert targets["bfloat16_prefill_s_vs_paddlemix_float32"]["verdict"] == "PASS"  # 3.2 / 3.0 <= 1.1
    assert targets["bfloat16_peak_rss_mib_vs_paddlemix_float32"]["value"] == pytest.approx(2400 / 4096)
    assert targets["weight_only_int8_decode_tok_s_vs_llamacpp_Q8_0"]["verdict"] == "PASS"
    assert targets["weight_only_int8_top1_agreement"]["verdict"] == "FAIL"  # 98% < 99%
    assert targets["weight_only_int4_decode_tok_s_vs_llamacpp_Q4_0"]["verdict"] == "FAIL"  # 40 < 45
    assert targets["weight_only_int4_top1_agreement"]["verdict"] == "PASS"
    rows = {r["label"]: r for r in results["rows"]}
    context = 600 + 16
    bf16 = counts.decode_bytes_per_token(results["config"], context, "bfloat16")["total"]
    assert rows["paddlemix-sdpa-bfloat16"]["decode_bytes_per_token"]["total"] == bf16
    assert rows["paddlemix-sdpa-bfloat16"]["decode_frac_bound"] == pytest.approx(15.0 / (20e9 / bf16))
    hf_bf16 = counts.decode_bytes_per_token(results["config"], context, "bfloat16", kv_bytes=2)["total"]
    assert rows["transformers-sdpa-bfloat16"]["decode_bytes_per_token"]["total"] == hf_bf16  # its cache is bf16
    q4 = rows["llamacpp-Q4_0"]["decode_bytes_per_token"]  # its GGUF tensors + an F16 cache
    assert q4["total"] == 400_000_000 + counts.kv_cache_bytes(results["config"], context, 2)
    table = report.write_reports(results, tmp_path / "precisions")[1].read_text()
    precisions = table[table.index("## Precisions"):]
    assert "| image | paddlemix-sdpa-weight_only_int4 | weight_only_int4 | 40.00 | 5.33 |" in precisions
    assert "| image | llamacpp-Q8_0 | Q8_0 | 20.00 | 2.67 |" in precisions and "97.0% of 64" in precisions


def test_precision_runs_are_planned_with_their_references(tmp_path):
    """--pm_precisions / --hf_dtypes / --gguf_types: one row each; llama.cpp rows get the float32
    reference's prompt ids, the other precisions its continuation (teacher-forced agreement)."""
    args = options.parse_args(["--impls", "paddlemix", "transformers", "llamacpp", "--pm_attn", "sdpa", "--media", "image",
                               "--pm_precisions", "float32", "weight_only_int4", "--hf_dtypes", "float32", "bfloat16",
                               "--gguf_types", "Q4_0"])
    plan = orchestrate.plan_runs(args, tmp_path, [])
    assert [r["label"] for r in plan] == ["paddlemix-sdpa", "paddlemix-sdpa-weight_only_int4", "transformers-sdpa",
                                          "transformers-sdpa-bfloat16", "transformers-eager", "transformers-eager-bfloat16",
                                          "llamacpp-Q4_0"]
    assert plan[-1]["task"] == "llamacpp_timing" and plan[0]["task"] == "timing"
    reference = {"prompt_ids": [1, 2, 3], "continuation": [4, 5]}
    session = orchestrate._Session.__new__(orchestrate._Session)
    session.args, session.results = args, {"references": {}, "notes": []}
    session.step = lambda label, spec: dict(reference)
    session.references(plan, tmp_path)
    assert plan[-1]["prompt_ids"] == [1, 2, 3] and "reference" not in plan[-1]
    assert all(r["reference"]["continuation"] == [4, 5] for r in plan[:-1])
    assert orchestrate._needs_reference(orchestrate.plan_runs(options.parse_args(["--impls", "paddlemix"]), tmp_path, [])) \
        == (False, False)


@needs_transformers
def test_streamed_checkpoint_matches_save_pretrained(tmp_path):
    from safetensors import safe_open
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(**checkpoints.bench_config("tiny"))
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(str(tmp_path / "saved"))
    (tmp_path / "streamed").mkdir()
    checkpoints._save_streamed(config, tmp_path / "streamed", shard_bytes=20 << 20)  # several shards

    def shapes(path):
        out = {}
        for file in path.glob("*.safetensors"):
            with safe_open(str(file), "pt") as f:
                out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        return out

    streamed = shapes(tmp_path / "streamed")
    assert streamed == shapes(tmp_path / "saved")
    assert len(list((tmp_path / "streamed").glob("*.safetensors"))) > 1
    index = json.loads((tmp_path / "streamed" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(streamed)


@needs_transformers
def test_paddlemix_worker_smoke_run(tmp_path):
    checkpoint = checkpoints.build_checkpoint("tiny", tmp_path / "tiny", streamed=False)
    assert (checkpoint / "chat_template.json").exists()
    spec = {"task": "timing", "impl": "paddlemix", "checkpoint": str(checkpoint), "threads": 1, "repeats": 1,
            "new_tokens": 3, "media": "image", "image_size": 56, "video_frames": 2, "video_size": 56}
    result = run_worker(spec)
    assert "error" not in result, result.get("error")
    assert result["grids"] == [[1, 4, 4]] and len(result["tokens"]) == 3
    assert result["prefill_s"] > 0 and result["peak_rss_mib"] > 0
    # in this process (one interpreter start less); the thread count it sets is the default one
    from paddlemix_qwen25vl.runtime import default_num_threads

    memory = runs.run_vision_memory({**spec, "threads": default_num_threads()})
    assert memory["patches"] == 16 and memory["extra_peak_mib"] >= 0
    # a weight-only row held to the float32 reference by teacher forcing
    reference = runs.run_reference({**spec, "threads": default_num_threads(), "teacher_steps": 4})
    assert len(reference["continuation"]) == 4 and len(reference["prompt_ids"]) == result["prompt_tokens"]
    int4 = runs.run_timing({**spec, "threads": default_num_threads(), "precision": "weight_only_int4",
                            "reference": reference})
    assert int4["teacher_steps"] == 4 and 0 <= int4["top1_agreement"] <= 1 and "weight_only_kernels" in int4


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None,
                    reason="llama-cpp-python and gguf come from benchmarks/requirements.txt (llama.cpp builds from source)")
@needs_transformers
def test_llamacpp_rows_on_the_tiny_decoder(tmp_path):
    """The tiny checkpoint's decoder through convert_hf_to_gguf.py, llama.cpp's quantiser and a timing worker."""
    version = llamacpp.llamacpp_version()
    if not (llamacpp.SOURCES_CACHE / f"llama_cpp_python-{version}" / "vendor").exists():
        pytest.skip("the llama.cpp sources are fetched by the first `compare.py --impls llamacpp` (a 75 MB sdist)")
    checkpoint = checkpoints.build_checkpoint("tiny", tmp_path / "tiny", streamed=False)
    paths = llamacpp.gguf_files(checkpoint, ["Q8_0", "F32"], tmp_path, threads=1)
    sizes = llamacpp.gguf_weight_bytes(paths["Q8_0"])
    assert sizes["tensor_types"]["Q8_0"] > 0 and sizes["weight_bytes"] > 0
    assert llamacpp.gguf_weight_bytes(paths["F32"])["tensor_types"]["F32"] > 0
    prompt = [151644, 872, 198, 9707, 151645]
    reference = run_worker({"task": "llamacpp_reference", "gguf": str(paths["F32"]), "threads": 1,
                            "prompt_ids": prompt, "teacher_steps": 6})
    assert "error" not in reference, reference.get("error")
    assert len(reference["continuation"]) == 6
    for gguf_type in ("Q8_0", "F32"):
        spec = {"task": "llamacpp_timing", "gguf": str(paths[gguf_type]), "threads": 1, "repeats": 1, "new_tokens": 3,
                "prompt_ids": prompt, "llamacpp_continuation": reference["continuation"]}
        result = run_worker(spec)
        assert "error" not in result, result.get("error")
        assert len(result["tokens"]) == 3 and result["prompt_tokens"] == 5 and result["decode_tok_s"] > 0
        assert result["teacher_steps"] == 6 and 0 <= result["top1_agreement"] <= 1
    assert result["top1_agreement"] == 1.0  # F32 teacher-forced on its own greedy tokens: every position agrees


@needs_transformers
def test_machine_probe_records_the_cpu_and_every_librarys_gemm():
    """The GEMM peak is the best library's (Paddle's own MKL path can be 3x below the machine's
    on AMD CPUs), and the CPU and the code paths in use are part of the record."""
    probe = {"threads": 1, "machine_repeats": 1, "gemm_n": 256}
    machine = run_worker({"task": "machine", "bandwidth_bytes": 1 << 24, **probe})
    assert "error" not in machine, machine.get("error")
    torch_gemm = run_worker({"task": "torch_gemm", **probe})
    assert "error" not in torch_gemm, torch_gemm.get("error")
    assert set(machine["gemm_gflop_s_by_library"]) == {"paddle", "numpy"} and torch_gemm["torch"] > 0
    cpu = machine["cpu"]
    assert cpu["isa_in_use"] in ("baseline", "avx2", "avx512") and cpu["model"] and cpu["mkl_code_path"]
    if cpu["vendor"] == "AuthenticAMD" and cpu["isa_in_use"] != "baseline":
        assert cpu["mkl_code_path"].startswith("MKL_DEBUG_CPU_TYPE=5")


def test_gemm_peak_is_the_best_librarys_and_failures_become_notes():
    """probe_machine merges torch's GEMM (its own worker) into the machine probe's and takes the best."""
    probe = {"threads": 1, "machine_repeats": 1, "gemm_n": 8}
    found = {"machine": {"bandwidth_gb_s": {"numpy": 1.0}, "gemm_gflop_s_by_library": {"paddle": 10.0, "numpy": 30.0}},
             "torch_gemm": {"torch": 20.0}}
    notes = []
    got = machine_probe.probe_machine(probe, 1 << 20, notes, run=lambda spec: json.loads(json.dumps(found[spec["task"]])))
    assert got["gemm_gflop_s_by_library"] == {"paddle": 10.0, "numpy": 30.0, "torch": 20.0}
    assert got["gemm_gflop_s"] == 30.0 and notes == []
    found["torch_gemm"] = {"error": "exit code 1: no torch"}
    got = machine_probe.probe_machine(probe, 1 << 20, notes, run=lambda spec: json.loads(json.dumps(found[spec["task"]])))
    assert got["gemm_gflop_s"] == 30.0 and notes == ["torch GEMM probe failed: exit code 1: no torch"]
    found["machine"] = {"error": "exit code 1: boom"}
    assert machine_probe.probe_machine(probe, 1 << 20, notes, run=lambda spec: dict(found[spec["task"]])) == {}
    assert notes[-1] == "machine probe failed: exit code 1: boom"


def test_the_worker_runs_with_the_standard_library_only():
    """PaddleFormers' venv runs ``compare.py --worker`` without torch or this package: with
    site-packages off (-S), compare.py and every harness module still import."""
    modules = ", ".join(p.stem for p in sorted((REPO / "benchmarks" / "harness").glob("*.py")) if p.stem != "__init__")
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import compare; "
            f"from harness import {modules}; "
            "assert not {'numpy', 'paddle', 'torch', 'transformers', 'paddlemix_qwen25vl'} & set(sys.modules)")
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-S", str(REPO / "benchmarks" / "compare.py"), "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "--paddleformers_python" in proc.stdout, proc.stderr


def test_top1_agreement_on_the_trained_demo_model(tmp_path):
    """benchmarks/top1_trained.py: float32 teacher-forced on its own answers agrees at every
    position (the forward lines up with the answer), every precision scores those positions, and
    the trained model's peaked logits keep int8 and int4 above issue 20's thresholds."""
    from paddlemix_qwen25vl.runtime import default_num_threads

    top1_trained = import_script("benchmarks/top1_trained.py")
    results = top1_trained.main(["--questions", "4", "--threads", str(default_num_threads()),
                                 "--out_prefix", str(tmp_path / "top1")])
    rows = {row["precision"]: row for row in results["rows"]}
    assert list(rows) == ["float32", "bfloat16", "weight_only_int8", "weight_only_int4"]
    assert rows["float32"]["top1_agreement"] == 1.0 and rows["float32"]["positions"] >= 8  # answer + end of turn
    assert {row["positions"] for row in rows.values()} == {rows["float32"]["positions"]}
    assert rows["weight_only_int8"]["verdict"] == rows["weight_only_int4"]["verdict"] == "PASS"
    assert results["float32_margin"]["median"] > 1.0  # peaked (the random quick model's: 0.117)
    assert json.loads((tmp_path / "top1.json").read_text())["questions"] == 4
    assert "| weight_only_int4 |" in (tmp_path / "top1.md").read_text()
