"""Preprocessing for Qwen2.5-VL: tokenizer, image/video processor, vision-info helpers, processor."""
from .image_processing import Qwen2_5_VLImageProcessor, smart_resize
from .processor import Qwen2_5_VLProcessor
from .tokenizer import MIXQwen2_5_Tokenizer
from .tokenizer_files import build_tokenizer_files
from .video import smart_nframes
from .vision_info import fetch_image, fetch_video, process_vision_info

__all__ = [
    "Qwen2_5_VLImageProcessor",
    "Qwen2_5_VLProcessor",
    "MIXQwen2_5_Tokenizer",
    "build_tokenizer_files",
    "fetch_image",
    "fetch_video",
    "process_vision_info",
    "smart_nframes",
    "smart_resize",
]
