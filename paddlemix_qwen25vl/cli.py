"""What the inference scripts in ``examples/`` share: flags, model loading, generation, benchmark.

Flags follow PaddleMIX (``--model_path --question --image_file/--video_file --top_p
--temperature --max_new_tokens --dtype --benchmark --attn_implementation``) and PaddleNLP
(``--quant_type``), plus ``--decode_strategy``, ``--device`` and ``--stream``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from typing import Any, Dict, List, Optional, Tuple

import paddle

from .demo import DEMO_IMAGE, DEMO_QUESTION, resolve_model_or_demo
from .modeling import Qwen2_5_VLForConditionalGeneration
from .processing import Qwen2_5_VLProcessor, process_vision_info
from .quantization import QUANT_TYPES, weight_kind
from .runtime import DTYPES, on_gpu, set_device

__all__ = ["add_model_flags", "build_parser", "load", "answer", "single_image_main"]

def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that say which model to load and how: the inference scripts' and the server's."""
    parser.add_argument("--model_path", default=None, help="checkpoint directory or hub id; default: the bundled demo model")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                        help="on CPU bfloat16 keeps the weights in bfloat16 and computes in float32; float16 falls back to float32 there")
    parser.add_argument("--quant_type", default=None, choices=QUANT_TYPES,
                        help="weight-only int8 (per channel) or int4 (groups of 128) weights, quantised while loading")
    parser.add_argument("--attn_implementation", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"])
    parser.add_argument("--device", default=None, help="cpu, gpu or gpu:N (default: Paddle's current device)")
    parser.add_argument("--min_pixels", type=int, default=None, help="per-image pixel budget (default: the processor's)")
    parser.add_argument("--max_pixels", type=int, default=None)


def build_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the flags every inference script takes."""
    parser = argparse.ArgumentParser(description=description)
    add_model_flags(parser)
    parser.add_argument("--question", default="Describe this image.")
    parser.add_argument("--top_p", type=float, default=0.01)
    parser.add_argument("--temperature", type=float, default=0.01)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--decode_strategy", default="greedy_search", choices=["greedy_search", "sampling"])
    parser.add_argument("--stream", action="store_true", help="print the answer while it is generated")
    parser.add_argument("--benchmark", action="store_true", help="report prefill latency, decode tokens/s and peak memory")
    parser.add_argument("--benchmark_json", default=None, help="also write the benchmark as JSON to this file")
    return parser


def load(args: argparse.Namespace) -> Tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Set the device, then load the model and processor named by ``--model_path`` (or the demo)."""
    try:
        set_device(args.device)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    path = resolve_model_or_demo(args.model_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=args.dtype, attn_implementation=args.attn_implementation, quant_type=args.quant_type
    )
    processor = Qwen2_5_VLProcessor.from_pretrained(path, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    return model, processor


def _peak_memory() -> Dict[str, float]:
    if on_gpu():
        return {"gpu_max_memory_allocated_gb": paddle.device.cuda.max_memory_allocated() / 1024**3}
    # ru_maxrss is in KiB on Linux: the process's peak resident set.
    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def answer(
    model: Qwen2_5_VLForConditionalGeneration,
    processor: Qwen2_5_VLProcessor,
    conversations: List[List[Dict[str, Any]]],
    args: argparse.Namespace,
) -> List[str]:
    """Answer each conversation (a batch, left-padded); prints ``output_text:`` and the benchmark if asked."""
    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    images, videos, video_kwargs = process_vision_info([m for c in conversations for m in c], return_video_kwargs=True)
    inputs = processor(text=texts, images=images, videos=videos, fps=video_kwargs.get("fps"), return_tensors="pd")
    streamer = None
    if args.stream:
        if len(conversations) != 1:
            raise SystemExit("--stream works with one conversation at a time")
        from paddlenlp.generation import TextStreamer

        streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    options = dict(
        max_new_tokens=args.max_new_tokens,
        decode_strategy=args.decode_strategy,
        temperature=args.temperature,
        top_p=args.top_p,
        streamer=streamer,
    )
    try:
        new_tokens, _ = model.generate(**inputs, **options)
    except ValueError as err:  # bad settings (e.g. too many new tokens): the message, not a traceback
        raise SystemExit(str(err)) from None
    outputs = processor.batch_decode(new_tokens.numpy().tolist(), skip_special_tokens=True)
    print("output_text:\n", outputs if len(outputs) > 1 else outputs[0])
    if args.benchmark:
        paddlemix_benchmark(model, inputs, {**options, "streamer": None})
        report = benchmark(model, inputs, {**options, "streamer": None})
        print(json.dumps(report, indent=2))
        if args.benchmark_json:
            os.makedirs(os.path.dirname(os.path.abspath(args.benchmark_json)), exist_ok=True)
            with open(args.benchmark_json, "w") as f:
                json.dump(report, f, indent=2)
    return outputs


def paddlemix_benchmark(model: Qwen2_5_VLForConditionalGeneration, inputs: Dict[str, Any], options: Dict[str, Any],
                        runs: int = 20, timed: int = 10) -> float:
    """PaddleMIX's ``--benchmark`` lines, which users' scripts parse: ``s/it:`` (mean seconds of
    the last ``timed`` of ``runs`` generations) and the memory lines (GPU: PaddleMIX's four;
    CPU: the peak resident set). Returns the seconds per generation."""
    total = 0.0
    for run in range(runs):
        _, seconds = _timed_generate(model, inputs, options)
        if run >= runs - timed:
            total += seconds
    print("s/it: ", total / timed)
    if on_gpu():
        cuda = paddle.device.cuda
        for name in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
            print(f"GPU {name}: {getattr(cuda, name)() / 1024 ** 3:.2f} GB")
    else:
        print(f"CPU peak_rss: {_peak_memory()['peak_rss_gb']:.2f} GB")
    return total / timed


def _timed_generate(model: Qwen2_5_VLForConditionalGeneration, inputs: Dict[str, Any], options: Dict[str, Any]) -> Tuple[int, float]:
    start = time.perf_counter()
    tokens, _ = model.generate(**inputs, **options)
    tokens.numpy()  # waits for the device
    return tokens.shape[1], time.perf_counter() - start


def benchmark(model: Qwen2_5_VLForConditionalGeneration, inputs: Dict[str, Any], options: Dict[str, Any]) -> Dict[str, Any]:
    """Prefill latency (vision + prompt + first token), decode tokens/s after it, peak memory.

    After a warm-up, a one-token generation times the prefill; the full generation minus that
    time is the decode phase. Every row generates ``min_new_tokens = max_new_tokens`` tokens so
    that the count does not depend on when eos comes.
    """
    fixed = {**options, "min_new_tokens": options["max_new_tokens"]}
    _timed_generate(model, inputs, {**fixed, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    _, prefill = _timed_generate(model, inputs, {**fixed, "max_new_tokens": 1, "min_new_tokens": 1})
    generated, total = _timed_generate(model, inputs, fixed)
    batch = int(inputs["input_ids"].shape[0])
    decode_time = total - prefill
    return {
        "batch_size": batch,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": int(generated),
        "prefill_seconds": round(prefill, 4),
        "decode_tokens_per_second": round((generated - 1) * batch / decode_time, 3) if generated > 1 else None,
        "total_seconds": round(total, 4),
        "device": paddle.get_device(),
        "dtype": weight_kind(model),
        **{k: round(v, 4) for k, v in _peak_memory().items()},
    }


SINGLE_IMAGE_USAGE = """Ask a question about one image.

    python examples/single_image_infer.py   # or: python -m paddlemix_qwen25vl
        (the bundled demo model and image: "What shape is this?")
    python examples/single_image_infer.py --model_path Qwen/Qwen2.5-VL-3B-Instruct --image_file photo.jpg
"""


def single_image_main(argv: Optional[List[str]] = None) -> None:
    """The main job: ``examples/single_image_infer.py`` and ``python -m paddlemix_qwen25vl``."""
    parser = build_parser(SINGLE_IMAGE_USAGE)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--image_file", default=DEMO_IMAGE)
    parser.set_defaults(question=None)
    args = parser.parse_args(argv)
    if args.question is None:  # the demo model was trained on shape and colour questions only
        args.question = DEMO_QUESTION if args.model_path is None else "Describe this image."
    model, processor = load(args)
    messages = [{"role": "user", "content": [{"type": "image", "image": args.image_file}, {"type": "text", "text": args.question}]}]
    answer(model, processor, [messages], args)
