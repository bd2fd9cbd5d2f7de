"""Compare this library with transformers 4.51.3 and PaddleFormers on Qwen2.5-VL inference (CPU).

Runs the same inputs -- a 672x672 image with a prompt, and a 16-frame 336x336 video at fps 2
-- through each implementation, each (implementation, input) in a fresh subprocess so its
peak RSS is its own, with the same CPU thread count. Measures preprocessing, the vision
tower, prefill (time to first token: ``generate`` with one new token), decode tokens/s and
peak RSS; in the same run it measures the machine's streaming read bandwidth and fp32 GEMM
throughput, and reports prefill as a fraction of GEMM peak and decode as a fraction of the
bandwidth bound (formulas in benchmarks/README.md). It also checks that the vision tower's
peak memory grows linearly with the number of patches.

Checkpoints are random (seeded), in real Qwen2.5-VL 3B shapes, saved by transformers and
cached under ``~/.cache/paddlemix_qwen25vl/bench/`` (``--cache_dir``):
  quick (default)  3B widths, 4 decoder layers, 8 vision blocks (full attention in 3 and 7)
  full (--full)    the whole 3B model (about 15 GB in float32; written shard by shard)
  tiny             a toy model for the harness's own test

Outputs: benchmarks/results/compare.json, compare.md and compare.png (``--out_prefix``).

Usage:
  python benchmarks/compare.py [--threads N] [--full] [--paddleformers_python /tmp/pf_venv/bin/python]

This file is also the worker (``--worker JSON``), run by the interpreter of the
implementation it measures; its module level imports only the standard library so that
PaddleFormers' venv, which lacks torch and this package, can run it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE = Path.home() / ".cache" / "paddlemix_qwen25vl" / "bench"
BASE_CONFIG = REPO / "configs" / "qwen2_5_vl_3b" / "config.json"
CHECKPOINT_VERSION = "v1"
RESULT_MARKER = "BENCH_RESULT "
IMPLS = ("paddlemix", "transformers", "paddleformers")
HF_ATTNS = ("sdpa", "eager")
PM_ATTNS = ("sdpa", "flash_attention_2")  # flash_attention_2 on CPU: the operator of external_ops/

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
# The chat template's rendering of one user turn, written out so that every implementation
# tokenizes exactly the same text whatever its template code does.
PROMPTS = {
    "image": SYSTEM + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
    "Describe this image in detail.<|im_end|>\n<|im_start|>assistant\n",
    "video": SYSTEM + "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
    "Describe what happens in this video.<|im_end|>\n<|im_start|>assistant\n",
}
VIDEO_FPS = 2.0
PAD_TOKEN_ID = 151643  # <|endoftext|>

# Targets from the issue: (key, description, threshold, True when higher is better).
TARGETS = (
    ("prefill_vs_transformers", "prefill time / transformers'", 0.75, False),
    ("prefill_frac_gemm", "prefill FLOP/s / fp32 GEMM peak", 0.50, True),
    ("decode_vs_transformers", "decode tok/s / transformers'", 1.10, True),
    ("decode_frac_bound", "decode tok/s / bandwidth bound", 0.85, True),
    ("prefill_vs_paddleformers", "prefill time / PaddleFormers'", 1.00, False),
    ("decode_vs_paddleformers", "decode tok/s / PaddleFormers'", 1.00, True),
)
# Vision memory is "linear" when the extra peak per added patch at the largest size is at
# most this multiple of that at the smallest (quadratic attention buffers give ~2.6x here).
LINEAR_SLOPE_TOLERANCE = 1.25


# --------------------------------------------------------------------------------------
# configs and checkpoints


def bench_config(name: str) -> Dict[str, Any]:
    """The transformers config dict of a benchmark model: ``tiny``, ``quick`` or ``full``."""
    config = json.loads(BASE_CONFIG.read_text())
    config["torch_dtype"] = "float32"
    if name == "quick":
        config["num_hidden_layers"] = 4
        config["vision_config"].update(depth=8, fullatt_block_indexes=[3, 7])
    elif name == "tiny":
        config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        config["vision_config"].update(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                                       out_hidden_size=64, fullatt_block_indexes=[1])
    elif name != "full":
        raise ValueError(f"unknown config {name!r}; use tiny, quick or full")
    return config


def checkpoint_dir(cache_dir: Path, name: str) -> Path:
    """Where the checkpoint of config ``name`` is cached."""
    return cache_dir / f"{name}-{CHECKPOINT_VERSION}"


def _init_tensor(shape: Sequence[int], kind: str, generator: Any) -> Any:
    """One float32 parameter as transformers initialises Qwen2.5-VL: norms 1, biases 0, else N(0, 0.02)."""
    import torch

    if kind == "norm":
        return torch.ones(shape)
    if kind == "bias":
        return torch.zeros(shape)
    return torch.empty(shape).normal_(0.0, 0.02, generator=generator)


def _save_streamed(config: Any, path: Path, shard_bytes: int = 2 << 30) -> None:
    """Write random float32 weights shard by shard, in the keys and files save_pretrained writes.

    The model is built on the meta device, so only one shard (not the 15 GB model, let alone
    a second copy while saving) is ever in memory.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    norms = {f"{m}.weight" for m, module in model.named_modules() if "RMSNorm" in type(module).__name__}
    names = [n for n, _ in model.named_parameters() if not (config.tie_word_embeddings and n == "lm_head.weight")]
    shapes = dict((n, p.shape) for n, p in model.named_parameters())
    groups: List[List[str]] = [[]]
    size = 0
    for name in names:
        nbytes = 4 * math.prod(shapes[name])
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    generator = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in group:
            kind = "norm" if name in norms else "bias" if name.endswith(".bias") else "weight"
            tensors[name] = _init_tensor(shapes[name], kind, generator)
            weight_map[name] = file
            total += 4 * tensors[name].numel()
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(str(path))
    GenerationConfig.from_model_config(config).save_pretrained(str(path))


def build_checkpoint(name: str, path: Path, streamed: bool) -> Path:
    """Build the random checkpoint ``name`` at ``path`` with transformers, plus processor files.

    The result loads with this library's and transformers' ``from_pretrained`` and processor
    classes. Written to a temporary directory first so that an interrupted build is redone.
    """
    import shutil

    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from paddlemix_qwen25vl import Qwen2_5_VLImageProcessor, build_tokenizer_files
    from paddlemix_qwen25vl.processing.chat_template import QWEN2_5_VL_CHAT_TEMPLATE

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = Qwen2_5_VLConfig(**bench_config(name))
    if streamed:
        _save_streamed(config, tmp)
    else:
        torch.manual_seed(0)
        Qwen2_5_VLForConditionalGeneration(config).float().save_pretrained(str(tmp))
    build_tokenizer_files(str(tmp))
    Qwen2_5_VLImageProcessor().save_pretrained(str(tmp))
    # transformers' AutoProcessor reads the template from chat_template.json and needs the
    # processor class named in preprocessor_config.json.
    (tmp / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_5_VL_CHAT_TEMPLATE}))
    pre = json.loads((tmp / "preprocessor_config.json").read_text())
    pre.update(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2_5_VLProcessor")
    (tmp / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------
# FLOP and byte counting


def vision_window_lengths(grid: Sequence[int], vision: Dict[str, Any]) -> List[int]:
    """Patches per attention window of one image/video (``grid`` = (t, h, w) in patches), as
    the reference ``get_window_index`` partitions them (edge windows are smaller)."""
    t, h, w = grid
    merge = vision["spatial_merge_size"]
    win = vision["window_size"] // merge // vision["patch_size"]  # merged tokens per window side
    mh, mw = h // merge, w // merge
    rows = [min(win, mh - i) for i in range(0, mh, win)]
    cols = [min(win, mw - j) for j in range(0, mw, win)]
    return [r * c * merge * merge for r in rows for c in cols] * t


def vision_flops(grids: Sequence[Sequence[int]], config: Dict[str, Any]) -> float:
    """Multiply-add FLOPs (2 per MAC) of the vision tower over ``grids``: patch embedding,
    each block's linears and attention score/value matmuls (window or full), the merger."""
    v = config["vision_config"]
    d, inter, out = v["hidden_size"], v["intermediate_size"], v["out_hidden_size"]
    patch_in = v["in_chans"] * v["temporal_patch_size"] * v["patch_size"] ** 2
    unit = v["spatial_merge_size"] ** 2
    patches = sum(t * h * w for t, h, w in grids)
    window_sq = sum(s * s for g in grids for s in vision_window_lengths(g, v))
    full_sq = sum(t * (h * w) ** 2 for t, h, w in grids)  # full attention is per temporal slice
    full_blocks = len(v["fullatt_block_indexes"])
    block_linear = 2 * (d * 3 * d + d * d + 3 * d * inter)
    flops = 2 * patch_in * d * patches + v["depth"] * block_linear * patches
    flops += 4 * d * ((v["depth"] - full_blocks) * window_sq + full_blocks * full_sq)
    flops += (patches // unit) * 2 * (unit * d * unit * d + unit * d * out)
    return float(flops)


def decoder_linear_params(config: Dict[str, Any]) -> int:
    """Weights of one decoder layer's linears (q, k, v, o, gate, up, down), without biases."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    return 2 * h * h + 2 * h * kv + 3 * h * inter


def prefill_flops(grids: Sequence[Sequence[int]], prompt_tokens: int, config: Dict[str, Any]) -> Dict[str, float]:
    """FLOPs a prefill must do: vision tower, decoder linears over every prompt token, causal
    attention, and the lm_head for the last token only (the one whose logits are sampled)."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    length = prompt_tokens
    parts = {
        "vision": vision_flops(grids, config),
        "decoder_linear": float(2 * decoder_linear_params(config) * length * layers),
        # QK^T and AV over the causal triangle: 2 matmuls x 2 FLOPs x h x L(L+1)/2
        "decoder_attention": float(2 * h * length * (length + 1) * layers),
        "lm_head_last_token": float(2 * h * vocab),
    }
    parts["total"] = sum(parts.values())
    return parts


def decode_bytes_per_token(config: Dict[str, Any], context: float) -> Dict[str, float]:
    """Bytes read per decoded token in float32: decoder weights (linears, biases, norms), the
    final norm, the lm_head (the tied embedding when tied) and the KV cache at ``context`` tokens."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    per_layer = decoder_linear_params(config) + (h + 2 * kv) + 2 * h  # + qkv biases + 2 norms
    parts = {
        "decoder_weights": 4.0 * (layers * per_layer + h),
        "lm_head": 4.0 * h * vocab,
        "kv_cache": 4.0 * layers * 2 * kv * context,
    }
    parts["total"] = sum(parts.values())
    return parts


# --------------------------------------------------------------------------------------
# worker side (runs in a subprocess, possibly under PaddleFormers' interpreter)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _timed(fn: Callable[[], Any], repeats: int) -> List[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class _TokenClock:
    """A generation streamer that only records when each ``put`` arrives. transformers,
    PaddleFormers and this library all put the prompt first, then each new token as it is
    chosen, so one generate call yields the time to first token and the decode rate."""

    def __init__(self) -> None:
        self.times: List[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        """Nothing to flush."""


def synthetic_image(size: int, seed: int = 0) -> Any:
    """A deterministic size x size RGB PIL image: smooth colour gradients plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def synthetic_video(frames: int, size: int) -> List[Any]:
    """``frames`` PIL frames of a size x size scene that changes from frame to frame."""
    return [synthetic_image(size, seed=i) for i in range(frames)]


class _Impl:
    """One implementation's load/preprocess/vision/generate calls, behind one interface."""

    def __init__(self, spec: Dict[str, Any]):
        self.spec = spec

    def media_kwargs(self, media: str) -> Dict[str, Any]:
        """Processor keyword arguments for the spec's image or video."""
        if media == "video":
            return {"videos": [synthetic_video(self.spec["video_frames"], self.spec["video_size"])], "fps": [VIDEO_FPS]}
        return {"images": [synthetic_image(self.spec["image_size"])]}


class _PaddleMix(_Impl):
    def load(self) -> None:
        import paddle

        from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, set_num_threads

        set_num_threads(self.spec["threads"])
        self.paddle = paddle
        attn = self.spec.get("attn", "sdpa")
        if attn == "flash_attention_2":
            from paddlemix_qwen25vl.ops import build_ops, has_flash_attn_op

            if not has_flash_attn_op():
                build_ops()  # compiled once into the user cache, then loaded
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(self.spec["checkpoint"], attn_implementation=attn)
        self.model.eval()
        self.processor = Qwen2_5_VLProcessor.from_pretrained(self.spec["checkpoint"])

    def preprocess(self, text: str, media: Dict[str, Any]) -> Dict[str, Any]:
        return self.processor(text=[text], return_tensors="pd", **media)

    def vision(self, inputs: Dict[str, Any], video: bool) -> None:
        pixels, grid = _vision_inputs(inputs, video)
        with self.paddle.no_grad():  # a context, not a global switch: this also runs inside the tests' process
            self.model.visual(pixels, grid_thw=grid).numpy()

    def generate(self, inputs: Dict[str, Any], new_tokens: int, streamer: Any = None) -> List[int]:
        tokens, _ = self.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                        decode_strategy="greedy_search", streamer=streamer)
        return tokens.numpy()[0].tolist()


class _PaddleFormers(_PaddleMix):
    def media_kwargs(self, media: str) -> Dict[str, Any]:
        kwargs = super().media_kwargs(media)
        if "fps" in kwargs:  # its (transformers 5) processor validates fps as one number
            kwargs["fps"] = kwargs["fps"][0]
        return kwargs

    def load(self) -> None:
        import paddle
        from paddleformers.transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

        paddle.base.core.set_num_threads(self.spec["threads"])  # paddle's CPU default is one thread
        paddle.set_grad_enabled(False)
        self.paddle = paddle
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(self.spec["checkpoint"], dtype="float32")
        # Its fused RMSNorm kernel is GPU-only; the flag is read at every forward, from the
        # config object each norm holds (the text and vision sub-configs as well).
        for config in (self.model.config, getattr(self.model.config, "text_config", None),
                       getattr(self.model.config, "vision_config", None)):
            if config is not None:
                config.fuse_rms_norm = False
        self.model.eval()
        self.processor = Qwen2_5_VLProcessor.from_pretrained(self.spec["checkpoint"])

    def generate(self, inputs: Dict[str, Any], new_tokens: int, streamer: Any = None) -> List[int]:
        tokens = self.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     decode_strategy="greedy_search", streamer=streamer)[0]
        return tokens.numpy()[0].tolist()


class _Transformers(_Impl):
    def load(self) -> None:
        import torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        torch.set_num_threads(self.spec["threads"])
        torch.set_grad_enabled(False)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            self.spec["checkpoint"], torch_dtype=torch.float32, attn_implementation=self.spec["attn"]
        ).eval()
        self.processor = AutoProcessor.from_pretrained(self.spec["checkpoint"])

    def preprocess(self, text: str, media: Dict[str, Any]) -> Dict[str, Any]:
        return self.processor(text=[text], return_tensors="pt", **media)

    def vision(self, inputs: Dict[str, Any], video: bool) -> None:
        pixels, grid = _vision_inputs(inputs, video)
        self.model.visual(pixels, grid_thw=grid)

    def generate(self, inputs: Dict[str, Any], new_tokens: int, streamer: Any = None) -> List[int]:
        out = self.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=PAD_TOKEN_ID, streamer=streamer)
        return out[0, inputs["input_ids"].shape[-1]:].tolist()


def _vision_inputs(inputs: Dict[str, Any], video: bool) -> Tuple[Any, Any]:
    if video:
        return inputs["pixel_values_videos"], inputs["video_grid_thw"]
    return inputs["pixel_values"], inputs["image_grid_thw"]


_IMPL_CLASSES = {"paddlemix": _PaddleMix, "transformers": _Transformers, "paddleformers": _PaddleFormers}


def _grids(inputs: Dict[str, Any], video: bool) -> List[List[int]]:
    grid = _vision_inputs(inputs, video)[1]
    return [[int(x) for x in row] for row in (grid.tolist() if hasattr(grid, "tolist") else grid)]


def run_timing(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Time one implementation on one input (``spec["media"]``) in this process."""
    impl = _IMPL_CLASSES[spec["impl"]](spec)
    start = time.perf_counter()
    impl.load()
    load_s = time.perf_counter() - start
    rss_loaded = _status_kib("VmRSS")
    video = spec["media"] == "video"
    text, media = PROMPTS[spec["media"]], impl.media_kwargs(spec["media"])
    repeats, new_tokens = spec["repeats"], spec["new_tokens"]

    inputs = impl.preprocess(text, media)  # warm-up
    preprocess = _timed(lambda: impl.preprocess(text, media), repeats)
    impl.vision(inputs, video)
    vision = _timed(lambda: impl.vision(inputs, video), repeats)
    impl.generate(inputs, 2)  # warms the prefill and the decode paths
    prefill, decode, full = [], [], []
    for _ in range(repeats):
        clock = _TokenClock()
        start = time.perf_counter()
        generated = impl.generate(inputs, new_tokens, streamer=clock)
        full.append(time.perf_counter() - start)
        # put() #0 is the prompt, #1 the first new token, #N the last
        if len(generated) != new_tokens or len(clock.times) != new_tokens + 1:
            raise RuntimeError(f"{spec['impl']} generated {len(generated)} tokens ({len(clock.times) - 1} streamed), "
                               f"expected {new_tokens}")
        prefill.append(clock.times[1] - start)
        decode.append((new_tokens - 1) / (clock.times[-1] - clock.times[1]))
    return {
        "load_s": load_s,
        "preprocess_s": min(preprocess),
        "vision_s": min(vision),
        "prefill_s": min(prefill),
        "generate_s": min(full),
        "decode_tok_s": max(decode),
        "samples": {"preprocess_s": preprocess, "vision_s": vision, "prefill_s": prefill, "decode_tok_s": decode,
                    "generate_s": full},
        "prompt_tokens": int(inputs["input_ids"].shape[-1]),
        "grids": _grids(inputs, video),
        "new_tokens": new_tokens,
        "tokens": generated,  # greedy tokens: equal across implementations when the weights load alike
        "rss_loaded_mib": rss_loaded / 1024,
        "peak_rss_mib": _status_kib("VmHWM") / 1024,
    }


def run_vision_memory(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Extra peak RSS of one (first, un-warmed) vision-tower call on a ``spec["image_size"]`` image.

    The peak is reset through /proc/self/clear_refs once the model and pixels are in memory,
    so the number is what the tower's activations add; a fresh process per size keeps the
    allocators from reusing memory cached by an earlier call.
    """
    impl = _IMPL_CLASSES[spec["impl"]](spec)
    impl.load()
    inputs = impl.preprocess(PROMPTS["image"], impl.media_kwargs("image"))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    impl.vision(inputs, video=False)
    grids = _grids(inputs, video=False)
    return {"patches": sum(t * h * w for t, h, w in grids), "extra_peak_mib": (_status_kib("VmHWM") - base) / 1024}


def _gemm_gflop_s(matmul: Callable[[], Any], n: int, repeats: int) -> float:
    matmul()  # warm-up
    return 2 * n**3 / min(_timed(matmul, repeats)) / 1e9


def run_machine(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Streaming read bandwidth (best of numpy split over threads, paddle.sum and a paddle GEMV
    x @ W, >= 1 GiB buffer), fp32 GEMM throughput of paddle.matmul and numpy (n^3, best of
    several), with spec's threads, and the CPU: model, instruction sets, code paths in use."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import paddle

    from paddlemix_qwen25vl.cpu import cpu_description, enable_fast_mkl_on_amd

    enable_fast_mkl_on_amd()  # as a model load does, before the first matmul
    threads, repeats = spec["threads"], spec["machine_repeats"]
    paddle.base.core.set_num_threads(threads)
    buffer = np.ones(spec["bandwidth_bytes"] // 4, dtype=np.float32)
    chunks = np.array_split(buffer, threads)
    with ThreadPoolExecutor(threads) as pool:  # numpy's sum releases the GIL: one chunk per thread
        numpy_s = _timed(lambda: sum(pool.map(np.sum, chunks)), repeats)
    tensor = paddle.to_tensor(buffer)
    del buffer, chunks
    paddle_s = _timed(lambda: float(tensor.sum()), repeats)
    # x @ W with W [4096, N] is how decode reads weights, and MKL's GEMV reads faster than both sums.
    cols = tensor.shape[0] // 4096
    matrix = tensor[: 4096 * cols].reshape([4096, cols])
    vector = paddle.ones([1, 4096], dtype="float32")
    gemv_s = _timed(lambda: float(paddle.matmul(vector, matrix)[0, 0]), repeats)
    gemv_bytes = 4 * 4096 * cols
    del tensor, matrix
    n = spec["gemm_n"]
    a = paddle.randn([n, n], dtype="float32")
    b = paddle.randn([n, n], dtype="float32")
    a_np, b_np = a.numpy(), b.numpy()
    nbytes = spec["bandwidth_bytes"]
    return {
        "cpu": cpu_description(),
        "bandwidth_bytes": nbytes,
        "bandwidth_gb_s": {"numpy": nbytes / min(numpy_s) / 1e9, "paddle": nbytes / min(paddle_s) / 1e9,
                           "gemv": gemv_bytes / min(gemv_s) / 1e9},
        "gemm_n": n,
        "gemm_gflop_s_by_library": {"paddle": _gemm_gflop_s(lambda: (a @ b).numpy(), n, repeats),
                                    "numpy": _gemm_gflop_s(lambda: a_np @ b_np, n, repeats)},
    }


def run_torch_gemm(spec: Dict[str, Any]) -> Dict[str, Any]:
    """torch's fp32 GEMM throughput (n^3), in its own process: two OpenMP runtimes in one
    process spin against each other (benchmarks/README.md)."""
    import torch

    torch.set_num_threads(spec["threads"])
    n = spec["gemm_n"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    return {"torch": _gemm_gflop_s(lambda: a @ b, n, spec["machine_repeats"])}


def worker_main(spec: Dict[str, Any]) -> None:
    """Run one task described by ``spec`` and print its result after RESULT_MARKER."""
    if spec["task"] == "build":
        result: Dict[str, Any] = {"path": str(build_checkpoint(spec["config"], Path(spec["checkpoint"]), spec["streamed"]))}
    else:
        tasks = {"timing": run_timing, "vision_memory": run_vision_memory, "machine": run_machine,
                 "torch_gemm": run_torch_gemm}
        result = tasks[spec["task"]](spec)
    print(RESULT_MARKER + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------
# orchestration


def run_worker(spec: Dict[str, Any], python: str = sys.executable, timeout: float = 7200) -> Dict[str, Any]:
    """Run ``spec`` in a fresh ``python`` process with the thread count pinned; returns its
    result, or ``{"error": ...}`` with the end of its stderr."""
    threads = str(spec.get("threads", 1))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PADDLEMIX_NUM_THREADS=threads,
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # the worker under another interpreter imports nothing of ours but this file; our own
    # interpreter needs the repository importable for the paddlemix worker and the build
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])) if python == sys.executable \
        else env.get("PYTHONPATH", "")
    cmd = [python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    return {"error": f"exit code {proc.returncode}: " + proc.stderr[-3000:]}


def ensure_checkpoint(name: str, cache_dir: Path) -> Path:
    """The cached checkpoint of config ``name``, built (in a subprocess) on first use."""
    path = checkpoint_dir(cache_dir, name)
    if not (path / "config.json").exists() or not (path / "chat_template.json").exists():
        print(f"Building the {name} checkpoint at {path} (once)", flush=True)
        result = run_worker({"task": "build", "config": name, "checkpoint": str(path), "streamed": name == "full"})
        if "error" in result:
            raise RuntimeError(f"building the {name} checkpoint failed: {result['error']}")
    return path


def fastest(rows: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The row whose whole generate call (prefill and every new token) was quickest."""
    return min(rows, key=lambda r: r["generate_s"]) if rows else None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def summarize(results: Dict[str, Any]) -> Dict[str, Any]:
    """Add FLOP/byte counts, fractions of peak and bound, ratios and the target verdicts.

    ``results`` holds ``config`` (transformers dict), ``machine``, ``rows`` (one per
    implementation and input, each with ``impl``, ``label``, ``media`` and the timing) and
    ``vision_memory`` (implementation label -> list of {patches, extra_peak_mib}).
    """
    config, machine = results["config"], results["machine"]
    gemm = machine.get("gemm_gflop_s")
    bandwidth = max(machine["bandwidth_gb_s"].values()) if machine.get("bandwidth_gb_s") else None
    for row in results["rows"]:
        if "error" in row or "prefill_s" not in row:
            continue
        flops = prefill_flops(row["grids"], row["prompt_tokens"], config)
        nbytes = decode_bytes_per_token(config, row["prompt_tokens"] + row["new_tokens"] / 2)
        row["prefill_flops"] = flops
        row["decode_bytes_per_token"] = nbytes
        row["prefill_gflop_s"] = flops["total"] / row["prefill_s"] / 1e9
        row["prefill_frac_gemm"] = _ratio(row["prefill_gflop_s"], gemm)
        row["decode_bound_tok_s"] = bandwidth * 1e9 / nbytes["total"] if bandwidth else None
        row["decode_frac_bound"] = _ratio(row["decode_tok_s"], row["decode_bound_tok_s"])

    targets = []
    for media in sorted({r["media"] for r in results["rows"]}):
        rows = [r for r in results["rows"] if r["media"] == media and "prefill_s" in r]
        # each library with its fastest attention on this input
        ours_rows = [r for r in rows if r["impl"] == "paddlemix"]
        hf = [r for r in rows if r["impl"] == "transformers"]
        ours, hf_best = fastest(ours_rows), fastest(hf)
        pf = next((r for r in rows if r["impl"] == "paddleformers"), None)
        for row in ours_rows + hf:  # summarize runs again after every new row: the fastest may change
            row["fastest"] = row is ours or row is hf_best
        if hf_best:
            for row in rows:  # how far greedy decoding agrees: a check that weights load alike
                row["tokens_agree_with_transformers"] = _common_prefix(row["tokens"], hf_best["tokens"])
        values = {
            "prefill_vs_transformers": _ratio(ours and ours["prefill_s"], hf_best and hf_best["prefill_s"]),
            "prefill_frac_gemm": ours and ours["prefill_frac_gemm"],
            "decode_vs_transformers": _ratio(ours and ours["decode_tok_s"], hf_best and hf_best["decode_tok_s"]),
            "decode_frac_bound": ours and ours["decode_frac_bound"],
            "prefill_vs_paddleformers": _ratio(ours and ours["prefill_s"], pf and pf["prefill_s"]),
            "decode_vs_paddleformers": _ratio(ours and ours["decode_tok_s"], pf and pf["decode_tok_s"]),
        }
        for key, text, threshold, higher in TARGETS:
            value = values[key]
            strict = key.endswith("paddleformers")  # "ahead of" means strictly better
            if value is None:
                verdict = "n/a"
            elif higher:
                verdict = "PASS" if (value > threshold if strict else value >= threshold) else "FAIL"
            else:
                verdict = "PASS" if (value < threshold if strict else value <= threshold) else "FAIL"
            targets.append({"media": media, "target": key, "description": text, "value": value,
                            "threshold": threshold, "higher_is_better": higher, "verdict": verdict,
                            "ours": ours and ours["label"],
                            "baseline": hf_best["label"] if hf_best and "transformers" in key else None})
    for label, points in results.get("vision_memory", {}).items():
        verdict, growth = vision_memory_linearity(points)
        targets.append({"media": "image", "target": "vision_memory_linear", "description":
                        f"vision peak memory linear in patches ({label}): slope growth", "value": growth,
                        "threshold": LINEAR_SLOPE_TOLERANCE, "higher_is_better": False,
                        "verdict": verdict if label.startswith("paddlemix") else f"({verdict})", "baseline": None})
    results["targets"] = targets
    return results


def vision_memory_linearity(points: Sequence[Dict[str, Any]]) -> Tuple[str, Optional[float]]:
    """("PASS"/"FAIL"/"n/a", growth): growth is the extra peak per added patch between the two
    largest sizes over that between the two smallest (1 when linear, > 2 when quadratic)."""
    pts = sorted((p["patches"], p["extra_peak_mib"]) for p in points if "extra_peak_mib" in p)
    if len(pts) < 3:
        return "n/a", None
    first = (pts[1][1] - pts[0][1]) / (pts[1][0] - pts[0][0])
    last = (pts[-1][1] - pts[-2][1]) / (pts[-1][0] - pts[-2][0])
    if first <= 0:
        return "n/a", None
    growth = last / first
    return ("PASS" if growth <= LINEAR_SLOPE_TOLERANCE else "FAIL"), growth


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_report(results: Dict[str, Any]) -> str:
    """The results as markdown: machine limits, one row per (input, implementation), targets."""
    m = results["machine"]
    lines = [
        f"# Qwen2.5-VL inference on CPU: {results['config_name']} model, {results['threads']} threads",
        "",
        f"Machine: streaming read {_fmt(max(m['bandwidth_gb_s'].values()) if m.get('bandwidth_gb_s') else None, 1)} GB/s "
        f"(best of {', '.join(f'{k} {_fmt(v, 1)}' for k, v in m.get('bandwidth_gb_s', {}).items())}), "
        f"fp32 GEMM peak {_fmt(m.get('gemm_gflop_s'), 0)} GFLOP/s (best of "
        f"{', '.join(f'{k} {_fmt(v, 0)}' for k, v in m.get('gemm_gflop_s_by_library', {}).items())}, {m.get('gemm_n')}^3). "
        + (f"CPU: {m['cpu']['vendor']} {m['cpu']['model']} ({', '.join(m['cpu']['instruction_sets'])}); "
           f"code path {m['cpu']['isa_in_use']}, {m['cpu']['mkl_code_path']}. " if m.get("cpu") else "")
        + f"{results['new_tokens']} new tokens, best of {results['repeats']} timed runs after a warm-up"
        + (f" (PaddleFormers: {results.get('paddleformers_repeats', results['repeats'])})."
           if any(r.get("impl") == "paddleformers" for r in results["rows"]) else "."),
        "",
        "| input | implementation | preprocess s | vision s | prefill s | prefill GFLOP/s | % GEMM peak "
        "| decode tok/s | % bandwidth bound | peak RSS GiB | prompt tokens | tokens = transformers' |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        label = r["label"] + (" (fastest)" if r.get("fastest") else "")
        if "error" in r:
            lines.append(f"| {r['media']} | {label} | error: {r['error'].splitlines()[-1][:120] if r['error'] else ''} "
                         "||||||||||")
            continue
        pct = lambda x: _fmt(x * 100 if x is not None else None, 1)  # noqa: E731
        lines.append(
            f"| {r['media']} | {label} | {_fmt(r['preprocess_s'], 3)} | {_fmt(r['vision_s'])} | {_fmt(r['prefill_s'])} "
            f"| {_fmt(r.get('prefill_gflop_s'), 0)} | {pct(r.get('prefill_frac_gemm'))} | {_fmt(r['decode_tok_s'])} "
            f"| {pct(r.get('decode_frac_bound'))} | {_fmt(r['peak_rss_mib'] / 1024)} | {r['prompt_tokens']} "
            f"| {_fmt(r.get('tokens_agree_with_transformers'))}/{r['new_tokens']} |"
        )
    lines += ["", "## Targets (this library)", "", "| input | target | value | threshold | verdict |", "|---|---|---:|---:|---|"]
    for t in results["targets"]:
        sign = ">=" if t["higher_is_better"] else "<="
        if t["target"].endswith("paddleformers"):
            sign = sign[0]
        base = f" ({t['ours']} vs {t['baseline']})" if t.get("baseline") else (f" ({t['ours']})" if t.get("ours") else "")
        lines.append(f"| {t['media']} | {t['description']}{base} | {_fmt(t['value'])} | {sign} {t['threshold']} "
                     f"| {t['verdict']} |")
    if results.get("vision_memory"):
        lines += ["", "## Vision tower extra peak memory (one call, fresh process)", "",
                  "| implementation | patches | extra peak MiB | MiB per 1k patches |", "|---|---:|---:|---:|"]
        for label, points in results["vision_memory"].items():
            for p in points:
                if "error" in p:
                    lines.append(f"| {label} | {p.get('patches', '-')} | error | |")
                    continue
                lines.append(f"| {label} | {p['patches']} | {_fmt(p['extra_peak_mib'], 0)} "
                             f"| {_fmt(p['extra_peak_mib'] / p['patches'] * 1000, 1)} |")
    lines += [""] + [f"- {note}" for note in results.get("notes", [])]
    return "\n".join(lines) + "\n"


def plot_report(results: Dict[str, Any], path: Path) -> None:
    """Bar charts of prefill, decode and peak RSS per input and implementation, and the vision
    tower's extra peak memory against patches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if "prefill_s" in r]
    medias = sorted({r["media"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = [("prefill_s", "prefill (time to first token), s"), ("decode_tok_s", "decode, tokens/s"),
              ("peak_rss_mib", "peak RSS, MiB")]
    width = 0.8 / max(len(labels), 1)
    for ax, (key, title) in zip(axes.flat, panels):
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
    ax = axes.flat[3]
    for label, points in results.get("vision_memory", {}).items():
        pts = sorted((p["patches"], p["extra_peak_mib"]) for p in points if "extra_peak_mib" in p)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("patches")
    ax.set_title("vision tower extra peak memory, MiB")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.suptitle(f"Qwen2.5-VL {results['config_name']} on CPU, {results['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(results: Dict[str, Any], prefix: Path) -> List[Path]:
    """Write ``prefix``.json, .md and .png (the plot when matplotlib is installed)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_suffix(".json"), prefix.with_suffix(".md")]
    paths[0].write_text(json.dumps(results, indent=2))
    paths[1].write_text(markdown_report(results))
    try:
        plot_report(results, prefix.with_suffix(".png"))
        paths.append(prefix.with_suffix(".png"))
    except ImportError:
        results.setdefault("notes", []).append("matplotlib is not installed: no plot")
    return paths


def _available(module: str, python: str = sys.executable) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--config", choices=("tiny", "quick", "full"), default="quick")
    p.add_argument("--full", action="store_true", help="the whole 3B model (same as --config full)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the best is reported)")
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--media", nargs="+", choices=("image", "video"), default=["image", "video"])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--hf_attn", nargs="+", choices=HF_ATTNS, default=list(HF_ATTNS),
                   help="transformers attention implementations to run; the fastest is the baseline")
    p.add_argument("--pm_attn", nargs="+", choices=PM_ATTNS, default=list(PM_ATTNS),
                   help="this library's attention implementations to run; the fastest is measured against the targets")
    p.add_argument("--image_size", type=int, default=672)
    p.add_argument("--video_frames", type=int, default=16)
    p.add_argument("--video_size", type=int, default=336)
    p.add_argument("--memory_sizes", type=int, nargs="*", default=[336, 672, 1008],
                   help="image sides for the vision-memory scaling check (empty: skip it)")
    p.add_argument("--paddleformers_repeats", type=int, default=1,
                   help="timed runs for PaddleFormers, which decodes without its KV cache (one run of 32 "
                        "tokens takes 7-14 min here); its rates are 100x off, one run decides its comparisons")
    p.add_argument("--paddleformers_python", default="/tmp/pf_venv/bin/python",
                   help="interpreter of a venv with paddleformers 1.2.0 (see benchmarks/README.md)")
    p.add_argument("--bandwidth_gib", type=float, default=1.0)
    p.add_argument("--gemm_n", type=int, default=4096)
    p.add_argument("--machine_repeats", type=int, default=5)
    p.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out_prefix", type=Path, default=RESULTS_DIR / "compare")
    args = p.parse_args(argv)
    if args.new_tokens < 2:
        p.error("--new_tokens must be at least 2 (decode speed is measured between the first and the last token)")
    return args


def plan_runs(args: argparse.Namespace, checkpoint: Path, notes: List[str]) -> List[Dict[str, Any]]:
    """Timing specs, one per (input, implementation [, attention]); notes say what is skipped."""
    base = {"task": "timing", "checkpoint": str(checkpoint), "threads": args.threads, "repeats": args.repeats,
            "new_tokens": args.new_tokens, "image_size": args.image_size, "video_frames": args.video_frames,
            "video_size": args.video_size}
    impls = []
    for impl in args.impls:
        if impl == "transformers":
            if not _available("transformers"):
                notes.append("transformers is not installed: skipped")
                continue
            impls += [{"impl": impl, "attn": a, "label": f"transformers-{a}"} for a in args.hf_attn]
        elif impl == "paddleformers":
            python = args.paddleformers_python
            if not (python and Path(python).exists() and _available("paddleformers", python)):
                notes.append(f"PaddleFormers skipped: no paddleformers under {python} (see benchmarks/README.md)")
                continue
            impls.append({"impl": impl, "label": "paddleformers", "python": python,
                          "repeats": args.paddleformers_repeats})
        else:
            impls += [{"impl": impl, "attn": a, "label": f"paddlemix-{a}"} for a in args.pm_attn]
    return [{**base, **i, "media": m} for m in args.media for i in impls]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the comparison and write the reports; returns the results.

    The reports are rewritten after every run, so an interrupted or still running
    comparison leaves what it has measured so far. Order: machine limits, image rows, the
    vision-memory check, video rows.
    """
    args = parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return {}
    from tqdm.auto import tqdm

    name = "full" if args.full else args.config
    checkpoint = ensure_checkpoint(name, args.cache_dir)
    notes: List[str] = []
    runs = plan_runs(args, checkpoint, notes)
    memory_impls = ["paddlemix"] + (["transformers"] if any(r["impl"] == "transformers" for r in runs) else [])
    results: Dict[str, Any] = {"config_name": name, "config": bench_config(name), "checkpoint": str(checkpoint),
                               "threads": args.threads, "repeats": args.repeats,
                               "paddleformers_repeats": args.paddleformers_repeats, "new_tokens": args.new_tokens,
                               "machine": {}, "rows": [], "vision_memory": {}, "notes": notes}
    progress = tqdm(total=1 + len(runs) + len(memory_impls) * len(args.memory_sizes), desc="compare", unit="run")

    def step(label: str, spec: Dict[str, Any], python: str = sys.executable) -> Dict[str, Any]:
        progress.set_postfix_str(label)
        result = run_worker(spec, python=python)
        progress.update(1)
        return result

    def snapshot() -> None:
        results["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_reports(summarize(results), args.out_prefix)

    probe = {"threads": args.threads, "machine_repeats": args.machine_repeats, "gemm_n": args.gemm_n}
    machine = step("machine", {"task": "machine", "bandwidth_bytes": int(args.bandwidth_gib * 2**30), **probe})
    torch_gemm = run_worker({"task": "torch_gemm", **probe})
    if "error" in machine:
        notes.append(f"machine probe failed: {machine['error'][-300:]}")
    else:
        if "error" in torch_gemm:
            notes.append(f"torch GEMM probe failed: {torch_gemm['error'][-300:]}")
        else:
            machine["gemm_gflop_s_by_library"].update(torch_gemm)
        # the machine's peak is the best library's, not Paddle's (3x below it with MKL's generic AMD path)
        machine["gemm_gflop_s"] = max(machine["gemm_gflop_s_by_library"].values())
        results["machine"] = machine
    first_media = [r for r in runs if r["media"] == args.media[0]]
    for spec in first_media:
        result = step(f"{spec['media']} {spec['label']}", spec, spec.get("python", sys.executable))
        results["rows"].append({k: spec[k] for k in ("impl", "label", "media", "attn") if k in spec} | result)
        snapshot()
    # the vision-memory check uses each library's fastest attention on the first input
    for impl in memory_impls:
        best = fastest([r for r in results["rows"] if r["impl"] == impl and "prefill_s" in r])
        attn = best["attn"] if best else (args.hf_attn if impl == "transformers" else args.pm_attn)[0]
        label = f"{impl}-{attn}"
        for size in args.memory_sizes:
            spec = {"task": "vision_memory", "impl": impl, "attn": attn, "checkpoint": str(checkpoint),
                    "threads": args.threads, "image_size": size}
            point = step(f"vision memory {label} {size}px", spec)
            results["vision_memory"].setdefault(label, []).append({"image_size": size} | point)
        snapshot()
    for spec in runs[len(first_media):]:
        result = step(f"{spec['media']} {spec['label']}", spec, spec.get("python", sys.executable))
        results["rows"].append({k: spec[k] for k in ("impl", "label", "media", "attn") if k in spec} | result)
        snapshot()
    progress.close()
    snapshot()
    print(f"wrote {args.out_prefix}.json, .md, .png")
    print(markdown_report(results))
    return results


if __name__ == "__main__":
    main()
