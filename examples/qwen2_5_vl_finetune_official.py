"""PaddleMIX's "official" fine-tuning entry point: data named by registered dataset, not a meta file.

    python examples/qwen2_5_vl_finetune_official.py --do_train --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct \
        --output_dir work_dirs/official --dataset_use chartqa_train_18k%50,ai2d_train_12k \
        --max_pixels 50176 --min_pixels 784 --data_flatten True --freeze_vit True

The flags of ``qwen2_5_vl_finetune.py`` plus PaddleMIX's ``--dataset_use`` (registered names,
``name%N`` keeps a random N% of a dataset: :mod:`paddlemix_qwen25vl.training.registry`),
``--min_pixels`` / ``--max_pixels`` (the per-image pixel budget; default the checkpoint's) and
``--data_flatten`` (packing). ``--meta_path`` is accepted and, as in PaddleMIX, not read. The
training is ``qwen2_5_vl_finetune.py``'s, on the same data pipeline: text-only records and
unpacked batches train here (both crash in PaddleMIX's official path), and
``--image_resolution`` (ignored there) caps the longer image side as it does everywhere.
The recipe is ``shell/baseline_3b_bs32_1e8_official.sh``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qwen2_5_vl_finetune import parse_arguments, run  # noqa: E402

from paddlemix_qwen25vl.training.arguments import DataArguments  # noqa: E402
from paddlemix_qwen25vl.training.registry import dataset_specs  # noqa: E402

logger = logging.getLogger("qwen2_5_vl_finetune_official")


@dataclass
class OfficialDataArguments(DataArguments):
    """PaddleMIX's official-path data flags (its defaults: ``max_image_size`` 768, ``data_flatten`` None)."""

    max_image_size: int = field(default=768, metadata={"help": "No effect: --image_resolution sets it (as in PaddleMIX)"})
    dataset_use: str = field(default="", metadata={"help": "Registered datasets, comma-separated; name%N keeps a random N%"})
    max_pixels: Optional[int] = field(default=None, metadata={"help": "Most pixels per image (default: the checkpoint's)"})
    min_pixels: Optional[int] = field(default=None, metadata={"help": "Fewest pixels per image (default: the checkpoint's)"})
    data_flatten: Optional[bool] = field(default=None, metadata={"help": "Pack the samples of a batch into one row"})


def main(argv=None) -> None:
    """Parse the arguments (a list, sys.argv, or one JSON file) and train on ``--dataset_use``."""
    model_args, data_args, training_args = parse_arguments(argv, OfficialDataArguments)
    specs = dataset_specs(data_args.dataset_use)
    if data_args.meta_path is not None:
        logger.warning(f"--meta_path {data_args.meta_path!r} has no effect: this script reads --dataset_use (as PaddleMIX's)")
    run(model_args, data_args, training_args, specs, min_pixels=data_args.min_pixels, max_pixels=data_args.max_pixels)


if __name__ == "__main__":
    main()
