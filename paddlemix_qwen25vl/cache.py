"""The decoder's key/value cache: its own object, owned by whoever runs generation."""

from __future__ import annotations

from typing import List, Optional, Tuple

import paddle

__all__ = ["KVCache"]


class KVCache:
    """Per-layer keys and values ``[B, L, kv_heads, head_dim]``, grown as tokens arrive."""

    def __init__(self, num_layers: int) -> None:
        self.keys: List[Optional[paddle.Tensor]] = [None] * num_layers
        self.values: List[Optional[paddle.Tensor]] = [None] * num_layers

    def get_seq_length(self) -> int:
        """Tokens already cached (0 before the first forward)."""
        return 0 if self.keys[0] is None else self.keys[0].shape[1]

    def update(self, layer_idx: int, key: paddle.Tensor, value: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Append this step's ``key``/``value`` for ``layer_idx`` and return everything cached so far."""
        if self.keys[layer_idx] is None:
            self.keys[layer_idx], self.values[layer_idx] = key, value
        else:
            self.keys[layer_idx] = paddle.concat([self.keys[layer_idx], key], axis=1)
            self.values[layer_idx] = paddle.concat([self.values[layer_idx], value], axis=1)
        return self.keys[layer_idx], self.values[layer_idx]
