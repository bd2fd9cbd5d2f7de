"""The vision tower's features of recent requests, kept by their pixels.

The chat-completions API is stateless: a conversation sends its images again with every turn,
and the server would run the vision tower on them every time (on the quick benchmark model a
224 x 224 image costs ~0.7 s of the prompt's ~1.1 s on 2 threads). A request whose pixel inputs
equal an earlier one's, byte for byte, gets that request's features: the same tensor the same
call produced, so answers are unchanged. Only the engine's thread uses it (no locking).

Dimensions:
    N: patches of one request's images (or videos)     C: decoder hidden size
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Dict, Tuple

import numpy as np
import paddle

__all__ = ["VisionFeatureCache"]

Encoder = Callable[..., paddle.Tensor]  # the vision tower: (pixels [N, 1176], grid_thw=[n, 3]) -> [N / 4, C]


class VisionFeatureCache:
    """Features ``[N / 4, C]`` by the pixels ``[N, 1176]`` and grids ``[n, 3]`` they came from,
    the least recently used dropped first once they hold more than ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes} (attach no cache to disable it)")
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[bytes, Tuple[paddle.Tensor, int]]" = OrderedDict()  # key -> (features, bytes)
        self._bytes = 0
        self.hits = self.misses = 0

    def features(self, pixels: paddle.Tensor, grid_thw, encode: Encoder) -> paddle.Tensor:
        """``encode(pixels, grid_thw=grid_thw)``, or what it returned for the same inputs before."""
        key = self._key(pixels, grid_thw)
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key][0]
        self.misses += 1
        features = encode(pixels, grid_thw=grid_thw)
        size = features.numel().item() * features.element_size()
        if size <= self.max_bytes:
            self._entries[key] = (features, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._bytes -= self._entries.popitem(last=False)[1][1]
        return features

    def stats(self) -> Dict[str, int]:
        """Hits, misses, entries and bytes held (for /health)."""
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries), "bytes": self._bytes}

    @staticmethod
    def _key(pixels: paddle.Tensor, grid_thw) -> bytes:
        grid = grid_thw.numpy() if isinstance(grid_thw, paddle.Tensor) else np.asarray(grid_thw)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{pixels.dtype} {list(pixels.shape)} {grid.astype(np.int64).tolist()}".encode())
        digest.update(np.ascontiguousarray(pixels.numpy()).data)
        return digest.digest()
