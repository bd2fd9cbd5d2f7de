"""The parent side of benchmarks/compare.py: which runs to make, in which order, each in its
worker process, with the reports rewritten after every run."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .checkpoints import bench_config, ensure_checkpoint
from .common import run_worker
from .llamacpp import gguf_files
from .machine import probe_machine
from .report import markdown_report, write_reports
from .summary import fastest, summarize

ROW_KEYS = ("impl", "label", "media", "attn", "precision")  # what a results row keeps of its spec


def _available(module: str, python: str = sys.executable) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def _library_runs(args: argparse.Namespace, notes: List[str]) -> List[Dict[str, Any]]:
    """One entry per (library, attention) to run; notes say which peers are missing."""
    runs: List[Dict[str, Any]] = []
    for impl in args.impls:
        if impl == "transformers":
            if not _available("transformers"):
                notes.append("transformers is not installed: skipped")
                continue
            runs += [{"impl": impl, "attn": a, "precision": d, "label": _label(f"transformers-{a}", d)}
                     for a in args.hf_attn for d in args.hf_dtypes]
        elif impl == "paddleformers":
            python = args.paddleformers_python
            if not (python and Path(python).exists() and _available("paddleformers", python)):
                notes.append(f"PaddleFormers skipped: no paddleformers under {python} (see benchmarks/README.md)")
                continue
            runs.append({"impl": impl, "label": "paddleformers", "python": python, "repeats": args.paddleformers_repeats})
        elif impl == "llamacpp":  # its GGUF files are made right before its rows (_attach_gguf)
            runs += [{"impl": impl, "task": "llamacpp_timing", "precision": t, "label": f"llamacpp-{t}"}
                     for t in args.gguf_types]
        else:
            runs += [{"impl": impl, "attn": a, "precision": p, "label": _label(f"paddlemix-{a}", p)}
                     for a in args.pm_attn for p in args.pm_precisions]
    return runs


def _label(name: str, precision: str) -> str:
    """Row labels: float32 rows keep the plain name (issue 8's rows), other precisions append theirs."""
    return name if precision == "float32" else f"{name}-{precision}"


def _needs_reference(runs: List[Dict[str, Any]]) -> Tuple[bool, bool]:
    """(the float32 reference run is needed, its continuation is held against the rows): llama.cpp
    needs its prompt ids, precisions other than float32 the teacher-forced agreement."""
    agreement = any(r.get("precision", "float32") != "float32" for r in runs if r["impl"] != "llamacpp")
    return agreement or any(r["impl"] == "llamacpp" for r in runs), agreement


def plan_runs(args: argparse.Namespace, checkpoint: Path, notes: List[str]) -> List[Dict[str, Any]]:
    """Timing specs, one per (input, implementation [, attention]); notes say what is skipped."""
    base = {"task": "timing", "checkpoint": str(checkpoint), "threads": args.threads, "repeats": args.repeats,
            "new_tokens": args.new_tokens, "image_size": args.image_size, "video_frames": args.video_frames,
            "video_size": args.video_size}
    libraries = _library_runs(args, notes)
    return [{**base, **lib, "media": m} for m in args.media for lib in libraries]


def _attach_gguf(runs: List[Dict[str, Any]], checkpoint: Path, args: argparse.Namespace, notes: List[str]) -> Optional[Path]:
    """The GGUF file of each llama.cpp run (converted and quantised once); returns the F32 file
    its top-1 agreement is counted against. A failure (llama-cpp-python missing, the conversion
    failing) is a note and the rows are skipped."""
    types = list(dict.fromkeys(r["precision"] for r in runs if r["impl"] == "llamacpp"))
    try:
        paths = gguf_files(checkpoint, types + ["F32"], args.cache_dir, args.threads)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        notes.append(f"llama.cpp skipped: {str(error)[-300:]}")
        return None
    for run in runs:
        if run["impl"] == "llamacpp":
            run["gguf"] = str(paths[run["precision"]])
    return paths["F32"]


class _Session:
    """The results so far, the progress bar, and the reports rewritten after each run."""

    def __init__(self, args: argparse.Namespace, results: Dict[str, Any], total: int):
        from tqdm.auto import tqdm

        self.args, self.results = args, results
        self.progress = tqdm(total=total, desc="compare", unit="run")

    def step(self, label: str, spec: Dict[str, Any], python: str = sys.executable) -> Dict[str, Any]:
        """One worker run, shown on the progress bar."""
        self.progress.set_postfix_str(label)
        result = run_worker(spec, python=python)
        self.progress.update(1)
        return result

    def references(self, runs: List[Dict[str, Any]], checkpoint: Path) -> None:
        """This library's float32 prompt ids and greedy continuation per input, given to the rows
        that need them (llama.cpp its prompt, other precisions the teacher-forced agreement)."""
        needed, agreement = _needs_reference(runs)
        for media in self.args.media if needed else []:
            spec = {"task": "reference", "impl": "paddlemix", "attn": self.args.pm_attn[0], "media": media,
                    "checkpoint": str(checkpoint), "threads": self.args.threads, "teacher_steps": self.args.teacher_steps,
                    "image_size": self.args.image_size, "video_frames": self.args.video_frames,
                    "video_size": self.args.video_size}
            reference = self.step(f"{media} float32 reference", spec)
            self.results["references"][media] = reference
            if "error" in reference:
                self.results["notes"].append(f"{media} reference run failed (no llama.cpp rows, no agreement): "
                                             f"{reference['error'][-300:]}")
            for run in (r for r in runs if r["media"] == media and "error" not in reference):
                if run["impl"] == "llamacpp":
                    run["prompt_ids"] = reference["prompt_ids"]
                elif agreement:
                    run["reference"] = reference

    def timing_rows(self, specs: List[Dict[str, Any]], checkpoint: Path) -> None:
        llama = [s for s in specs if s["impl"] == "llamacpp" and "prompt_ids" in s]
        reference = llama and _attach_gguf(llama, checkpoint, self.args, self.results["notes"])
        if reference:
            self.llamacpp_reference(llama, reference)
        for spec in specs:
            if spec["impl"] == "llamacpp" and ("prompt_ids" not in spec or "gguf" not in spec):
                continue  # no reference prompt or no GGUF file: said in the notes
            result = self.step(f"{spec['media']} {spec['label']}", spec, spec.get("python", sys.executable))
            self.results["rows"].append({k: spec[k] for k in ROW_KEYS if k in spec} | result)
            self.snapshot()

    def llamacpp_reference(self, llama: List[Dict[str, Any]], f32: Path) -> None:
        """llama.cpp's F32 greedy continuation of each input's prompt, which its rows' top-1
        agreement is counted against (llama.cpp's prompt has no image features, so this
        library's float32 continuation is not its reference)."""
        for media in dict.fromkeys(s["media"] for s in llama):
            specs = [s for s in llama if s["media"] == media]
            spec = {"task": "llamacpp_reference", "gguf": str(f32), "threads": self.args.threads,
                    "prompt_ids": specs[0]["prompt_ids"], "teacher_steps": self.args.teacher_steps}
            reference = self.step(f"{media} llama.cpp F32 reference", spec)
            if "error" in reference:
                self.results["notes"].append(f"{media} llama.cpp F32 reference failed (no llama.cpp agreement): "
                                             f"{reference['error'][-300:]}")
                continue
            for s in specs:
                s["llamacpp_continuation"] = reference["continuation"]

    def vision_memory(self, impl: str, checkpoint: Path) -> None:
        """The vision-memory points of ``impl`` with its fastest attention on the first input."""
        args = self.args
        best = fastest([r for r in self.results["rows"]
                        if r["impl"] == impl and "prefill_s" in r and r.get("precision", "float32") == "float32"])
        attn = best["attn"] if best else (args.hf_attn if impl == "transformers" else args.pm_attn)[0]
        label = f"{impl}-{attn}"
        for size in args.memory_sizes:
            spec = {"task": "vision_memory", "impl": impl, "attn": attn, "checkpoint": str(checkpoint),
                    "threads": args.threads, "image_size": size}
            point = self.step(f"vision memory {label} {size}px", spec)
            self.results["vision_memory"].setdefault(label, []).append({"image_size": size} | point)
        self.snapshot()

    def snapshot(self) -> None:
        self.results["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.results["load_average"]["end"] = os.getloadavg()  # the machine may be shared: its load, 1/5/15 min
        write_reports(summarize(self.results), self.args.out_prefix)


def compare(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the comparison and write the reports; returns the results.

    The reports are rewritten after every run, so an interrupted or still running
    comparison leaves what it has measured so far. Order: machine limits, image rows, the
    vision-memory check, video rows.
    """
    name = "full" if args.full else args.config
    checkpoint = ensure_checkpoint(name, args.cache_dir)
    notes: List[str] = []
    runs = plan_runs(args, checkpoint, notes)
    memory_impls = ["paddlemix"] + (["transformers"] if any(r["impl"] == "transformers" for r in runs) else [])
    results: Dict[str, Any] = {"config_name": name, "config": bench_config(name), "checkpoint": str(checkpoint),
                               "threads": args.threads, "repeats": args.repeats,
                               "paddleformers_repeats": args.paddleformers_repeats, "new_tokens": args.new_tokens,
                               "machine": {}, "rows": [], "vision_memory": {}, "references": {}, "notes": notes,
                               "load_average": {"start": os.getloadavg()}}
    llama_media = len({r["media"] for r in runs if r["impl"] == "llamacpp"})
    total = (2 + len(runs) + len(memory_impls) * len(args.memory_sizes) + len(args.media) * _needs_reference(runs)[0]
             + llama_media)
    session = _Session(args, results, total=total)

    probe = {"threads": args.threads, "machine_repeats": args.machine_repeats, "gemm_n": args.gemm_n}
    results["machine"] = probe_machine(probe, int(args.bandwidth_gib * 2**30), notes,
                                       run=lambda spec: session.step(spec["task"], spec))
    session.references(runs, checkpoint)
    first_media = [r for r in runs if r["media"] == args.media[0]]
    session.timing_rows(first_media, checkpoint)
    for impl in memory_impls:
        session.vision_memory(impl, checkpoint)
    session.timing_rows(runs[len(first_media):], checkpoint)
    session.progress.close()
    session.snapshot()
    print(f"wrote {args.out_prefix}.json, .md, .png")
    print(markdown_report(results))
    return results
