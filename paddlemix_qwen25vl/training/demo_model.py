"""The bundled demo model: initialise it, score it on held-out questions, export it small.

    python -m paddlemix_qwen25vl.training.demo_model init --output_dir DIR
    python -m paddlemix_qwen25vl.training.demo_model evaluate --model_path DIR --annotation eval.jsonl
    python -m paddlemix_qwen25vl.training.demo_model export --model_path DIR --output_dir examples/assets/demo_weights

``examples/train_demo_model.sh`` chains them with the synthetic dataset and the fine-tuning
script. The architecture is :func:`paddlemix_qwen25vl.demo.demo_config`; its float16 weights,
dominated by the real 151,936-token vocabulary, are small enough to ship in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Any, Dict, List, Tuple

from tqdm.auto import tqdm

from ..checkpoint_io import tensor_to_numpy, write_safetensors
from ..demo import build_demo_checkpoint, save_random_demo_model
from ..loading import PADDLE_METADATA, SAFE_SINGLE
from ..modeling import Qwen2_5_VLForConditionalGeneration
from ..processing import Qwen2_5_VLProcessor, fetch_image
from .data import read_annotation

__all__ = ["init_checkpoint", "question_inputs", "evaluate", "score", "export_float16"]


def init_checkpoint(output_dir: str, seed: int = 0) -> str:
    """A randomly initialised demo model with the demo tokenizer and processor files."""
    build_demo_checkpoint(output_dir)  # tokenizer, processor and generation config
    save_random_demo_model(output_dir, seed)  # in place of any shipped trained weights
    return output_dir


def _question(record: Dict[str, Any]) -> str:
    return record["messages"][0]["content"].replace("<image>", "")


def question_inputs(processor: Qwen2_5_VLProcessor, record: Dict[str, Any], root: str) -> Dict[str, Any]:
    """The processor's inputs for the single-turn question of a held-out annotation ``record``
    (its image path relative to ``root``)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _question(record)}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = fetch_image({"image": os.path.join(root, record["images"][0])})
    return processor(text=[text], images=[image])


def evaluate(model_path: str, annotation: str, limit: int = 0, **load_options: Any) -> Tuple[float, List[Dict[str, str]]]:
    """Exact-match accuracy of greedy answers to the single-turn ``messages`` records of ``annotation``
    (``load_options``, e.g. ``quant_type``, go to ``from_pretrained``)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, **load_options)
    processor = Qwen2_5_VLProcessor.from_pretrained(model_path)
    return score(model, processor, annotation, limit)


def score(model: Qwen2_5_VLForConditionalGeneration, processor: Qwen2_5_VLProcessor, annotation: str,
          limit: int = 0) -> Tuple[float, List[Dict[str, str]]]:
    """:func:`evaluate` with a loaded ``model`` and ``processor``."""
    records = read_annotation(annotation)[: limit or None]
    root = os.path.dirname(os.path.abspath(annotation))
    results = []
    for record in tqdm(records, desc="Evaluating", unit="question", disable=None):
        ids, _ = model.generate(**question_inputs(processor, record, root), max_new_tokens=8, decode_strategy="greedy_search")
        answer = processor.decode(ids[0].tolist(), skip_special_tokens=True).strip()
        results.append({"question": _question(record), "expected": record["messages"][1]["content"], "answer": answer})
    correct = sum(r["answer"] == r["expected"] for r in results)
    return correct / max(1, len(results)), results


def export_float16(model_path: str, output_dir: str) -> str:
    """Write config.json, generation_config.json and float16 model.safetensors (the loader widens them back)."""
    os.makedirs(output_dir, exist_ok=True)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path)
    params = dict(model.named_parameters())
    layout = {name: (tuple(p.shape), "F16") for name, p in params.items()}
    arrays = (tensor_to_numpy(params[name])[0].astype("float16") for name in layout)
    write_safetensors(os.path.join(output_dir, SAFE_SINGLE), layout, arrays, PADDLE_METADATA)
    for name in ("config.json", "generation_config.json"):
        shutil.copy2(os.path.join(model_path, name), os.path.join(output_dir, name))
    return output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="write a randomly initialised demo checkpoint")
    init.add_argument("--output_dir", required=True)
    init.add_argument("--seed", type=int, default=0)
    scoring = commands.add_parser("evaluate", help="greedy exact-match accuracy on a held-out annotation file")
    scoring.add_argument("--model_path", required=True)
    scoring.add_argument("--annotation", required=True)
    scoring.add_argument("--limit", type=int, default=0, help="score only the first N records (0: all)")
    export = commands.add_parser("export", help="write float16 weights + configs (examples/assets/demo_weights)")
    export.add_argument("--model_path", required=True)
    export.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    if args.command == "init":
        print(init_checkpoint(args.output_dir, args.seed))
    elif args.command == "evaluate":
        accuracy, results = evaluate(args.model_path, args.annotation, args.limit)
        for r in results[:10]:
            print(json.dumps(r))
        print(f"accuracy: {accuracy:.3f} on {len(results)} held-out questions")
    else:
        print(export_float16(args.model_path, args.output_dir))


if __name__ == "__main__":
    main()
