"""Checkpoint conversions: a Hugging Face (torch) checkpoint into Paddle format, and a
PaddleNLP tensor-parallel checkpoint (``model_state.tpXX.pdparams``) into one full file.

The torch conversion streams tensor by tensor, shard by shard (any size, 72B included, one
file or sharded): keys are renamed to the released layout (then ``src_prefix`` ->
``dst_prefix`` if asked), Linear weights transposed to ``[in, out]``, dtypes kept (bfloat16
stays bfloat16). Tokenizer and processor files are copied as they are; ``config.json`` and
``generation_config.json`` get PaddleMIX's edits (``torch_dtype`` -> ``dtype``, no
``transformers_version``) unless ``update_config`` is False.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Tuple

from typing import Optional

import paddle
from tqdm.auto import tqdm

from .checkpoint_io import CheckpointError, SafetensorsFile, to_float32
from .configuration import Qwen2_5_VLConfig
from .loading import (
    PDPARAMS_SINGLE,
    SAFE_INDEX,
    SAFE_SINGLE,
    checkpoint_name,
    file_is_torch_layout,
    is_linear_weight,
    read_checkpoint,
    shard_files,
    tensor_parallel_files,
    write_safetensors,
    PADDLE_METADATA,
)

__all__ = ["convert_hf_to_paddle", "update_config_files", "merge_paddlenlp_tensor_parallel"]

_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def _convert_file(src: str, dest: str, prefixes: Tuple[str, str] = ("", "")) -> List[str]:
    """Convert one safetensors file; returns the (renamed) keys written."""
    reader = SafetensorsFile(src)
    if not file_is_torch_layout(reader):
        raise CheckpointError(f"{src} is already in Paddle layout (metadata {reader.metadata}); nothing to convert")
    names = {key: _renamed(checkpoint_name(key), prefixes) for key in reader.keys()}
    layout: Dict[str, Tuple[Tuple[int, ...], str]] = {}
    transposed = {key: is_linear_weight(checkpoint_name(key)) for key in names}
    for key, name in names.items():
        shape = reader.shape(key)
        layout[name] = (shape[::-1] if transposed[key] else shape, reader.dtype_name(key))

    def arrays():
        for key in names:
            stored = reader.raw(key)
            yield stored.T if transposed[key] else stored

    write_safetensors(dest, layout, arrays(), PADDLE_METADATA)
    reader.close()
    return list(layout)


def _renamed(name: str, prefixes: Tuple[str, str]) -> str:
    """PaddleMIX's ``--src_prefix``/``--dst_prefix``: every occurrence of one replaced by the other."""
    src, dst = prefixes
    return name.replace(src, dst) if src else name


def update_config_files(dest_dir: str) -> None:
    """PaddleMIX's config edits: ``torch_dtype`` becomes ``dtype`` and ``transformers_version`` goes."""
    for file_name in ("config.json", "generation_config.json"):
        path = os.path.join(dest_dir, file_name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            content = json.load(f)
        content = _paddle_config(content)
        with open(path, "w") as f:
            json.dump(content, f, indent=2)


def _paddle_config(content):
    if isinstance(content, dict):
        return {("dtype" if k == "torch_dtype" else k): _paddle_config(v) for k, v in content.items()
                if k != "transformers_version"}
    return content


def convert_hf_to_paddle(
    src_dir: str,
    dest_dir: str,
    overwrite: bool = False,
    src_prefix: str = "",
    dst_prefix: str = "",
    update_config: bool = True,
) -> None:
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
        written = _convert_file(src, os.path.join(dest_dir, name), (src_prefix, dst_prefix))
        weight_map.update({key: name for key in written})
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
    if update_config:
        update_config_files(dest_dir)


def merge_paddlenlp_tensor_parallel(
    model_dir: str, tensor_parallel_degree: int, dest_dir: Optional[str] = None, dtype: Optional[str] = None
) -> str:
    """Merge PaddleNLP's per-rank ``model_state.tpXX.pdparams`` (or ``model.tpXX.safetensors``)
    in ``model_dir`` into ``dest_dir/model_state.pdparams`` (``dest_dir`` defaults to
    ``model_dir``, as PaddleMIX's merge writes there); returns the file written.

    Tensors keep their stored dtype unless ``dtype`` is given; the result holds the full model,
    as PaddleMIX's does. The other files of ``model_dir`` are copied to a new ``dest_dir``.
    """
    from .modeling import Qwen2_5_VLForConditionalGeneration

    groups = tensor_parallel_files(model_dir)
    if len(groups) != tensor_parallel_degree:
        raise CheckpointError(
            f"--tensor_parallel_degree {tensor_parallel_degree}, but {model_dir} holds "
            f"{len(groups)} rank(s) of model_state.tpXX.pdparams / model.tpXX.safetensors files"
        )
    config = Qwen2_5_VLConfig.from_pretrained(model_dir)
    skeleton = Qwen2_5_VLForConditionalGeneration.build(config, "float32")  # shapes only: no memory
    shapes = {name: tuple(p.shape) for name, p in skeleton.named_parameters()}
    ignore = ("lm_head.weight",) if config.tie_word_embeddings else ()
    merged = {}
    for name, array, dtype_name in read_checkpoint(model_dir, shapes, ignore_keys=ignore, prefer_full=False):
        merged[name] = paddle.to_tensor(to_float32(array, dtype_name)).astype(dtype or _DTYPE_NAMES.get(dtype_name, "float32"))
    dest_dir = dest_dir or model_dir
    os.makedirs(dest_dir, exist_ok=True)
    if os.path.abspath(dest_dir) != os.path.abspath(model_dir):
        rank_files = {os.path.basename(f) for files in groups.values() for f in files}
        for entry in sorted(os.listdir(model_dir)):
            path = os.path.join(model_dir, entry)
            if os.path.isfile(path) and entry not in rank_files and ".tp" not in entry:
                shutil.copy2(path, os.path.join(dest_dir, entry))
    target = os.path.join(dest_dir, PDPARAMS_SINGLE)
    paddle.save(merged, target)
    return target
