"""Command-line arguments of ``examples/qwen2_5_vl_finetune.py``: PaddleMIX's model and data
flags plus every paddlenlp ``TrainingArguments`` flag."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import paddle
from paddlenlp.trainer import TrainingArguments

from ..distributed.context import check_tensor_parallel_supported

__all__ = ["ModelArguments", "DataArguments", "FinetuneTrainingArguments", "DEFAULT_LORA_TARGETS", "has_gpu"]

logger = logging.getLogger(__name__)

# The decoder's attention and MLP projections (PaddleMIX's defaults), not the vision tower's.
DEFAULT_LORA_TARGETS = (
    r"model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj,"
    r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj"
)


def has_gpu() -> bool:
    """True when this paddle build sees a CUDA device."""
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=None, metadata={"help": "Checkpoint directory or hub id; default: the bundled demo checkpoint"}
    )
    freeze_vit: bool = field(default=False, metadata={"help": "Freeze the vision tower (and its merger unless --tune_mm_mlp)"})
    freeze_llm: bool = field(default=False, metadata={"help": "Freeze the language model (embeddings, decoder, head)"})
    tune_mm_mlp: bool = field(default=False, metadata={"help": "Train the vision merger even when the ViT is frozen"})
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the decoder weights"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input"})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS,
        metadata={"help": "Comma-separated regexes (full match) of the Linear layers that get adapters"},
    )
    lora_path: Optional[str] = field(default=None, metadata={"help": "Continue from saved LoRA adapters"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa or flash_attention_2"})


@dataclass
class DataArguments:
    meta_path: str = field(default=None, metadata={"help": "Meta JSON: {name: {annotation, data_root, repeat_time}}"})
    max_seq_length: int = field(default=8192, metadata={"help": "Longest sample in tokens (longer: cut text only, or drop)"})
    image_resolution: int = field(default=512, metadata={"help": "Longest image side in pixels (video frames: resolution**2 pixels)"})
    data_flatten: bool = field(default=False, metadata={"help": "Pack the samples of a batch into one row"})
    strict: bool = field(default=False, metadata={"help": "Raise on a bad record instead of skipping it"})


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """paddlenlp's arguments; on a machine without a GPU, sharding and half precision are
    switched off with a notice so that the same command runs on CPU."""

    def __post_init__(self) -> None:
        if not has_gpu():
            if self.sharding:
                logger.warning(f"NOTICE: no GPU found: --sharding {self.sharding!r} needs GPUs; training on CPU without sharding")
                self.sharding = ""
            if self.bf16 or self.fp16:
                logger.warning("NOTICE: no GPU found: --bf16/--fp16 have no CPU matmul kernels; training in float32")
                self.bf16 = self.fp16 = False
        # Before paddlenlp's set-up, which would otherwise fail deep inside fleet on CPU.
        check_tensor_parallel_supported(max(self.tensor_parallel_degree, 1))  # paddlenlp's "off" is -1
        if self.unified_checkpoint:
            raise ValueError("--unified_checkpoint is not supported: checkpoints are written as safetensors by this library")
        if self.load_best_model_at_end:
            raise ValueError("--load_best_model_at_end is not supported (there is no evaluation set)")
        super().__post_init__()
