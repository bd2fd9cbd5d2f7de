"""Full-model memory (issue 20): the whole 3B in bfloat16 and weight-only int8 / int4, and the
whole 7B in bfloat16, load and generate on this machine; peak RSS against the targets.

Checkpoints hold random weights in the real shapes (benchmarks/harness/checkpoints.py ``full``
and ``full7b``), written once in bfloat16, shard by shard (the 7B is about 16.6 GB; there is
never a float32 copy of the model). Each (model, precision) loads in a fresh process
(``from_pretrained`` with ``dtype="bfloat16"`` or ``quant_type``: int8/int4 quantised at load
time from the bfloat16 checkpoint) and greedily generates ``--new_tokens`` after a short text
prompt. Its peak RSS (``VmHWM``, the load included) is what the targets hold.

Outputs: benchmarks/results/full_memory.json and .md (``--out_prefix``).

Usage:
  python benchmarks/full_memory.py [--runs full:bfloat16 full:weight_only_int8 full7b:bfloat16] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from harness.checkpoints import DEFAULT_CACHE, ensure_checkpoint
from harness.common import RESULTS_DIR, run_worker, write_json_and_markdown
from harness.libraries import PM_PRECISIONS

GIB = 2**30
# (model, precision) -> peak RSS target in GiB; None: it must load and generate (issue 20)
TARGETS = {("full", "bfloat16"): 9.0, ("full", "weight_only_int8"): 6.0, ("full7b", "bfloat16"): None}
DEFAULT_RUNS = ["full:bfloat16", "full:weight_only_int8", "full:weight_only_int4", "full7b:bfloat16"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS,
                   help=f"model:precision pairs; models full (3B) and full7b, precisions {', '.join(PM_PRECISIONS[1:])}")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--new_tokens", type=int, default=8)
    p.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out_prefix", type=Path, default=RESULTS_DIR / "full_memory")
    args = p.parse_args(argv)
    for run in args.runs:
        model, _, precision = run.partition(":")
        if model not in ("full", "full7b") or precision not in PM_PRECISIONS[1:]:
            p.error(f"--runs {run!r}: expected full|full7b:{'|'.join(PM_PRECISIONS[1:])}")
    return args


def _memory_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    raise KeyError("MemTotal not in /proc/meminfo")


def _verdict(row: Dict[str, Any], new_tokens: int) -> Dict[str, Any]:
    """The row's target: peak RSS at most the threshold, or (7B) loading and generating at all."""
    threshold = TARGETS.get((row["model"], row["precision"]))
    generated = "error" not in row and len(row.get("tokens", [])) == new_tokens
    if threshold is None:
        return {"threshold_gib": None, "verdict": "PASS" if generated else "FAIL"}
    ok = generated and row["peak_rss_mib"] / 1024 <= threshold
    return {"threshold_gib": threshold, "verdict": "PASS" if ok else "FAIL"}


def markdown_report(results: Dict[str, Any]) -> str:
    """The runs as a markdown table, with the machine and what float32 would need."""
    lines = [f"# Full-model memory: {results['threads']} threads, {results['memory_total_gib']:.1f} GiB machine", "",
             f"Load average {results['load_average']['start']} at the start, {results['load_average']['end']} at the end "
             f"(the machine is shared). {results['new_tokens']} new tokens after a "
             f"{results['rows'][0].get('prompt_tokens', '-') if results['rows'] else '-'}-token text prompt.", "",
             "| model | weights | checkpoint GB (bf16) | float32 weights GiB | load s | RSS loaded GiB | peak RSS GiB "
             "| decode tok/s | target | verdict |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        target = f"<= {r['threshold_gib']} GiB" if r["threshold_gib"] else "loads and generates"
        head = f"| {r['model']} | {r['precision']} | {r['checkpoint_bytes'] / 1e9:.1f} | {r['checkpoint_bytes'] * 2 / GIB:.1f} "
        if "error" in r:
            lines.append(head + f"| error: {r['error'].splitlines()[-1][:120]} |||| {target} | {r['verdict']} |")
        else:
            lines.append(head + f"| {r['load_s']:.0f} | {r['rss_loaded_mib'] / 1024:.2f} | {r['peak_rss_mib'] / 1024:.2f} "
                         f"| {r['decode_tok_s']:.2f} | {target} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Build the bfloat16 checkpoints once, run each (model, precision) in its own process, write the reports."""
    args = parse_args(argv)
    results: Dict[str, Any] = {"threads": args.threads, "new_tokens": args.new_tokens,
                               "memory_total_gib": _memory_total_gib(),
                               "load_average": {"start": os.getloadavg()}, "rows": []}
    rows: List[Dict[str, Any]] = results["rows"]
    for run in args.runs:
        model, _, precision = run.partition(":")
        checkpoint = ensure_checkpoint(model, args.cache_dir, "bfloat16")
        index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
        print(f"{model} {precision}: loading and generating", flush=True)
        spec = {"task": "load_generate", "impl": "paddlemix", "precision": precision, "checkpoint": str(checkpoint),
                "threads": args.threads, "repeats": 1, "new_tokens": args.new_tokens}
        row = {"model": model, "precision": precision, "checkpoint_bytes": index["metadata"]["total_size"],
               **run_worker(spec)}
        rows.append(row | _verdict(row, args.new_tokens))
        results["load_average"]["end"] = os.getloadavg()
        results["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json_and_markdown(args.out_prefix, results, markdown_report(results))
    print(markdown_report(results))
    return results


if __name__ == "__main__":
    main()
