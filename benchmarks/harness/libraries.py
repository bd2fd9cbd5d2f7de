"""One adapter per measured library (this library, transformers, PaddleFormers): load,
preprocess, run the vision tower, generate greedily, behind one interface.

Each adapter imports its library inside ``load``: a worker imports only the one it measures.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .workload import media_kwargs

PAD_TOKEN_ID = 151643  # <|endoftext|>
# this library's weight precisions (PaddleNLP's quant_type names) and transformers' dtypes
PM_PRECISIONS = ("float32", "bfloat16", "weight_only_int8", "weight_only_int4")
HF_PRECISIONS = ("float32", "bfloat16")


def precision_kwargs(precision: str) -> Dict[str, str]:
    """This library's from_pretrained arguments for one weight precision."""
    if precision not in PM_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PM_PRECISIONS)}")
    return {"dtype": precision} if precision in ("float32", "bfloat16") else {"quant_type": precision}


def vision_inputs(inputs: Dict[str, Any], video: bool) -> Tuple[Any, Any]:
    """(pixels [patches, 1176], grid_thw [items, 3]) of the processed image or video."""
    if video:
        return inputs["pixel_values_videos"], inputs["video_grid_thw"]
    return inputs["pixel_values"], inputs["image_grid_thw"]


def grids(inputs: Dict[str, Any], video: bool) -> List[List[int]]:
    """grid_thw as lists of ints, whatever the tensor type."""
    grid = vision_inputs(inputs, video)[1]
    return [[int(x) for x in row] for row in (grid.tolist() if hasattr(grid, "tolist") else grid)]


class Library:
    """The calls a timing run makes; ``spec`` is the worker's task (checkpoint, threads, attn, sizes)."""

    def __init__(self, spec: Dict[str, Any]):
        self.spec = spec

    def media_kwargs(self, media: str) -> Dict[str, Any]:
        """Processor keyword arguments for the spec's image or video."""
        return media_kwargs(self.spec, media)

    def info(self) -> Dict[str, Any]:
        """What the row should record about how the library ran (none by default)."""
        return {}

    def teacher_top1(self, inputs: Dict[str, Any], continuation: List[int]) -> List[int]:
        """Teacher forcing: the most likely next token at each of the ``len(continuation)``
        positions of one forward over the prompt followed by ``continuation[:-1]``."""
        raise NotImplementedError


class PaddleMix(Library):
    """This library with ``spec["attn"]`` (flash_attention_2 on CPU: the operator of external_ops/)
    and the weights in ``spec["precision"]`` (PM_PRECISIONS; float32 by default)."""

    def load(self) -> None:
        import paddle

        from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, set_num_threads

        set_num_threads(self.spec["threads"])
        self.paddle = paddle
        attn = self.spec.get("attn", "sdpa")
        precision = self.spec.get("precision", "float32")
        from paddlemix_qwen25vl.ops import build_ops, has_flash_attn_op
        from paddlemix_qwen25vl.ops.weight_only import weight_only_ops_available

        if (attn == "flash_attention_2" and not has_flash_attn_op()) or (
                precision != "float32" and not weight_only_ops_available()):
            build_ops()  # compiled once into the user cache, then loaded
        self.kernels = weight_only_ops_available()
        precision = precision_kwargs(precision)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(self.spec["checkpoint"], attn_implementation=attn,
                                                                        **precision)
        self.model.eval()
        self.processor = Qwen2_5_VLProcessor.from_pretrained(self.spec["checkpoint"])

    def preprocess(self, text: str, media: Dict[str, Any]) -> Dict[str, Any]:
        return self.processor(text=[text], return_tensors="pd", **media)

    def vision(self, inputs: Dict[str, Any], video: bool) -> None:
        pixels, grid = vision_inputs(inputs, video)
        with self.paddle.no_grad():  # a context, not a global switch: this also runs inside the tests' process
            self.model.visual(pixels, grid_thw=grid).numpy()

    def generate(self, inputs: Dict[str, Any], new_tokens: int, streamer: Any = None) -> List[int]:
        tokens, _ = self.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                        decode_strategy="greedy_search", streamer=streamer)
        return tokens.numpy()[0].tolist()

    def info(self) -> Dict[str, Any]:
        """Whether the compiled weight-only kernels ran (else ops/weight_only.py's pure-Paddle fallback)."""
        return {"weight_only_kernels": self.kernels}

    def teacher_logits(self, inputs: Dict[str, Any], continuation: List[int]) -> Any:
        """The float32 logits ``[len(continuation), V]`` (numpy) of the teacher-forced forward."""
        paddle = self.paddle
        prompt = inputs["input_ids"]
        ids = paddle.concat([prompt, paddle.to_tensor([continuation[:-1]], dtype=prompt.dtype)], axis=1)
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        with paddle.no_grad():
            logits = self.model(input_ids=ids, attention_mask=paddle.ones_like(ids), use_cache=False,
                                logits_to_keep=len(continuation), **rest).logits  # [1, len(continuation), V]
        return logits[0].astype("float32").numpy()

    def teacher_top1(self, inputs: Dict[str, Any], continuation: List[int]) -> List[int]:
        return self.teacher_logits(inputs, continuation).argmax(axis=-1).tolist()


class PaddleFormers(PaddleMix):
    """PaddleFormers 1.2.0, float32, in its own venv (only paddle, numpy and Pillow there)."""

    def media_kwargs(self, media: str) -> Dict[str, Any]:
        kwargs = super().media_kwargs(media)
        if "fps" in kwargs:  # its (transformers 5) processor validates fps as one number
            kwargs["fps"] = kwargs["fps"][0]
        return kwargs

    def info(self) -> Dict[str, Any]:
        return {}  # this library's kernels play no part there

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


class Transformers(Library):
    """transformers 4.51.3 on torch CPU with ``spec["attn"]`` (sdpa or eager), in
    ``spec["precision"]`` (HF_PRECISIONS: torch's own float32 or bfloat16 kernels)."""

    def load(self) -> None:
        import torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        torch.set_num_threads(self.spec["threads"])
        torch.set_grad_enabled(False)
        self.torch = torch
        dtype = self.spec.get("precision", "float32")
        if dtype not in HF_PRECISIONS:
            raise ValueError(f"transformers runs in {' or '.join(HF_PRECISIONS)}, not {dtype!r}")
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            self.spec["checkpoint"], torch_dtype=getattr(torch, dtype), attn_implementation=self.spec["attn"]
        ).eval()
        self.processor = AutoProcessor.from_pretrained(self.spec["checkpoint"])

    def preprocess(self, text: str, media: Dict[str, Any]) -> Dict[str, Any]:
        return self.processor(text=[text], return_tensors="pt", **media)

    def vision(self, inputs: Dict[str, Any], video: bool) -> None:
        pixels, grid = vision_inputs(inputs, video)
        self.model.visual(pixels, grid_thw=grid)

    def generate(self, inputs: Dict[str, Any], new_tokens: int, streamer: Any = None) -> List[int]:
        out = self.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=PAD_TOKEN_ID, streamer=streamer)
        return out[0, inputs["input_ids"].shape[-1]:].tolist()

    def teacher_top1(self, inputs: Dict[str, Any], continuation: List[int]) -> List[int]:
        torch = self.torch
        ids = torch.cat([inputs["input_ids"], torch.tensor([continuation[:-1]], dtype=inputs["input_ids"].dtype)], dim=1)
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **rest).logits
        return logits[0, -len(continuation):].argmax(-1).tolist()  # 4.51.3's forward has no logits_to_keep


LIBRARIES = {"paddlemix": PaddleMix, "transformers": Transformers, "paddleformers": PaddleFormers}
