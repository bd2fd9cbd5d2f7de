"""The tiny Paddle model of the fine-tuning tests, saved with the demo tokenizer and processor files."""

import os
import shutil

import paddle

from paddlemix_qwen25vl import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from paddlemix_qwen25vl.demo import demo_checkpoint, demo_config

PROCESSOR_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "preprocessor_config.json")


def tiny_config() -> Qwen2_5_VLConfig:
    """The demo architecture shrunk further: 2 vision blocks, 2 decoder layers of width 32."""
    config = demo_config()
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 32, 64
    config.rope_scaling = {"type": "mrope", "mrope_section": [2, 3, 3]}
    vision = config.vision_config
    vision.depth, vision.hidden_size, vision.intermediate_size, vision.out_hidden_size = 2, 32, 64, 32
    vision.fullatt_block_indexes = [1]
    return config


def copy_processor_files(directory) -> None:
    """Copy the demo checkpoint's tokenizer and processor files into ``directory``."""
    for name in PROCESSOR_FILES:
        shutil.copy2(os.path.join(demo_checkpoint(), name), os.path.join(directory, name))


def save_tiny_checkpoint(directory: str) -> str:
    """A random (seed 0) ``tiny_config`` model with the demo tokenizer, saved to ``directory``."""
    copy_processor_files(directory)
    paddle.seed(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config())
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(directory)
    return directory
