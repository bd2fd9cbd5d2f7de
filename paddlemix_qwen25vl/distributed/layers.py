"""Parallel-aware building blocks: the decoder is built from these whether mp is 1 or N.

At ``mp.world_size == 1`` each block is exactly its ``paddle.nn`` base class (same shapes,
same parameter names, no collectives), so single-device loading, saving, LoRA wrapping
(``isinstance(layer, nn.Linear)``) and every test see the plain model.

Each block declares ``tp_split_axes``: which axis of each of its parameters (in Paddle
layout, Linear weights ``[in, out]``) is split across ranks. :func:`split_axes` collects
them for a whole model; checkpoint loading, saving and merging read the split from there
and from nowhere else.

Dimensions:
    ...: any leading axes ([B, L] in the decoder)     mp: tensor-parallel degree
    in, out: a Linear's input / output features (weights are ``[in, out]``)
    V: vocabulary size     C: hidden size
"""

from __future__ import annotations

from typing import Dict, List

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import _C_ops

from ..runtime import is_cuda_build
from .context import SINGLE, ParallelContext, copy_to_ranks, gather_last_axis, reduce_from_ranks

__all__ = [
    "ColumnParallelLinear",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "TiedLMHead",
    "split_axes",
]


_CPU_ONLY_PADDLE = not is_cuda_build()  # asked once: linear() runs between every decode GEMV


def linear(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None) -> paddle.Tensor:
    """``F.linear``. On a CPU-only Paddle in dygraph it calls the kernel F.linear ends up in
    directly: F.linear first reads a GPU-only flag (``paddle.get_flags``), a cost that shows in
    dispatch-bound decode steps (benchmarks/README.md, "Why the code is the way it is")."""
    if _CPU_ONLY_PADDLE and paddle.in_dynamic_mode():
        return _C_ops.linear(x, weight, bias)
    return F.linear(x, weight, bias)


def mark_split_parameters(layer: nn.Layer) -> None:
    """Flag ``layer``'s split parameters as rank-local, as fleet's parallel layers do: the Trainer's
    ``TensorParallel`` wrapper broadcasts every other parameter from mp rank 0 (sync_params_buffers)
    and ``HybridParallelClipGrad`` sums only these gradient norms over the ranks."""
    if layer.mp.world_size == 1:
        return
    for attr, axis in layer.tp_split_axes.items():
        param = getattr(layer, attr, None)
        if param is not None:
            param.is_distributed = True
            param.split_axis = axis


class ColumnParallelLinear(nn.Linear):
    """``y = x W + b`` with the output features split: weight ``[in, out/mp]``, bias ``[out/mp]``.

    The output stays split (this rank's heads or MLP channels) unless ``gather_output``,
    which concatenates the ranks' slices (the vocabulary-parallel lm_head).
    """

    tp_split_axes = {"weight": 1, "bias": 0}

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, mp: ParallelContext = SINGLE, gather_output: bool = False
    ) -> None:
        super().__init__(in_features, mp.shard(out_features, "output features"), bias_attr=None if bias else False)
        self.mp = mp
        self.gather_output = gather_output
        mark_split_parameters(self)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = linear(copy_to_ranks(x, self.mp), self.weight, self.bias)
        return gather_last_axis(y, self.mp) if self.gather_output else y


class RowParallelLinear(nn.Linear):
    """``y = x W + b`` with the input features split: weight ``[in/mp, out]``; ``x`` is this rank's slice.

    The partial products are summed over ranks; the (unsplit) bias is added once, after the sum.
    """

    tp_split_axes = {"weight": 0}

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mp: ParallelContext = SINGLE) -> None:
        super().__init__(mp.shard(in_features, "input features"), out_features, bias_attr=None if bias else False)
        self.mp = mp
        mark_split_parameters(self)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.mp.world_size == 1:
            return linear(x, self.weight, self.bias)
        y = reduce_from_ranks(linear(x, self.weight, None), self.mp)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Embedding):
    """Token embedding with the vocabulary split: this rank holds rows ``[vocab_start, vocab_start + vocab/mp)``.

    Ids outside this rank's rows look up zeros; the sum over ranks is the full lookup (exact:
    every id is non-zero on exactly one rank).
    """

    tp_split_axes = {"weight": 0}

    def __init__(self, num_embeddings: int, embedding_dim: int, mp: ParallelContext = SINGLE) -> None:
        rows = mp.shard(num_embeddings, "vocab_size")
        super().__init__(rows, embedding_dim)
        self.mp = mp
        self.vocab_start = mp.rank * rows
        mark_split_parameters(self)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        if self.mp.world_size == 1:
            return super().forward(input_ids)
        local = input_ids - self.vocab_start
        outside = paddle.logical_or(local < 0, local >= self.weight.shape[0])
        embeds = F.embedding(paddle.where(outside, paddle.zeros_like(local), local), self.weight)
        embeds = paddle.where(outside.unsqueeze(-1), paddle.zeros_like(embeds), embeds)  # [..., C]
        return reduce_from_ranks(embeds, self.mp)


class TiedLMHead(nn.Layer):
    """Output projection sharing the token embedding matrix (3B): logits for this rank's
    vocabulary rows, gathered over ranks into ``[..., V]``."""

    def __init__(self, embedding: VocabParallelEmbedding) -> None:
        super().__init__()
        self._embedding = [embedding]  # a list keeps it out of this layer's parameters

    @property
    def weight(self) -> paddle.Tensor:
        return self._embedding[0].weight

    @property
    def extra_parameters(self) -> List[paddle.Tensor]:
        """Parameters used here but owned by another layer: sharding stage3 gathers a layer's own
        and these before its forward (the embedding's weight is released after the lookup)."""
        return [self.weight]

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        mp = self._embedding[0].mp
        logits = paddle.matmul(copy_to_ranks(hidden_states, mp), self.weight, transpose_y=True)
        return gather_last_axis(logits, mp)


def split_axes(model: nn.Layer) -> Dict[str, int]:
    """``{parameter name: split axis}`` for every tensor-parallel parameter of ``model`` (Paddle layout)."""
    axes: Dict[str, int] = {}
    for prefix, layer in model.named_sublayers():
        if getattr(layer, "mp", SINGLE).world_size == 1:
            continue  # built unsplit (e.g. the replicated vision tower's MLP)
        for attr, axis in getattr(layer, "tp_split_axes", {}).items():
            if getattr(layer, attr, None) is not None:
                axes[f"{prefix}.{attr}"] = axis
    return axes
