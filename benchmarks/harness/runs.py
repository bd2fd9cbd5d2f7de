"""The measurements a worker makes on one library: the timing run (preprocess, vision,
prefill, decode, peak RSS, and with a reference continuation the teacher-forced top-1
agreement), the reference itself, the vision tower's extra peak memory, and a load-and-generate
run of a text prompt (benchmarks/full_memory.py)."""
from __future__ import annotations

import time
from typing import Any, Dict, List

from .common import ROW_PROBE_BYTES, numpy_read_gb_s, reset_peak_rss, status_kib, timed
from .libraries import LIBRARIES, Library, grids
from .workload import PROMPTS


class TokenClock:
    """A generation streamer that only records when each ``put`` arrives. transformers,
    PaddleFormers and this library all put the prompt first, then each new token as it is
    chosen, so one generate call yields the time to first token and the decode rate."""

    def __init__(self) -> None:
        self.times: List[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        """Nothing to flush."""


def _time_generate(lib: Library, inputs: Dict[str, Any], spec: Dict[str, Any]) -> Dict[str, Any]:
    """``repeats`` greedy generate calls of N tokens: prefill (to the first token), decode rate, whole call."""
    new_tokens = spec["new_tokens"]
    lib.generate(inputs, 2)  # warms the prefill and the decode paths
    prefill, decode, full = [], [], []
    for _ in range(spec["repeats"]):
        clock = TokenClock()
        start = time.perf_counter()
        generated = lib.generate(inputs, new_tokens, streamer=clock)
        full.append(time.perf_counter() - start)
        # put() #0 is the prompt, #1 the first new token, #N the last
        if len(generated) != new_tokens or len(clock.times) != new_tokens + 1:
            raise RuntimeError(f"{spec['impl']} generated {len(generated)} tokens ({len(clock.times) - 1} streamed), "
                               f"expected {new_tokens}")
        prefill.append(clock.times[1] - start)
        decode.append((new_tokens - 1) / (clock.times[-1] - clock.times[1]))
    return {"prefill_s": prefill, "decode_tok_s": decode, "generate_s": full, "tokens": generated}


def run_timing(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Time one library on one input (``spec["media"]``) in this process; best of ``spec["repeats"]``."""
    lib = LIBRARIES[spec["impl"]](spec)
    start = time.perf_counter()
    lib.load()
    load_s = time.perf_counter() - start
    rss_loaded = status_kib("VmRSS")
    video = spec["media"] == "video"
    text, media = PROMPTS[spec["media"]], lib.media_kwargs(spec["media"])

    inputs = lib.preprocess(text, media)  # warm-up
    preprocess = timed(lambda: lib.preprocess(text, media), spec["repeats"])
    lib.vision(inputs, video)
    vision = timed(lambda: lib.vision(inputs, video), spec["repeats"])
    gen = _time_generate(lib, inputs, spec)
    peak_rss = status_kib("VmHWM")  # before the teacher-forced forward, which keeps every position's logits
    row_read = numpy_read_gb_s(ROW_PROBE_BYTES, spec["threads"], 3)  # the bandwidth right after this decode
    result = {
        "load_s": load_s,
        "preprocess_s": min(preprocess),
        "vision_s": min(vision),
        "prefill_s": min(gen["prefill_s"]),
        "generate_s": min(gen["generate_s"]),
        "decode_tok_s": max(gen["decode_tok_s"]),
        "samples": {"preprocess_s": preprocess, "vision_s": vision, "prefill_s": gen["prefill_s"],
                    "decode_tok_s": gen["decode_tok_s"], "generate_s": gen["generate_s"]},
        "prompt_tokens": int(inputs["input_ids"].shape[-1]),
        "grids": grids(inputs, video),
        "new_tokens": spec["new_tokens"],
        "tokens": gen["tokens"],  # greedy tokens: equal across libraries when the weights load alike
        "rss_loaded_mib": rss_loaded / 1024,
        "peak_rss_mib": peak_rss / 1024,
        "read_gb_s_after_decode": row_read,
        **lib.info(),
    }
    if spec.get("reference"):
        result.update(top1_agreement(lib, inputs, spec["reference"]["continuation"]))
    return result


def top1_agreement(lib: Library, inputs: Dict[str, Any], continuation: List[int]) -> Dict[str, Any]:
    """The fraction of ``continuation`` (float32 greedy tokens) that ``lib`` ranks first when fed
    the prompt and the continuation so far (teacher forcing: one error does not derail the rest)."""
    top1 = lib.teacher_top1(inputs, continuation)
    return {"top1_agreement": sum(a == b for a, b in zip(top1, continuation)) / len(continuation),
            "teacher_steps": len(continuation)}


def run_reference(spec: Dict[str, Any]) -> Dict[str, Any]:
    """This library's float32 prompt ids and greedy continuation of ``spec["teacher_steps"]``
    tokens on ``spec["media"]``: what the other precisions are held to, and llama.cpp's prompt."""
    lib = LIBRARIES["paddlemix"]({**spec, "precision": "float32"})
    lib.load()
    inputs = lib.preprocess(PROMPTS[spec["media"]], lib.media_kwargs(spec["media"]))
    continuation = lib.generate(inputs, spec["teacher_steps"])
    return {"prompt_ids": inputs["input_ids"].numpy()[0].tolist(), "continuation": continuation}


def run_load_generate(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Load ``spec["checkpoint"]`` in ``spec["precision"]`` and greedily generate from a text
    prompt: load time, RSS once loaded, peak RSS, the tokens and the decode rate."""
    lib = LIBRARIES[spec["impl"]](spec)
    start = time.perf_counter()
    lib.load()
    load_s = time.perf_counter() - start
    rss_loaded = status_kib("VmRSS")
    inputs = lib.preprocess(PROMPTS["text"], {})
    gen = _time_generate(lib, inputs, spec)
    return {"load_s": load_s, "rss_loaded_mib": rss_loaded / 1024, "peak_rss_mib": status_kib("VmHWM") / 1024,
            "prefill_s": min(gen["prefill_s"]), "decode_tok_s": max(gen["decode_tok_s"]), "tokens": gen["tokens"],
            "prompt_tokens": int(inputs["input_ids"].shape[-1]), **lib.info()}


def run_vision_memory(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Extra peak RSS of one (first, un-warmed) vision-tower call on a ``spec["image_size"]`` image.

    The peak is reset once the model and pixels are in memory, so the number is what the
    tower's activations add; a fresh process per size keeps the allocators from reusing
    memory cached by an earlier call.
    """
    lib = LIBRARIES[spec["impl"]](spec)
    lib.load()
    inputs = lib.preprocess(PROMPTS["image"], lib.media_kwargs("image"))
    base = reset_peak_rss()
    lib.vision(inputs, video=False)
    patches = sum(t * h * w for t, h, w in grids(inputs, video=False))
    return {"patches": patches, "extra_peak_mib": (status_kib("VmHWM") - base) / 1024}
