"""A small synthetic visual Q&A dataset: one coloured shape on a canvas, questions about its colour or shape.

    python -m paddlemix_qwen25vl.tools.make_synthetic_dataset --output_dir data/shapes --num_samples 2000

Writes ``images/*.png``, ``train.jsonl`` (messages format), ``eval.jsonl`` (held-out images,
``--num_eval`` of them) and ``meta.json`` for ``--meta_path``. Seeded: the same command gives
the same files. The answers are one word, so greedy generation can be scored by exact match.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

__all__ = ["COLOURS", "SHAPES", "QUESTIONS", "draw_sample", "make_dataset"]

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {"colour": "What colour is the shape?", "shape": "What shape is this?"}
SIDES = (112, 140, 168, 196, 224)  # canvas sides in pixels (multiples of 28: no resampling blur)


def draw_sample(rng: np.random.Generator, colour: str, shape: str) -> Image.Image:
    """A canvas with a light, noisy background and one ``colour`` ``shape`` at a random place and size."""
    width, height = int(rng.choice(SIDES)), int(rng.choice(SIDES))
    background = rng.integers(200, 256, size=3)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    canvas = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    size = int(rng.integers(36, min(width, height) - 8))
    x0, y0 = int(rng.integers(4, width - size - 3)), int(rng.integers(4, height - size - 3))
    box = (x0, y0, x0 + size, y0 + size)
    fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[colour])
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
    return canvas


def _records(rng: np.random.Generator, count: int, image_dir: str, prefix: str) -> List[Dict]:
    records = []
    for number in tqdm(range(count), desc=f"Drawing {prefix} images", unit="image", disable=None):
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        name = f"{prefix}_{number:05d}.png"
        draw_sample(rng, colour, shape).save(os.path.join(image_dir, name))
        kind = str(rng.choice(list(QUESTIONS)))
        records.append({
            "messages": [
                {"role": "user", "content": "<image>" + QUESTIONS[kind]},
                {"role": "assistant", "content": colour if kind == "colour" else shape},
            ],
            "images": [f"images/{name}"],
        })
    return records


def make_dataset(output_dir: str, num_samples: int, num_eval: int = 100, seed: int = 0) -> str:
    """Write the dataset into ``output_dir``; returns the path of its meta file."""
    image_dir = os.path.join(output_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_samples), ("eval", num_eval)):
        with open(os.path.join(output_dir, f"{split}.jsonl"), "w") as f:
            for record in _records(rng, count, image_dir, split):
                f.write(json.dumps(record) + "\n")
    meta_path = os.path.join(output_dir, "meta.json")
    with open(meta_path, "w") as f:
        json.dump({"synthetic_shapes": {"annotation": "train.jsonl", "data_root": ".", "repeat_time": 1}}, f, indent=2)
    return meta_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_samples", type=int, default=2000, help="training records")
    parser.add_argument("--num_eval", type=int, default=100, help="held-out records (eval.jsonl)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_dataset(args.output_dir, args.num_samples, args.num_eval, args.seed))


if __name__ == "__main__":
    main()
