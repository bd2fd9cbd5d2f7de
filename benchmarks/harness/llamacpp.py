"""llama.cpp as a peer on the same decoder: the benchmark checkpoint's decoder converted to
GGUF by the ``convert_hf_to_gguf.py`` bundled with the installed llama-cpp-python (its sdist
carries the llama.cpp sources it was built from), quantised by llama.cpp's own quantiser,
and timed through llama_cpp's C API with the benchmark's threads.

llama.cpp gets the same token ids as this library's prompt (the image or video pad tokens
as plain tokens: it runs the decoder only, no vision tower), so its decode runs at the same
context length; its prefill is the decoder's alone.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .checkpoints import DEFAULT_CACHE

GGUF_TYPES = ("F16", "Q8_0", "Q4_0")
CONVERTED_TYPES = ("F16", "F32")  # F32: the reference of llama.cpp's own top-1 agreement
SOURCES_CACHE = DEFAULT_CACHE.parent / "llamacpp"  # ~/.cache/paddlemix_qwen25vl/llamacpp
BATCH = 512  # llama.cpp's default n_batch: the prompt is decoded in chunks of this many tokens
KV_BYTES = 2  # llama.cpp's default KV cache type is F16


def llamacpp_version(python: str = sys.executable) -> Optional[str]:
    """The installed llama-cpp-python version under ``python``, or None when it does not import."""
    proc = subprocess.run([python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def llamacpp_sources(version: str, cache: Path = SOURCES_CACHE) -> Path:
    """The llama.cpp sources of llama-cpp-python ``version`` (its sdist's vendor/llama.cpp),
    downloaded once with pip and unpacked under ``cache``."""
    root = cache / f"llama_cpp_python-{version}"
    sources = root / "vendor" / "llama.cpp"
    if (sources / "convert_hf_to_gguf.py").exists():
        return sources
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={version}", "-d", str(cache)], check=True, capture_output=True)
    with tarfile.open(cache / f"llama_cpp_python-{version}.tar.gz") as tar:
        tar.extractall(cache, filter="data")
    return sources


def _quantize(f16: Path, out: Path, gguf_type: str, threads: int) -> None:
    """llama.cpp's quantiser (``llama-quantize`` F16 -> ``gguf_type``, its default tensor mix)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type}")
    params.nthread = threads
    tmp = out.with_suffix(".partial")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize {f16} -> {gguf_type} failed")
    tmp.replace(out)


def _convert(checkpoint: Path, out: Path, gguf_type: str, version: str) -> None:
    """llama.cpp's ``convert_hf_to_gguf.py`` of the checkpoint's decoder to F16 or F32."""
    print(f"Converting {checkpoint} to GGUF {gguf_type} (once)", flush=True)
    script = llamacpp_sources(version) / "convert_hf_to_gguf.py"
    tmp = out.with_suffix(".partial")
    proc = subprocess.run([sys.executable, str(script), str(checkpoint), "--outtype", gguf_type.lower(),
                           "--outfile", str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed: {proc.stderr[-2000:]}")
    tmp.replace(out)


def gguf_files(checkpoint: Path, types: Sequence[str], cache_dir: Path, threads: int) -> Dict[str, Path]:
    """The checkpoint's decoder as GGUF files, one per type (F16 and F32 converted, the rest
    quantised from F16), cached next to the checkpoints."""
    version = llamacpp_version()
    if version is None:
        raise RuntimeError("llama-cpp-python is not installed (pip install -r benchmarks/requirements.txt)")
    out_dir = cache_dir / "gguf"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {t: out_dir / f"{checkpoint.name}-llamacpp{version}-{t.lower()}.gguf" for t in ("F16", *types)}
    for t in ("F16", *types):
        if t in CONVERTED_TYPES and not paths[t].exists():
            _convert(checkpoint, paths[t], t, version)
    for t in types:
        if not paths[t].exists():
            print(f"Quantising GGUF F16 to {t} (once)", flush=True)
            _quantize(paths["F16"], paths[t], t, threads)
    return {t: paths[t] for t in types}


def gguf_weight_bytes(path: Path) -> Dict[str, Any]:
    """Bytes of every tensor of a GGUF file (what one decode step reads when the embedding is
    the tied output matrix) and the tensor count per storage type."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    types: Dict[str, int] = {}
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    return {"weight_bytes": int(sum(int(t.n_bytes) for t in reader.tensors)), "tensor_types": types}


class _Decoder:
    """One llama.cpp context over a GGUF file, greedy decoding through the C API (no Python
    logits copies: the wrapper's ``eval`` stores every step's logits)."""

    def __init__(self, path: str, threads: int, n_ctx: int):
        import llama_cpp
        import numpy as np

        self.api, self.np = llama_cpp, np
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=BATCH, n_ubatch=BATCH, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        self.ctx = self.llm.ctx
        self.n_vocab = self.llm.n_vocab()

    def _decode(self, tokens: Sequence[int]) -> int:
        """Decode ``tokens`` at the end of the context; the most likely next token."""
        api = self.api
        array = (api.llama_token * len(tokens))(*tokens)
        if api.llama_decode(self.ctx, api.llama_batch_get_one(array, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")
        logits = self.np.ctypeslib.as_array(api.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
        return int(logits.argmax())

    def teacher_top1(self, prompt: Sequence[int], continuation: Sequence[int]) -> List[int]:
        """The most likely token at each position of ``continuation`` when fed the prompt and the
        continuation so far (teacher forcing, token by token through the cache)."""
        self.api.llama_memory_clear(self.api.llama_get_memory(self.ctx), True)
        for i in range(0, len(prompt), BATCH):
            top1 = [self._decode(prompt[i:i + BATCH])]
        return top1 + [self._decode([token]) for token in continuation[:-1]]

    def generate(self, prompt: Sequence[int], new_tokens: int) -> Dict[str, Any]:
        """Greedy ``new_tokens`` after ``prompt`` from an empty cache: tokens and when each was chosen."""
        self.api.llama_memory_clear(self.api.llama_get_memory(self.ctx), True)
        start = time.perf_counter()
        for i in range(0, len(prompt), BATCH):
            token = self._decode(prompt[i:i + BATCH])
        tokens, times = [token], [time.perf_counter()]
        while len(tokens) < new_tokens:
            tokens.append(self._decode([tokens[-1]]))
            times.append(time.perf_counter())
        return {"tokens": tokens, "prefill_s": times[0] - start,
                "decode_tok_s": (new_tokens - 1) / (times[-1] - times[0])}


def run_llamacpp_timing(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Worker task: load ``spec["gguf"]``, then (after a warm-up) ``repeats`` greedy generations
    of ``new_tokens`` after ``spec["prompt_ids"]``; best prefill and decode rate, peak RSS."""
    import llama_cpp

    from .common import ROW_PROBE_BYTES, numpy_read_gb_s, status_kib

    prompt: List[int] = spec["prompt_ids"]
    new_tokens = spec["new_tokens"]
    start = time.perf_counter()
    decoder = _Decoder(spec["gguf"], spec["threads"], len(prompt) + new_tokens + 8)
    load_s = time.perf_counter() - start
    decoder.generate(prompt, 2)  # warm-up
    runs = [decoder.generate(prompt, new_tokens) for _ in range(spec["repeats"])]
    prefill = [r["prefill_s"] for r in runs]
    decode = [r["decode_tok_s"] for r in runs]
    peak_rss_mib = status_kib("VmHWM") / 1024
    row_read = numpy_read_gb_s(ROW_PROBE_BYTES, spec["threads"], 3)  # the bandwidth right after this decode
    continuation = spec.get("llamacpp_continuation")
    agreement = {}
    if continuation:  # after the timing: teacher forcing does not change what the timing measured
        top1 = decoder.teacher_top1(prompt, continuation)
        agreement = {"top1_agreement": sum(a == b for a, b in zip(top1, continuation)) / len(continuation),
                     "teacher_steps": len(continuation), "top1_reference": "llama.cpp F32"}
    return {"load_s": load_s, "preprocess_s": None, "vision_s": None, "prefill_s": min(prefill),
            "decode_tok_s": max(decode), "generate_s": min(p + (new_tokens - 1) / d for p, d in zip(prefill, decode)),
            "samples": {"prefill_s": prefill, "decode_tok_s": decode}, "prompt_tokens": len(prompt), "grids": [],
            "new_tokens": new_tokens, "tokens": runs[-1]["tokens"], "peak_rss_mib": peak_rss_mib,
            "read_gb_s_after_decode": row_read,
            "kv_bytes": KV_BYTES, "llamacpp_version": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode().strip(), **gguf_weight_bytes(Path(spec["gguf"])),
            **agreement}


def run_llamacpp_reference(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Worker task: llama.cpp's F32 greedy continuation of ``spec["teacher_steps"]`` tokens after
    ``spec["prompt_ids"]``: what its other types' top-1 agreement is counted against, as this
    library's float32 continuation is for its own precisions."""
    prompt: List[int] = spec["prompt_ids"]
    decoder = _Decoder(spec["gguf"], spec["threads"], len(prompt) + spec["teacher_steps"] + 8)
    return {"continuation": decoder.generate(prompt, spec["teacher_steps"])["tokens"]}
