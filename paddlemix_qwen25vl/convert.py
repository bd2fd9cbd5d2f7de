"""Convert a Hugging Face (torch) Qwen2.5-VL checkpoint directory into Paddle format.

Streams tensor by tensor, shard by shard (any size, 72B included, one file or sharded):
keys are renamed to the released layout, Linear weights transposed to ``[in, out]``, dtypes
kept (bfloat16 stays bfloat16). Tokenizer, processor and config files are copied as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Tuple

from tqdm.auto import tqdm

from .checkpoint_io import CheckpointError, SafetensorsFile
from .loading import (
    SAFE_INDEX,
    SAFE_SINGLE,
    checkpoint_name,
    file_is_torch_layout,
    is_linear_weight,
    shard_files,
    write_safetensors,
    PADDLE_METADATA,
)

__all__ = ["convert_hf_to_paddle"]


def _convert_file(src: str, dest: str) -> List[str]:
    """Convert one safetensors file; returns the (renamed) keys written."""
    reader = SafetensorsFile(src)
    if not file_is_torch_layout(reader):
        raise CheckpointError(f"{src} is already in Paddle layout (metadata {reader.metadata}); nothing to convert")
    names = {key: checkpoint_name(key) for key in reader.keys()}
    layout: Dict[str, Tuple[Tuple[int, ...], str]] = {}
    for key, name in names.items():
        shape = reader.shape(key)
        layout[name] = (shape[::-1] if is_linear_weight(name) else shape, reader.dtype_name(key))

    def arrays():
        for key, name in names.items():
            stored = reader.raw(key)
            yield stored.T if is_linear_weight(name) else stored

    write_safetensors(dest, layout, arrays(), PADDLE_METADATA)
    reader.close()
    return list(layout)


def convert_hf_to_paddle(src_dir: str, dest_dir: str, overwrite: bool = False) -> None:
    """Write the Paddle-format copy of HF checkpoint ``src_dir`` to ``dest_dir``."""
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"source checkpoint directory not found: {src_dir}")
    if os.path.exists(dest_dir) and os.listdir(dest_dir):
        if not overwrite:
            raise FileExistsError(f"destination {dest_dir} exists and is not empty; pass overwrite=True (--overwrite)")
        shutil.rmtree(dest_dir)
    os.makedirs(dest_dir, exist_ok=True)
    sources = shard_files(src_dir)
    if any(not f.endswith(".safetensors") for f in sources):
        raise CheckpointError(f"{src_dir}: only safetensors checkpoints can be converted, found {sources}")
    weight_map = {}
    for src in tqdm(sources, desc="Converting shards", unit="file", disable=None):
        name = os.path.basename(src)
        weight_map.update({key: name for key in _convert_file(src, os.path.join(dest_dir, name))})
    index_path = os.path.join(src_dir, SAFE_INDEX)
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        index["weight_map"] = weight_map
        with open(os.path.join(dest_dir, SAFE_INDEX), "w") as f:
            json.dump(index, f, indent=2)
    weight_files = {os.path.basename(f) for f in sources} | {SAFE_INDEX, SAFE_SINGLE}
    for entry in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, entry)
        if entry not in weight_files and os.path.isfile(path) and not entry.startswith("."):
            shutil.copy2(path, os.path.join(dest_dir, entry))
