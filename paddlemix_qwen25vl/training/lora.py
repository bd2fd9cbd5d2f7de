"""LoRA adapters through ``paddlenlp.peft``, and merging them back into a full checkpoint."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from paddlenlp.peft import LoRAConfig, LoRAModel

from ..modeling import Qwen2_5_VLForConditionalGeneration

__all__ = ["add_lora", "merge_lora"]

logger = logging.getLogger(__name__)


def add_lora(
    model: Qwen2_5_VLForConditionalGeneration,
    target_modules: Sequence[str],
    rank: int,
    alpha: int,
    dropout: float,
    lora_path: Optional[str] = None,
) -> LoRAModel:
    """Wrap ``model`` with LoRA adapters on the Linear layers whose names fully match a regex of
    ``target_modules`` (or load the adapters saved at ``lora_path``); only adapters are trainable.

    Not under tensor parallelism: paddlenlp's LoRAModel would replace this library's parallel
    layers (``nn.Linear`` subclasses) with plain ``LoRALinear``, whose forward skips the
    row-parallel all-reduce, and its parallel LoRA layers are fleet's, which have no CPU kernels.
    """
    if model.mp.world_size > 1:
        raise ValueError(
            f"LoRA with tensor parallelism (tensor_parallel_degree={model.mp.world_size}) is not supported: "
            "the adapters would replace the tensor-parallel projections with single-device ones. "
            "Use --tensor_parallel_degree 1 (LoRA fits with --sharding stage2 or stage3), or full "
            "fine-tuning under tensor parallelism."
        )
    if lora_path:
        lora_model = LoRAModel.from_pretrained(model, lora_path)
    else:
        config = LoRAConfig(
            target_modules=list(target_modules), r=rank, lora_alpha=alpha, lora_dropout=dropout, merge_weights=False
        )
        lora_model = LoRAModel(model, config)
    adapted = [name for name, _ in lora_model.named_parameters() if "lora_A" in name]
    if not adapted:
        raise ValueError(f"no Linear layer matches the LoRA targets {list(target_modules)}")
    lora_model.mark_only_lora_as_trainable()
    return lora_model


def merge_lora(base_path: str, lora_path: str, output_path: str, dtype: Optional[str] = None) -> Qwen2_5_VLForConditionalGeneration:
    """Load ``base_path`` + the adapters (and any other trained weights) at ``lora_path``, fold the
    adapters into the weights and save a full checkpoint at ``output_path``; returns the merged model."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_path, dtype=dtype)
    lora_model = LoRAModel.from_pretrained(model, lora_path)
    lora_model.merge()
    no_bias = [name for name, layer in lora_model.model.named_sublayers() if "lora_A" in layer._parameters and layer.bias is None]
    merged = lora_model.restore_original_model()
    # paddlenlp restores every adapted layer as nn.Linear with a new zero bias; o_proj and the
    # decoder MLP have none in this model, so drop them again to keep the checkpoint layout.
    layers = dict(merged.named_sublayers())
    for name in no_bias:
        layers[name].bias = None
    merged.save_pretrained(output_path)
    return merged
