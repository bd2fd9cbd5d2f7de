"""The summarized results as files: ``prefix``.json, a markdown table (.md) and a plot (.png)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

from .common import write_json_and_markdown

ROW_HEADER = [
    "| input | implementation | preprocess s | vision s | prefill s | prefill GFLOP/s | % GEMM peak "
    "| decode tok/s | % bandwidth bound | peak RSS GiB | prompt tokens | tokens = transformers' |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return _fmt(value * 100 if value is not None else None, 1)


def _best_of(values: Dict[str, float], digits: int) -> str:
    return ", ".join(f"{k} {_fmt(v, digits)}" for k, v in values.items())


def _loads(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "-"


def _machine_line(results: Dict[str, Any]) -> str:
    """Limits, CPU and how the rows were timed, in one paragraph."""
    m = results["machine"]
    bandwidth = m.get("bandwidth_gb_s", {})
    line = (f"Machine: streaming read {_fmt(max(bandwidth.values()) if bandwidth else None, 1)} GB/s "
            f"(best of {_best_of(bandwidth, 1)}), fp32 GEMM peak {_fmt(m.get('gemm_gflop_s'), 0)} GFLOP/s "
            f"(best of {_best_of(m.get('gemm_gflop_s_by_library', {}), 0)}, {m.get('gemm_n')}^3). ")
    if m.get("cpu"):
        cpu = m["cpu"]
        line += (f"CPU: {cpu['vendor']} {cpu['model']} ({', '.join(cpu['instruction_sets'])}); "
                 f"code path {cpu['isa_in_use']}, {cpu['mkl_code_path']}. ")
    if results.get("load_average"):
        load = results["load_average"]
        line += f"Load average (1/5/15 min) {_loads(load['start'])} at the start, {_loads(load.get('end'))} at the end. "
    line += f"{results['new_tokens']} new tokens, best of {results['repeats']} timed runs after a warm-up"
    if any(r.get("impl") == "paddleformers" for r in results["rows"]):
        return line + f" (PaddleFormers: {results.get('paddleformers_repeats', results['repeats'])})."
    return line + "."


def _row_line(r: Dict[str, Any]) -> str:
    label = r["label"] + (" (fastest)" if r.get("fastest") else "")
    if "error" in r:
        return f"| {r['media']} | {label} | error: {r['error'].splitlines()[-1][:120] if r['error'] else ''} ||||||||||"
    return (f"| {r['media']} | {label} | {_fmt(r['preprocess_s'], 3)} | {_fmt(r['vision_s'])} | {_fmt(r['prefill_s'])} "
            f"| {_fmt(r.get('prefill_gflop_s'), 0)} | {_pct(r.get('prefill_frac_gemm'))} | {_fmt(r['decode_tok_s'])} "
            f"| {_pct(r.get('decode_frac_bound'))} | {_fmt(r['peak_rss_mib'] / 1024)} | {r['prompt_tokens']} "
            f"| {_fmt(r.get('tokens_agree_with_transformers'))}/{r['new_tokens']} |")


PRECISION_HEADER = [
    "| input | implementation | weights | decode tok/s | x transformers float32 | GB read / token | bound GB/s "
    "| % bandwidth bound | prefill s | decoder prefill s | peak RSS GiB | top-1 = float32 (teacher-forced) |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def _precision_lines(results: Dict[str, Any]) -> List[str]:
    """Every precision side by side (issue 20): speed, bytes, memory, agreement with float32."""
    rows = [r for r in results["rows"] if "decode_tok_s" in r]
    lines = ["", "## Precisions", "", *PRECISION_HEADER]
    for r in rows:
        hf = next((b for b in rows if b["media"] == r["media"] and b["impl"] == "transformers"
                   and b.get("precision", "float32") == "float32" and b.get("fastest")), None)
        # the vision tower runs inside the prefill; llama.cpp runs the decoder only
        decoder = r["prefill_s"] - (r.get("vision_s") or 0)
        agree = r.get("top1_agreement")
        agree = f"{_pct(agree)}% of {r['teacher_steps']}" if agree is not None else "-"
        weights = r.get("precision", "float32")
        if r.get("weight_only_kernels") is False and weights != "float32":
            weights += " (pure-Paddle fallback, no compiled kernels)"
        lines.append(f"| {r['media']} | {r['label']} | {weights} | {_fmt(r['decode_tok_s'])} "
                     f"| {_fmt(hf and r['decode_tok_s'] / hf['decode_tok_s'])} "
                     f"| {_fmt(r['decode_bytes_per_token']['total'] / 1e9, 3)} | {_fmt(r.get('bound_gb_s'), 1)} "
                     f"| {_pct(r.get('decode_frac_bound'))} "
                     f"| {_fmt(r['prefill_s'])} | {_fmt(decoder)} | {_fmt(r['peak_rss_mib'] / 1024)} | {agree} |")
    lines.append("")
    lines.append("decoder prefill = prefill - the vision tower's time (measured alone); llama.cpp runs the decoder "
                 "only, on the same token ids (the pad tokens as plain tokens), so its prefill is the decoder's. "
                 "llama.cpp's top-1 is counted against llama.cpp's own F32 GGUF of the same decoder on that prompt. "
                 "bound GB/s: the higher of the run's streaming-read probe and the read each row's worker measured "
                 "right after its decode (the machine's bandwidth moves within a run).")
    return lines


def _has_precisions(results: Dict[str, Any]) -> bool:
    return any(r.get("precision", "float32") != "float32" for r in results["rows"])


def _target_line(t: Dict[str, Any]) -> str:
    sign = ">=" if t["higher_is_better"] else "<="
    if t["target"].endswith("paddleformers"):  # strict comparisons
        sign = sign[0]
    base = f" ({t['ours']} vs {t['baseline']})" if t.get("baseline") else (f" ({t['ours']})" if t.get("ours") else "")
    return f"| {t['media']} | {t['description']}{base} | {_fmt(t['value'])} | {sign} {t['threshold']} | {t['verdict']} |"


def _memory_lines(vision_memory: Dict[str, List[Dict[str, Any]]]) -> List[str]:
    lines = ["", "## Vision tower extra peak memory (one call, fresh process)", "",
             "| implementation | patches | extra peak MiB | MiB per 1k patches |", "|---|---:|---:|---:|"]
    for label, points in vision_memory.items():
        for p in points:
            if "error" in p:
                lines.append(f"| {label} | {p.get('patches', '-')} | error | |")
            else:
                lines.append(f"| {label} | {p['patches']} | {_fmt(p['extra_peak_mib'], 0)} "
                             f"| {_fmt(p['extra_peak_mib'] / p['patches'] * 1000, 1)} |")
    return lines


def markdown_report(results: Dict[str, Any]) -> str:
    """The results as markdown: machine limits, one row per (input, implementation), targets."""
    lines = [f"# Qwen2.5-VL inference on CPU: {results['config_name']} model, {results['threads']} threads", "",
             _machine_line(results), "", *ROW_HEADER]
    lines += [_row_line(r) for r in results["rows"]]
    if _has_precisions(results):
        lines += _precision_lines(results)
    lines += ["", "## Targets (this library)", "", "| input | target | value | threshold | verdict |", "|---|---|---:|---:|---|"]
    lines += [_target_line(t) for t in results["targets"]]
    if results.get("vision_memory"):
        lines += _memory_lines(results["vision_memory"])
    lines += [""] + [f"- {note}" for note in results.get("notes", [])]
    return "\n".join(lines) + "\n"


def _bars(ax: Any, rows: List[Dict[str, Any]], key: str, title: str) -> None:
    """One bar per (input, implementation); decode gets each input's bandwidth bound as a dashed line."""
    medias = sorted({r["media"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        values = [next((r[key] or 0 for r in rows if r["media"] == m and r["label"] == label), 0) for m in medias]
        ax.bar([j + i * width for j in range(len(medias))], values, width, label=label)
    if key == "decode_tok_s":
        for j, m in enumerate(medias):
            bound = next((r.get("decode_bound_tok_s") for r in rows if r["media"] == m), None)
            if bound:
                ax.hlines(bound, j - width / 2, j + width * (len(labels) - 0.5), colors="k", linestyles="--",
                          label="bandwidth bound" if j == 0 else None)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(medias))], medias)
    ax.set_title(title)
    ax.legend(fontsize=8)


def _memory_curves(ax: Any, vision_memory: Dict[str, List[Dict[str, Any]]]) -> None:
    for label, points in vision_memory.items():
        pts = sorted((p["patches"], p["extra_peak_mib"]) for p in points if "extra_peak_mib" in p)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("patches")
    ax.set_title("vision tower extra peak memory, MiB")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_report(results: Dict[str, Any], path: Path) -> None:
    """Bar charts of prefill, decode and peak RSS per input and implementation, and the vision
    tower's extra peak memory against patches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if "prefill_s" in r]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = [("prefill_s", "prefill (time to first token), s"), ("decode_tok_s", "decode, tokens/s"),
              ("peak_rss_mib", "peak RSS, MiB")]
    for ax, (key, title) in zip(axes.flat, panels):
        _bars(ax, rows, key, title)
    _memory_curves(axes.flat[3], results.get("vision_memory", {}))
    fig.suptitle(f"Qwen2.5-VL {results['config_name']} on CPU, {results['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(results: Dict[str, Any], prefix: Path) -> List[Path]:
    """Write ``prefix``.json, .md and .png (the plot when matplotlib is installed)."""
    paths = write_json_and_markdown(prefix, results, markdown_report(results))
    try:
        plot_report(results, prefix.with_suffix(".png"))
        paths.append(prefix.with_suffix(".png"))
    except ImportError:
        results.setdefault("notes", []).append("matplotlib is not installed: no plot")
    return paths
