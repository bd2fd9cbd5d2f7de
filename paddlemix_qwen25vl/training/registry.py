"""PaddleMIX's "official" data registry: ``--dataset_use name[%N],...`` -> datasets.

``examples/qwen2_5_vl_finetune_official.py`` names its data by registered dataset (PaddleMIX's
``paddlemix/models/qwen2_5_vl/dataset.py`` ``data_dict``: six annotation files under
``playground/opensource_json/``, media paths relative to the working directory) instead of a
``--meta_path`` file. A ``%N`` suffix keeps a random N% of that dataset's records
(``int(n * N / 100)`` of them, drawn once; N >= 100 keeps them all, as there). As an addition,
a name that is not registered may be the path of an annotation file (JSON or JSON lines).
The datasets become :class:`~paddlemix_qwen25vl.training.data.DatasetSpec` entries of the one
data pipeline (:class:`~paddlemix_qwen25vl.training.data.SFTDataset`).
"""

from __future__ import annotations

import os
import re
from typing import Dict, List

from .data import DatasetSpec

__all__ = ["DATASETS", "dataset_specs"]

# PaddleMIX's data_dict (name -> annotation file; its data_path is "": the working directory).
DATASETS: Dict[str, str] = {
    "dvqa_train_200k": "playground/opensource_json/dvqa_train_200k.json",
    "chartqa_train_18k": "playground/opensource_json/chartqa_train_18k.json",
    "ai2d_train_12k": "playground/opensource_json/ai2d_train_12k.json",
    "docvqa_train_10k": "playground/opensource_json/docvqa_train_10k.json",
    "geoqa": "playground/opensource_json/geoqa+.json",
    "synthdog_en": "playground/opensource_json/synthdog_en.json",
}
_RATE = re.compile(r"%(\d+)$")


def dataset_specs(dataset_use: str) -> List[DatasetSpec]:
    """The datasets of a ``--dataset_use`` value (comma-separated ``name`` or ``name%N``)."""
    names = [name.strip() for name in dataset_use.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--dataset_use is empty: name one or more of {', '.join(DATASETS)} (or annotation files)")
    specs = []
    for entry in names:
        match = _RATE.search(entry)
        name = _RATE.sub("", entry)
        annotation = DATASETS.get(name, name)
        if name not in DATASETS and not os.path.isfile(annotation):
            raise ValueError(f"--dataset_use: unknown dataset {name!r}: registered are {', '.join(DATASETS)}; "
                             "anything else must be an annotation file")
        if not os.path.isfile(annotation):
            raise FileNotFoundError(f"--dataset_use {name}: annotation {annotation!r} not found in the working "
                                    f"directory {os.getcwd()!r}")
        annotation = os.path.abspath(annotation)
        specs.append(DatasetSpec(name, annotation, data_root=os.path.dirname(annotation),
                                 sampling_rate=int(match.group(1)) / 100 if match else 1.0))
    return specs
