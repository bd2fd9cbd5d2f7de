"""paddlemix_qwen25vl: Qwen2.5-VL (3B / 7B / 72B) for PaddlePaddle, equal to the reference implementation."""

from . import cpu as _cpu  # noqa: F401  first: it reads OMP_NUM_THREADS before Paddle's import sets it
from .configuration import Qwen2_5_VLConfig, Qwen2_5_VLVisionConfig, config_preset
from .loading import CheckpointError, resolve_model_path
from .modeling import Qwen2_5_VLCausalLMOutputWithPast, Qwen2_5_VLForConditionalGeneration
from .processing import (
    MIXQwen2_5_Tokenizer,
    Qwen2_5_VLImageProcessor,
    Qwen2_5_VLProcessor,
    build_tokenizer_files,
    fetch_image,
    fetch_video,
    process_vision_info,
    smart_nframes,
    smart_resize,
)
from .runtime import prepare_cpu, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "Qwen2_5_VLConfig",
    "Qwen2_5_VLVisionConfig",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen2_5_VLCausalLMOutputWithPast",
    "CheckpointError",
    "config_preset",
    "resolve_model_path",
    "prepare_cpu",
    "set_num_threads",
    "MIXQwen2_5_Tokenizer",
    "Qwen2_5_VLImageProcessor",
    "Qwen2_5_VLProcessor",
    "build_tokenizer_files",
    "fetch_image",
    "fetch_video",
    "process_vision_info",
    "smart_nframes",
    "smart_resize",
]
