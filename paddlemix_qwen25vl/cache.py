"""The decoder's key/value caches: their own objects, owned by whoever runs generation.

:class:`KVCache` serves one batch from prefill to its end (``generate``); :class:`BatchKVCache`
serves a batch whose rows join and leave while it decodes (the serving engine).

Dimensions:
    B: batch rows     L: cached positions (Lq: this step's new ones)
    KVH: kv heads     D: head dim
    S: the rows a BatchKVCache can hold   E: its columns in use (the past length the model sees)
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import paddle

from .rope import DecodeRotaryTable

__all__ = ["KVCache", "BatchKVCache"]


class KVCache:
    """Per-layer keys and values ``[B, L, KVH, D]``, grown as tokens arrive.

    With ``capacity`` (what :func:`~paddlemix_qwen25vl.generation.generate` passes: the prompt
    plus every token it may add) each layer's buffers ``[B, capacity, KVH, D]`` are
    allocated at the first update and later tokens are written in place; ``update`` returns
    views of the filled prefix. Without it every step concatenates, copying the whole cache,
    which grows with the context (8 MB per layer per step at 4k tokens for the 3B).
    Such a cache also holds the rotary tables of the decode positions it has room for
    (``rotary``, a :class:`~paddlemix_qwen25vl.rope.DecodeRotaryTable` the model builds at the first
    decode step): 1 KiB per position and row, where the 3B's keys and values take 72 KiB.
    """

    def __init__(self, num_layers: int, capacity: Optional[int] = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"KVCache capacity must be a positive number of tokens, got {capacity}")
        self.capacity = capacity
        self.keys: List[Optional[paddle.Tensor]] = [None] * num_layers  # [B, L or capacity, KVH, D]
        self.values: List[Optional[paddle.Tensor]] = [None] * num_layers
        self.lengths: List[int] = [0] * num_layers  # tokens cached per layer
        self.rotary: Optional[DecodeRotaryTable] = None

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


class BatchKVCache:
    """Keys and values of up to ``max_rows`` sequences of different lengths decoding together.

    Each layer holds ``[S, capacity, KVH, D]`` buffers. The B rows in use are slots ``0..B-1``,
    right-aligned at the common end column E: row b fills columns ``pads[b]..E-1``. A decode
    step is then the left-padded batch of ``generate``: every row writes column E in place, the
    model sees E as the past length, :meth:`attention_mask` masks the padding, and row b's
    MRoPE position is ``E + (its own rope delta - pads[b])``.

    Rows join with :meth:`add_row` (a copy of a prefilled batch-1 :class:`KVCache`) and leave
    with :meth:`remove_row` (the last row moves into the freed slot), without touching the
    others. Only when E would pass the capacity, or a prompt longer than E joins, are the rows
    moved into new buffers, dropping the padding they all share (so E stays the longest row's
    length, however long the batch keeps running).
    """

    def __init__(self, num_layers: int, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"BatchKVCache needs room for at least one row, got max_rows={max_rows}")
        self.max_rows = max_rows
        self.keys: List[Optional[paddle.Tensor]] = [None] * num_layers  # [S, capacity, KVH, D]
        self.values: List[Optional[paddle.Tensor]] = [None] * num_layers
        self.capacity = 0
        self.end = 0  # E
        self.pads: List[int] = []  # per row in use: its empty columns on the left

    @property
    def rows(self) -> int:
        return len(self.pads)

    def get_seq_length(self) -> int:
        """The past length every row presents to the model: E."""
        return self.end

    def row_length(self, slot: int) -> int:
        """Tokens cached for the row in ``slot``."""
        return self.end - self.pads[slot]

    def attention_mask(self, new_tokens: int = 1) -> Optional[np.ndarray]:
        """``[B, E + new_tokens]`` int64, 0 over each row's padding; None when no row has any
        (the model's mask-free decode path)."""
        if not any(self.pads):
            return None
        columns = np.arange(self.end + new_tokens)[None, :]
        return (columns >= np.asarray(self.pads)[:, None]).astype(np.int64)

    def update(self, layer_idx: int, key: paddle.Tensor, value: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Write this step's ``key``/``value`` ``[B, Lq, KVH, D]`` at columns ``E..E+Lq-1`` of every
        row and return the views ``[B, E + Lq, KVH, D]``; the last layer's write advances E."""
        batch, new = key.shape[0], key.shape[1]
        if batch != self.rows:
            raise ValueError(f"BatchKVCache holds {self.rows} rows but a step for {batch} arrived")
        if layer_idx == 0 and self.end + new > self.capacity:  # no reserve() before: grow, keep E (the mask's)
            self._relayout(self.end, new, key)
        end = self.end + new
        self.keys[layer_idx][:batch, self.end:end] = key
        self.values[layer_idx][:batch, self.end:end] = value
        if layer_idx == len(self.keys) - 1:
            self.end = end
        return self.keys[layer_idx][:batch, :end], self.values[layer_idx][:batch, :end]

    def reserve(self, new_tokens: int) -> None:
        """Make room for a step of ``new_tokens`` before its mask and positions are read: when E
        would pass the capacity, the rows move left by their shared padding (E and ``pads`` change)."""
        if self.rows and self.end + new_tokens > self.capacity:
            self._relayout(0, new_tokens, self.keys[0])

    def add_row(self, row: KVCache) -> int:
        """Copy the one sequence of a prefilled ``row`` cache into the next free slot; returns the slot."""
        if self.rows == self.max_rows:
            raise ValueError(f"BatchKVCache is full: all {self.max_rows} rows are in use")
        length = row.get_seq_length()
        if row.keys[0] is None or row.keys[0].shape[0] != 1 or length < 1:
            raise ValueError("add_row takes a KVCache holding one prefilled sequence (batch 1)")
        if length > self.end or self.end + 1 > self.capacity:
            self._relayout(length, 1, row.keys[0])
        slot, start = self.rows, self.end - length
        for layer in range(len(self.keys)):
            for buffers, source in ((self.keys, row.keys), (self.values, row.values)):
                buffers[layer][slot, :start] = 0  # a former row's values: masked, but keep them finite
                buffers[layer][slot, start:self.end] = source[layer][0, :length]
        self.pads.append(start)
        return slot

    def remove_row(self, slot: int) -> None:
        """Free ``slot``: the last row moves into it (callers renumber their rows the same way)."""
        last = self.rows - 1
        if not 0 <= slot <= last:
            raise ValueError(f"BatchKVCache has no row in slot {slot} ({self.rows} rows in use)")
        if slot != last:
            for buffers in (self.keys, self.values):
                for layer in range(len(buffers)):
                    buffers[layer][slot, :self.end] = buffers[layer][last, :self.end]
            self.pads[slot] = self.pads[last]
        self.pads.pop()
        if not self.pads:  # the batch is over: give the memory back
            self.keys, self.values = [None] * len(self.keys), [None] * len(self.values)
            self.end = self.capacity = 0

    def _relayout(self, min_end: int, new_tokens: int, like: paddle.Tensor) -> None:
        """Move the rows into new buffers: right-aligned at ``max(E - shared padding, min_end)``,
        with room for ``new_tokens`` more columns and at least half the capacity free (so moves
        are at least capacity / 2 steps apart)."""
        shared_pad = min(self.pads, default=0)
        end = max(self.end - shared_pad, min_end)
        shift = end - self.end  # every row moves by the same number of columns
        needed = end + new_tokens
        capacity = self.capacity if 2 * needed <= self.capacity else 2 * needed
        _, _, kv_heads, head_dim = like.shape
        for buffers in (self.keys, self.values):
            for layer in range(len(buffers)):
                fresh = paddle.zeros([self.max_rows, capacity, kv_heads, head_dim], dtype=like.dtype)
                if self.rows:
                    fresh[:self.rows, shared_pad + shift:end] = buffers[layer][:self.rows, shared_pad:self.end]
                buffers[layer] = fresh
        self.pads = [pad + shift for pad in self.pads]
        self.end, self.capacity = end, capacity
