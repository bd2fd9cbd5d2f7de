"""Images and SFT datasets (annotation + meta files) written for the fine-tuning tests."""

import json
import os
import zlib

import numpy as np
from PIL import Image


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
