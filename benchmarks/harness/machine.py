"""The machine's limits, measured with the benchmark's threads: streaming read bandwidth and
fp32 GEMM throughput (Paddle and numpy in one worker, torch in its own), and the CPU."""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from .common import numpy_read_gb_s, run_worker, timed


def gemm_gflop_s(matmul: Callable[[], Any], n: int, repeats: int) -> float:
    """GFLOP/s of an n x n x n ``matmul`` (2 n^3 FLOPs), best of ``repeats`` after a warm-up."""
    matmul()
    return 2 * n**3 / min(timed(matmul, repeats)) / 1e9


def _read_bandwidth(nbytes: int, threads: int, repeats: int) -> Dict[str, float]:
    """GB/s reading an ``nbytes`` float32 buffer: numpy sums split over threads, paddle.sum,
    and a GEMV x @ W with W the buffer as [4096, N] (how decode reads its weights)."""
    import paddle

    numpy_gb_s = numpy_read_gb_s(nbytes, threads, repeats)
    tensor = paddle.ones([nbytes // 4], dtype="float32")
    paddle_s = timed(lambda: float(tensor.sum()), repeats)
    cols = tensor.shape[0] // 4096
    matrix = tensor[: 4096 * cols].reshape([4096, cols])
    vector = paddle.ones([1, 4096], dtype="float32")
    gemv_s = timed(lambda: float(paddle.matmul(vector, matrix)[0, 0]), repeats)
    return {"numpy": numpy_gb_s, "paddle": nbytes / min(paddle_s) / 1e9,
            "gemv": 4 * 4096 * cols / min(gemv_s) / 1e9}


def run_machine(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Worker task: read bandwidth (``spec["bandwidth_bytes"]``), fp32 GEMM of paddle.matmul and
    numpy (``spec["gemm_n"]``), with spec's threads, and the CPU: model, instruction sets, code paths."""
    import paddle

    from paddlemix_qwen25vl.cpu import cpu_description, prepare_process

    prepare_process()  # as a model load does, before the first matmul
    threads, repeats, n = spec["threads"], spec["machine_repeats"], spec["gemm_n"]
    paddle.base.core.set_num_threads(threads)
    bandwidth = _read_bandwidth(spec["bandwidth_bytes"], threads, repeats)
    a = paddle.randn([n, n], dtype="float32")
    b = paddle.randn([n, n], dtype="float32")
    a_np, b_np = a.numpy(), b.numpy()
    return {
        "cpu": cpu_description(),
        "bandwidth_bytes": spec["bandwidth_bytes"],
        "bandwidth_gb_s": bandwidth,
        "gemm_n": n,
        "gemm_gflop_s_by_library": {"paddle": gemm_gflop_s(lambda: (a @ b).numpy(), n, repeats),
                                    "numpy": gemm_gflop_s(lambda: a_np @ b_np, n, repeats)},
    }


def run_torch_gemm(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Worker task: torch's fp32 GEMM throughput, in its own process (two OpenMP runtimes in
    one process spin against each other: benchmarks/README.md)."""
    import torch

    torch.set_num_threads(spec["threads"])
    n = spec["gemm_n"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    return {"torch": gemm_gflop_s(lambda: a @ b, n, spec["machine_repeats"])}


def probe_machine(probe: Dict[str, Any], bandwidth_bytes: int, notes: List[str],
                  run: Callable[[Dict[str, Any]], Dict[str, Any]] = run_worker) -> Dict[str, Any]:
    """Both probes, each in its worker (``run``); the GEMM peak is the best library's. ``probe``
    holds threads, machine_repeats and gemm_n; failures become ``notes`` (and ``{}`` for the machine)."""
    machine = run({"task": "machine", "bandwidth_bytes": bandwidth_bytes, **probe})
    torch_gemm = run({"task": "torch_gemm", **probe})
    if "error" in machine:
        notes.append(f"machine probe failed: {machine['error'][-300:]}")
        return {}
    if "error" in torch_gemm:
        notes.append(f"torch GEMM probe failed: {torch_gemm['error'][-300:]}")
    else:
        machine["gemm_gflop_s_by_library"].update(torch_gemm)
    # the best library's, not Paddle's: MKL's generic path on AMD is far below the machine's peak
    machine["gemm_gflop_s"] = max(machine["gemm_gflop_s_by_library"].values())
    return machine
