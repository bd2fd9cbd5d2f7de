"""What every benchmark script shares: paths, /proc/self/status readings, timing loops and
the fresh-subprocess worker protocol (``script --worker JSON``, result after RESULT_MARKER).

Standard library only: PaddleFormers' venv runs the workers that import this.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

BENCHMARKS = Path(__file__).resolve().parents[1]
REPO = BENCHMARKS.parent
RESULTS_DIR = BENCHMARKS / "results"
COMPARE_SCRIPT = BENCHMARKS / "compare.py"
RESULT_MARKER = "BENCH_RESULT "


def status_kib(field: str) -> int:
    """One ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not found in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the peak (VmHWM) to the current RSS; returns that RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


ROW_PROBE_BYTES = 1 << 30  # the streaming read each timing worker measures after its decode


def numpy_read_gb_s(nbytes: int, threads: int, repeats: int) -> float:
    """GB/s of the best of ``repeats`` reads of an ``nbytes`` float32 buffer, numpy sums split
    over ``threads`` threads (numpy's sum releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    buffer = np.ones(nbytes // 4, dtype=np.float32)
    chunks = np.array_split(buffer, threads)
    with ThreadPoolExecutor(threads) as pool:
        seconds = timed(lambda: sum(pool.map(np.sum, chunks)), repeats)
    return nbytes / min(seconds) / 1e9


def timed(fn: Callable[[], Any], repeats: int) -> List[float]:
    """Seconds of each of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def write_json_and_markdown(prefix: Path, results: Dict[str, Any], markdown: str) -> List[Path]:
    """``prefix``.json (the results) and ``prefix``.md (their report); returns both paths."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_suffix(".json"), prefix.with_suffix(".md")]
    paths[0].write_text(json.dumps(results, indent=2))
    paths[1].write_text(markdown)
    return paths


def print_result(result: Dict[str, Any]) -> None:
    """The worker's side of the protocol: its result, one JSON line after RESULT_MARKER."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def worker_env(threads: int, python: str) -> Dict[str, str]:
    """The environment of a worker: every thread pool pinned to ``threads``, no network.

    A worker under another interpreter imports nothing of ours but the harness; our own
    interpreter needs the repository importable (this library, the checkpoint build).
    """
    n = str(threads)
    env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, PADDLEMIX_NUM_THREADS=n,
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if python == sys.executable:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_worker(spec: Dict[str, Any], python: str = sys.executable, timeout: float = 7200,
               script: Path = COMPARE_SCRIPT) -> Dict[str, Any]:
    """Run ``script --worker spec`` in a fresh ``python`` process (clean peak RSS) with
    ``spec["threads"]`` threads; returns its result, or ``{"error": ...}`` with the end of its stderr."""
    cmd = [python, str(script), "--worker", json.dumps(spec)]
    env = worker_env(spec.get("threads", 1), python)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    return {"error": f"exit code {proc.returncode}: " + proc.stderr[-3000:]}
