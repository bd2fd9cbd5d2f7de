"""A small synthetic visual Q&A dataset: one coloured shape on a canvas, questions about its colour and shape.

    python -m paddlemix_qwen25vl.tools.make_synthetic_dataset --output_dir data/shapes --num_samples 2000

Writes ``images/*.png``, ``train.jsonl`` (messages format, both questions per image as two
turns), ``eval.jsonl`` (``--num_eval`` held-out images, one question each) and ``meta.json`` for
``--meta_path``. Seeded: the same command gives the same files. The answers are one word, so
greedy generation can be scored by exact match.
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
SIDES = (168, 196, 224)  # square canvas sides in pixels (multiples of 28: no resampling blur)
BOX_FRACTION = (0.6, 0.7)  # the shape's bounding box, as a fraction of the canvas side


def draw_sample(rng: np.random.Generator, colour: str, shape: str) -> Image.Image:
    """A square canvas with a light, noisy background and one ``colour`` ``shape`` at a random place.

    The shape's box is 0.6-0.7 of the canvas side, so each shape covers its own share of the
    canvas (square 0.36-0.49, circle 0.28-0.38, triangle 0.18-0.25) besides its own outline:
    a model this small learns it in minutes on a CPU."""
    side = int(rng.choice(SIDES))
    background = rng.integers(200, 256, size=3)
    noise = rng.integers(-12, 13, size=(side, side, 3))
    canvas = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    size = int(side * rng.uniform(*BOX_FRACTION))
    x0, y0 = int(rng.integers(0, side - size + 1)), int(rng.integers(0, side - size + 1))
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


def _records(rng: np.random.Generator, count: int, image_dir: str, prefix: str, both_questions: bool) -> List[Dict]:
    """One record per image: both questions in random order as two turns (training, so every
    image teaches colour and shape), or one random question (held-out, scored single-turn)."""
    records = []
    for number in tqdm(range(count), desc=f"Drawing {prefix} images", unit="image", disable=None):
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        name = f"{prefix}_{number:05d}.png"
        draw_sample(rng, colour, shape).save(os.path.join(image_dir, name))
        answers = {"colour": colour, "shape": shape}
        kinds = [str(k) for k in rng.permutation(list(QUESTIONS))] if both_questions else [str(rng.choice(list(QUESTIONS)))]
        messages = []
        for turn, kind in enumerate(kinds):
            messages.append({"role": "user", "content": ("<image>" if turn == 0 else "") + QUESTIONS[kind]})
            messages.append({"role": "assistant", "content": answers[kind]})
        records.append({"messages": messages, "images": [f"images/{name}"]})
    return records


def make_dataset(output_dir: str, num_samples: int, num_eval: int = 100, seed: int = 0) -> str:
    """Write the dataset into ``output_dir``; returns the path of its meta file."""
    image_dir = os.path.join(output_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_samples), ("eval", num_eval)):
        with open(os.path.join(output_dir, f"{split}.jsonl"), "w") as f:
            for record in _records(rng, count, image_dir, split, both_questions=split == "train"):
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
