"""Samples -> batches: right-padded rows, or all samples of a batch packed into one row.

Packed rows (``--data_flatten``) number their samples in ``attention_mask`` (1, 2, ...; 0 is
padding), which the model turns into attention confined to each sample; each sample keeps its
own MRoPE positions. The loss is the mean over the batch's supervised tokens in both layouts,
so a packed batch and the same batch padded give the same loss.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from .conversation import IGNORE_INDEX

__all__ = ["SFTCollator"]

_MEDIA = (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))


class SFTCollator:
    """Collate :class:`~paddlemix_qwen25vl.training.data.SFTDataset` samples into model inputs (numpy)."""

    def __init__(self, pad_token_id: int, flatten: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.flatten = flatten

    def __call__(self, samples: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        batch = self._pack(samples) if self.flatten else self._pad(samples)
        for pixels, grid in _MEDIA:
            present = [s for s in samples if pixels in s]
            if present:  # text-only samples simply contribute no pixels
                batch[pixels] = np.concatenate([s[pixels] for s in present], axis=0)
                batch[grid] = np.concatenate([s[grid] for s in present], axis=0)
        return batch

    def _pad(self, samples: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        length = max(len(s["input_ids"]) for s in samples)
        size = len(samples)
        input_ids = np.full((size, length), self.pad_token_id, dtype=np.int64)
        labels = np.full((size, length), IGNORE_INDEX, dtype=np.int64)
        attention_mask = np.zeros((size, length), dtype=np.int64)
        position_ids = np.ones((3, size, length), dtype=np.int64)  # padding holds 1, as rope_index does
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            labels[row, :n] = sample["labels"]
            attention_mask[row, :n] = 1
            position_ids[:, row, :n] = sample["position_ids"]
        return dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask, position_ids=position_ids)

    def _pack(self, samples: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        labels = []
        for sample in samples:
            sample_labels = sample["labels"].copy()
            # The previous sample's last token must not learn to predict this sample's first one.
            sample_labels[0] = IGNORE_INDEX
            labels.append(sample_labels)
        segments = [np.full(len(s["input_ids"]), number, dtype=np.int64) for number, s in enumerate(samples, start=1)]
        return dict(
            input_ids=np.concatenate([s["input_ids"] for s in samples])[None],  # [1, sum L]
            labels=np.concatenate(labels)[None],
            attention_mask=np.concatenate(segments)[None],
            position_ids=np.concatenate([s["position_ids"] for s in samples], axis=1)[:, None],  # [3, 1, sum L]
        )
