"""The worker side of benchmarks/compare.py: one task per process, run by the interpreter of
the library it measures (PaddleFormers' venv has neither torch nor this package)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from .checkpoints import build_checkpoint
from .common import print_result
from .machine import run_machine, run_torch_gemm
from .llamacpp import run_llamacpp_reference, run_llamacpp_timing
from .runs import run_load_generate, run_reference, run_timing, run_vision_memory


def _build(spec: Dict[str, Any]) -> Dict[str, Any]:
    path = build_checkpoint(spec["config"], Path(spec["checkpoint"]), spec["streamed"], spec.get("dtype", "float32"))
    return {"path": str(path)}


TASKS = {"build": _build, "timing": run_timing, "vision_memory": run_vision_memory, "machine": run_machine,
         "torch_gemm": run_torch_gemm, "reference": run_reference, "load_generate": run_load_generate,
         "llamacpp_timing": run_llamacpp_timing, "llamacpp_reference": run_llamacpp_reference}


def worker_main(spec: Dict[str, Any]) -> None:
    """Run the task ``spec["task"]`` and print its result for the parent (common.run_worker)."""
    print_result(TASKS[spec["task"]](spec))
