"""Command-line arguments of ``examples/qwen2_5_vl_finetune.py``: PaddleMIX's model, data and
training flags (same names and defaults) plus every paddlenlp ``TrainingArguments`` flag.

Some PaddleMIX flags are parsed by PaddleMIX's script and never used there (they come from
the LLaMA-Factory argument set it copied); they are accepted here so that its command lines
run, and a value other than the default is reported as having no effect
(:data:`NO_EFFECT`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

from paddlenlp.trainer import TrainingArguments

from ..distributed.context import check_tensor_parallel_supported
from ..runtime import has_gpu

__all__ = [
    "ModelArguments",
    "DataArguments",
    "FinetuneTrainingArguments",
    "DEFAULT_LORA_TARGETS",
    "NO_EFFECT",
    "CONV_STYLES",
    "warn_no_effect",
]

logger = logging.getLogger(__name__)

# The decoder's attention and MLP projections (the targets of PaddleMIX's recipes), not the vision tower's.
DEFAULT_LORA_TARGETS = (
    r"model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj,"
    r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj"
)
# PaddleMIX flags that PaddleMIX's own fine-tuning script parses and never reads, with why.
NO_EFFECT = {
    "cache_dir": "checkpoints are found with --model_name_or_path (hub cache: HF_HOME)",
    "resize_vocab": "the vocabulary is the checkpoint's",
    "split_special_tokens": "special tokens are never split",
    "new_special_tokens": "the vocabulary is the checkpoint's",
    "use_cache": "training never uses the KV cache",
    "drop_path_rate": "the Qwen2.5-VL vision tower has no drop path",
    "pad2square": "images keep their aspect ratio (the processor's resizing)",
    "normalize_type": "pixels are normalised with the checkpoint's preprocessor_config.json",
    "max_image_size": "--image_resolution sets the image size (PaddleMIX overwrites max_image_size with it)",
    "group_by_length": "the paddlenlp Trainer has no length-grouped sampler",
    "benchmark": "use benchmarks/ for speed measurements",
}
CONV_STYLES = ("qwen2_5_vl", "qwen2_vl")  # the same chat template for Qwen2-VL and Qwen2.5-VL


def warn_no_effect(*argument_sets: Any) -> None:
    """Log each :data:`NO_EFFECT` flag that was given a value other than its default."""
    for arguments in argument_sets:
        for f in fields(arguments):
            if f.name in NO_EFFECT and getattr(arguments, f.name) != f.default:
                logger.warning(f"--{f.name} {getattr(arguments, f.name)!r} has no effect: {NO_EFFECT[f.name]}")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=None, metadata={"help": "Checkpoint directory or hub id; default: the bundled demo checkpoint"}
    )
    image_resolution: int = field(default=768, metadata={"help": "Longest image side in pixels"})
    video_resolution: int = field(default=256, metadata={"help": "Video frames: at most resolution**2 pixels each"})
    video_fps: float = field(default=2.0, metadata={"help": "Frames sampled per second of video"})
    video_maxlen: int = field(default=128, metadata={"help": "Most frames sampled from one video"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "No effect (PaddleMIX compatibility)"})
    resize_vocab: bool = field(default=False, metadata={"help": "No effect (PaddleMIX compatibility)"})
    split_special_tokens: bool = field(default=False, metadata={"help": "No effect (PaddleMIX compatibility)"})
    new_special_tokens: Optional[str] = field(default=None, metadata={"help": "No effect (PaddleMIX compatibility)"})
    use_cache: bool = field(default=True, metadata={"help": "No effect (PaddleMIX compatibility)"})
    freeze_vit: bool = field(default=False, metadata={"help": "Freeze the vision tower (and its merger unless --tune_mm_mlp)"})
    freeze_llm: bool = field(default=False, metadata={"help": "Freeze the language model (embeddings, decoder, head)"})
    tune_mm_mlp: bool = field(default=False, metadata={"help": "Train the vision merger even when the ViT is frozen"})
    drop_path_rate: float = field(default=0.0, metadata={"help": "No effect (PaddleMIX compatibility)"})
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the decoder weights"})
    lora_path: Optional[str] = field(default=None, metadata={"help": "Continue from saved LoRA adapters"})
    lora_rank: int = field(default=128, metadata={"help": "LoRA rank r"})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input"})
    lora_target_modules: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated regexes (full match) of the Linear layers that get adapters; "
                          "default: the decoder's q/k/v/o/gate/up/down projections"},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa or flash_attention_2"})


@dataclass
class DataArguments:
    meta_path: str = field(default=None, metadata={"help": "Meta JSON: {name: {annotation, repeat_time[, data_root]}}"})
    max_seq_length: int = field(default=8192, metadata={"help": "Longest sample in tokens (longer: cut text only, or drop)"})
    max_image_size: int = field(default=512, metadata={"help": "No effect: --image_resolution sets it (as in PaddleMIX)"})
    pad2square: bool = field(default=False, metadata={"help": "No effect (PaddleMIX compatibility)"})
    conv_style: str = field(default="qwen2_5_vl", metadata={"help": f"Chat template: {' or '.join(CONV_STYLES)}"})
    use_data_resampling: bool = field(
        default=False, metadata={"help": "Draw each dataset in proportion to the square root of its size"}
    )
    normalize_type: str = field(default="imagenet", metadata={"help": "No effect (PaddleMIX compatibility)"})
    data_flatten: bool = field(default=False, metadata={"help": "Pack the samples of a batch into one row"})
    strict: bool = field(default=False, metadata={"help": "Raise on a bad record instead of skipping it"})

    def __post_init__(self) -> None:
        if self.conv_style not in CONV_STYLES:
            raise ValueError(f"--conv_style {self.conv_style!r} is not supported; use one of {', '.join(CONV_STYLES)}")


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """paddlenlp's arguments plus PaddleMIX's three; on a machine without a GPU, sharding,
    half precision and master gradients are switched off with a notice so that the same
    command runs on CPU."""

    group_by_length: bool = field(default=True, metadata={"help": "No effect (PaddleMIX compatibility)"})
    save_safetensors: bool = field(default=True, metadata={"help": "Weights are always written as safetensors"})
    benchmark: bool = field(default=False, metadata={"help": "No effect (PaddleMIX compatibility)"})

    def __post_init__(self) -> None:
        if not has_gpu():
            self._cpu_fallback()
        # Before paddlenlp's set-up, which would otherwise fail deep inside fleet on CPU.
        check_tensor_parallel_supported(max(self.tensor_parallel_degree, 1))  # paddlenlp's "off" is -1
        if self.unified_checkpoint:
            raise ValueError("--unified_checkpoint is not supported: checkpoints are written as safetensors by this library")
        if self.load_best_model_at_end:
            raise ValueError("--load_best_model_at_end is not supported (there is no evaluation set)")
        if not self.save_safetensors:
            logger.warning("--save_safetensors False has no effect: weights are always written as safetensors")
        super().__post_init__()

    def _cpu_fallback(self) -> None:
        """What needs GPUs is switched off, each with a notice naming it."""
        if self.sharding:
            logger.warning(f"NOTICE: no GPU found: --sharding {self.sharding!r} needs GPUs; training on CPU without sharding")
            self.sharding = ""
        if self.sharding_parallel_degree > 1:
            logger.warning(f"NOTICE: no GPU found: --sharding_parallel_degree {self.sharding_parallel_degree} ignored (one CPU process)")
            self.sharding_parallel_degree = -1
        if self.bf16 or self.fp16:
            logger.warning("NOTICE: no GPU found: --bf16/--fp16 have no CPU matmul kernels; training in float32")
            self.bf16 = self.fp16 = False
        if self.amp_master_grad:
            logger.warning("NOTICE: no GPU found: --amp_master_grad ignored (float32 training has float32 gradients)")
            self.amp_master_grad = False

    def to_sanitized_dict(self) -> Dict[str, Any]:
        """The arguments for VisualDL's hyper-parameter record, booleans as text: VisualDL
        stores a bool as an integer field, which its protobuf rejects (paddlenlp passes them
        unchanged and training crashes before the first step)."""
        return {k: str(v) if isinstance(v, bool) else v for k, v in super().to_sanitized_dict().items()}
