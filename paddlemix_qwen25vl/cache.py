"""The decoder's key/value cache: its own object, owned by whoever runs generation.

Dimensions:
    B: batch rows     L: cached positions (Lq: this step's new ones)
    KVH: kv heads     D: head dim
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import paddle

__all__ = ["KVCache"]


class KVCache:
    """Per-layer keys and values ``[B, L, KVH, D]``, grown as tokens arrive.

    With ``capacity`` (what :func:`~paddlemix_qwen25vl.generation.generate` passes: the prompt
    plus every token it may add) each layer's buffers ``[B, capacity, KVH, D]`` are
    allocated at the first update and later tokens are written in place; ``update`` returns
    views of the filled prefix. Without it every step concatenates, copying the whole cache,
    which grows with the context (8 MB per layer per step at 4k tokens for the 3B).
    """

    def __init__(self, num_layers: int, capacity: Optional[int] = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"KVCache capacity must be a positive number of tokens, got {capacity}")
        self.capacity = capacity
        self.keys: List[Optional[paddle.Tensor]] = [None] * num_layers  # [B, L or capacity, KVH, D]
        self.values: List[Optional[paddle.Tensor]] = [None] * num_layers
        self.lengths: List[int] = [0] * num_layers  # tokens cached per layer

    def get_seq_length(self) -> int:
        """Tokens already cached (0 before the first forward)."""
        return self.lengths[0]

    def update(self, layer_idx: int, key: paddle.Tensor, value: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Append this step's ``key``/``value`` ``[B, Lq, KVH, D]`` for ``layer_idx``
        and return everything cached so far, ``[B, L, KVH, D]``."""
        start = self.lengths[layer_idx]
        end = start + key.shape[1]
        if self.capacity is not None and end > self.capacity:
            raise ValueError(
                f"KVCache of capacity {self.capacity} tokens is full: layer {layer_idx} holds {start} "
                f"and {key.shape[1]} more arrived"
            )
        self.lengths[layer_idx] = end
        if self.capacity is None:
            if self.keys[layer_idx] is None:
                self.keys[layer_idx], self.values[layer_idx] = key, value
            else:
                self.keys[layer_idx] = paddle.concat([self.keys[layer_idx], key], axis=1)
                self.values[layer_idx] = paddle.concat([self.values[layer_idx], value], axis=1)
            return self.keys[layer_idx], self.values[layer_idx]
        if self.keys[layer_idx] is None:
            batch, _, kv_heads, head_dim = key.shape
            self.keys[layer_idx] = paddle.empty([batch, self.capacity, kv_heads, head_dim], dtype=key.dtype)
            self.values[layer_idx] = paddle.empty([batch, self.capacity, kv_heads, head_dim], dtype=value.dtype)
        self.keys[layer_idx][:, start:end] = key
        self.values[layer_idx][:, start:end] = value
        return self.keys[layer_idx][:, :end], self.values[layer_idx][:, :end]
