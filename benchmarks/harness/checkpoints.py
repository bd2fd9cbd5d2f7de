"""Benchmark configs and their random checkpoints (real Qwen2.5-VL 3B shapes, written by
transformers with the processor files), cached under ``--cache_dir``."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

from .common import REPO, run_worker

DEFAULT_CACHE = Path.home() / ".cache" / "paddlemix_qwen25vl" / "bench"
BASE_CONFIG = REPO / "configs" / "qwen2_5_vl_3b" / "config.json"
BASE_CONFIG_7B = REPO / "configs" / "qwen2_5_vl_7b" / "config.json"
CHECKPOINT_VERSION = "v1"
STREAMED = ("full", "full7b")  # too large for save_pretrained's second copy: written shard by shard
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}  # the dtypes a benchmark checkpoint is written in


def bench_config(name: str) -> Dict[str, Any]:
    """The transformers config dict of a benchmark model: ``tiny``, ``quick``, ``full`` (3B) or ``full7b``."""
    config = json.loads((BASE_CONFIG_7B if name == "full7b" else BASE_CONFIG).read_text())
    config["torch_dtype"] = "float32"
    if name == "quick":
        config["num_hidden_layers"] = 4
        config["vision_config"].update(depth=8, fullatt_block_indexes=[3, 7])
    elif name == "tiny":
        config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        config["vision_config"].update(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                                       out_hidden_size=64, fullatt_block_indexes=[1])
    elif name not in STREAMED:
        raise ValueError(f"unknown config {name!r}; use tiny, quick, full or full7b")
    return config


def checkpoint_dir(cache_dir: Path, name: str, dtype: str = "float32") -> Path:
    """Where the checkpoint of config ``name`` written in ``dtype`` is cached."""
    return cache_dir / (f"{name}-{CHECKPOINT_VERSION}" if dtype == "float32" else f"{name}-{dtype}-{CHECKPOINT_VERSION}")


def _init_tensor(shape: Sequence[int], kind: str, generator: Any, dtype: str = "float32") -> Any:
    """One parameter as transformers initialises Qwen2.5-VL (norms 1, biases 0, else N(0, 0.02)),
    drawn in float32 and stored in ``dtype`` (a bfloat16 checkpoint holds the rounded values)."""
    import torch

    if kind == "norm":
        return torch.ones(shape, dtype=getattr(torch, dtype))
    if kind == "bias":
        return torch.zeros(shape, dtype=getattr(torch, dtype))
    return torch.empty(shape).normal_(0.0, 0.02, generator=generator).to(getattr(torch, dtype))


def _shard_groups(shapes: Dict[str, Sequence[int]], shard_bytes: int, dtype_bytes: int = 4) -> List[List[str]]:
    """Parameter names in order, cut into groups of at most ``shard_bytes`` bytes."""
    groups: List[List[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = dtype_bytes * math.prod(shape)
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def _save_streamed(config: Any, path: Path, shard_bytes: int = 2 << 30, dtype: str = "float32") -> None:
    """Write random weights in ``dtype`` shard by shard, in the keys and files save_pretrained writes.

    The model is built on the meta device, so only one shard (not the whole model, let alone
    a second copy while saving) is ever in memory, plus one tensor's float32 draw.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    norms = {f"{m}.weight" for m, module in model.named_modules() if "RMSNorm" in type(module).__name__}
    shapes = {n: p.shape for n, p in model.named_parameters()
              if not (config.tie_word_embeddings and n == "lm_head.weight")}
    groups = _shard_groups(shapes, shard_bytes, DTYPE_BYTES[dtype])
    generator = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in group:
            kind = "norm" if name in norms else "bias" if name.endswith(".bias") else "weight"
            tensors[name] = _init_tensor(shapes[name], kind, generator, dtype)
            weight_map[name] = file
            total += DTYPE_BYTES[dtype] * tensors[name].numel()
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.torch_dtype = dtype
    config.save_pretrained(str(path))
    GenerationConfig.from_model_config(config).save_pretrained(str(path))


def _write_processor_files(path: Path) -> None:
    """Tokenizer, image processor and chat template files both libraries' processors load."""
    from paddlemix_qwen25vl import Qwen2_5_VLImageProcessor, build_tokenizer_files
    from paddlemix_qwen25vl.processing.chat_template import QWEN2_5_VL_CHAT_TEMPLATE

    build_tokenizer_files(str(path))
    Qwen2_5_VLImageProcessor().save_pretrained(str(path))
    # transformers' AutoProcessor reads the template from chat_template.json and needs the
    # processor class named in preprocessor_config.json.
    (path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_5_VL_CHAT_TEMPLATE}))
    pre = json.loads((path / "preprocessor_config.json").read_text())
    pre.update(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2_5_VLProcessor")
    (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))


def build_checkpoint(name: str, path: Path, streamed: bool, dtype: str = "float32") -> Path:
    """Build the random checkpoint ``name`` at ``path`` with transformers, plus processor files.

    The result loads with this library's and transformers' ``from_pretrained`` and processor
    classes. Written to a temporary directory first so that an interrupted build is redone.
    A ``dtype`` other than float32 needs ``streamed`` (save_pretrained would cast a whole copy).
    """
    import shutil

    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = Qwen2_5_VLConfig(**bench_config(name))
    if streamed:
        _save_streamed(config, tmp, dtype=dtype)
    elif dtype != "float32":
        raise ValueError(f"a {dtype} checkpoint is written streamed only (config {name!r})")
    else:
        torch.manual_seed(0)
        Qwen2_5_VLForConditionalGeneration(config).float().save_pretrained(str(tmp))
    _write_processor_files(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def ensure_checkpoint(name: str, cache_dir: Path, dtype: str = "float32") -> Path:
    """The cached checkpoint of config ``name`` in ``dtype``, built (in a worker process) on first use."""
    path = checkpoint_dir(cache_dir, name, dtype)
    if not (path / "config.json").exists() or not (path / "chat_template.json").exists():
        print(f"Building the {name} {dtype} checkpoint at {path} (once)", flush=True)
        result = run_worker({"task": "build", "config": name, "checkpoint": str(path),
                             "streamed": name in STREAMED or dtype != "float32", "dtype": dtype})
        if "error" in result:
            raise RuntimeError(f"building the {name} checkpoint failed: {result['error']}")
    return path
