"""Shared helpers of the fine-tuning tests: a tiny model with the real tokenizer, and small datasets."""

import json
import os
import shutil
import zlib

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from paddlemix_qwen25vl.demo import DEMO_VIDEO, demo_checkpoint
from paddlemix_qwen25vl.demo import demo_config

PROCESSOR_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "preprocessor_config.json")


def tiny_config():
    """The demo architecture shrunk further: 2 vision blocks, 2 decoder layers of width 32."""
    config = demo_config()
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 32, 64
    config.rope_scaling = {"type": "mrope", "mrope_section": [2, 3, 3]}
    vision = config.vision_config
    vision.depth, vision.hidden_size, vision.intermediate_size, vision.out_hidden_size = 2, 32, 64, 32
    vision.fullatt_block_indexes = [1]
    return config


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny model with the demo tokenizer and processor files."""
    path = str(tmp_path_factory.mktemp("tiny_ckpt"))
    for name in PROCESSOR_FILES:
        shutil.copy2(os.path.join(demo_checkpoint(), name), os.path.join(path, name))
    paddle.seed(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config())
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def processor(tiny_checkpoint):
    return Qwen2_5_VLProcessor.from_pretrained(tiny_checkpoint)


def save_image(path, colour=(200, 30, 30), size=(56, 84)):
    """An RGB image of ``size`` (width, height) with a little texture."""
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))  # stable across processes
    array = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


def write_dataset(root, records, name="data", jsonl=True, **meta_fields):
    """Annotation file + meta file under ``root``; returns the meta path."""
    os.makedirs(root, exist_ok=True)
    annotation = os.path.join(root, f"{name}.jsonl" if jsonl else f"{name}.json")
    with open(annotation, "w") as f:
        if jsonl:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        else:
            json.dump(records, f)
    meta_path = os.path.join(root, f"{name}_meta.json")
    with open(meta_path, "w") as f:
        json.dump({name: {"annotation": os.path.basename(annotation), **meta_fields}}, f)
    return meta_path


def qa_records(root, count=8):
    """``count`` single-image records whose answer is the image's colour, plus a text-only one."""
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    records = []
    for i in range(count):
        name = list(colours)[i % 2]
        save_image(os.path.join(root, f"img{i}.png"), colours[name])
        records.append({"messages": [{"role": "user", "content": "<image>What colour is it?"},
                                     {"role": "assistant", "content": name}], "images": [f"img{i}.png"]})
    records.append({"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]})
    return records


__all__ = ["tiny_config", "tiny_checkpoint", "processor", "save_image", "write_dataset", "qa_records", "DEMO_VIDEO"]
