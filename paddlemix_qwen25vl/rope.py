"""Rotary position embeddings: the vision tower's 2D rotary, the decoder's MRoPE, and
``get_rope_index``, the one place where multimodal (T, H, W) position ids are computed
(used by the model's forward, generation and the training data pipeline alike).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import paddle

__all__ = [
    "signed_sin",
    "apply_rotary",
    "rotary_inv_freq",
    "vision_rotary_freqs",
    "mrope_cos_sin",
    "rope_index",
]

ArrayLike = Union[paddle.Tensor, np.ndarray, Sequence]


def _to_numpy(x: Optional[ArrayLike]) -> Optional[np.ndarray]:
    if x is None:
        return None
    if isinstance(x, paddle.Tensor):
        return x.numpy()
    return np.asarray(x)


def rotary_inv_freq(dim: int, theta: float) -> np.ndarray:
    """inv_freq[i] = 1 / theta^(2i/dim) for i < dim/2, float32 (computed in float64, then rounded)."""
    exponent = np.arange(0, dim, 2, dtype=np.float64) / dim
    return (1.0 / theta**exponent).astype(np.float32)


def signed_sin(sin: paddle.Tensor) -> paddle.Tensor:
    """[s1, s2] -> [-s1, s2] over the last axis: the sine table :func:`apply_rotary` takes."""
    half = sin.shape[-1] // 2
    return paddle.concat([-sin[..., :half], sin[..., half:]], axis=-1)


def apply_rotary(x: paddle.Tensor, cos: paddle.Tensor, sin_signed: paddle.Tensor) -> paddle.Tensor:
    """x * cos + rotate_half(x) * sin, where rotate_half([x1, x2]) = [-x2, x1].

    Computed as ``x * cos + roll(x, half) * signed_sin(sin)``: bit-identical (a sign moved from
    x2 to s1), and one roll instead of two slices, a negation and a concat per call, with the
    signed table built once per forward instead of per layer (a decode step's rotary is
    dispatch-bound). cos/sin_signed must broadcast against x.
    """
    return x * cos + paddle.roll(x, x.shape[-1] // 2, axis=-1) * sin_signed


def vision_rotary_freqs(grid_thw: np.ndarray, head_dim: int, spatial_merge_size: int, theta: float = 10000.0) -> np.ndarray:
    """2D rotary angles of every patch, in the processor's (t, h/2, w/2, 2, 2) row order.

    Returns float32 ``[num_patches, head_dim // 2]``: the first half rotates with the patch
    row, the second half with the patch column (each over head_dim // 4 frequencies).
    """
    inv_freq = rotary_inv_freq(head_dim // 2, theta)  # [head_dim // 4]
    m = spatial_merge_size
    rows = []
    for t, h, w in grid_thw.tolist():
        # Patch (row, col) ids, reordered so that each 2x2 merge group is contiguous.
        hpos = np.broadcast_to(np.arange(h)[:, None], (h, w)).reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3)
        wpos = np.broadcast_to(np.arange(w)[None, :], (h, w)).reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3)
        pos = np.stack([hpos.reshape(-1), wpos.reshape(-1)], axis=-1)  # [h*w, 2]
        rows.append(np.tile(pos, (t, 1)))
    pos_ids = np.concatenate(rows, axis=0)  # [num_patches, 2]
    # Same float32 product as the reference's outer(arange, inv_freq) table lookup.
    freqs = pos_ids[:, :, None].astype(np.float32) * inv_freq[None, None, :]  # [N, 2, head_dim // 4]
    return freqs.reshape(pos_ids.shape[0], -1)


def mrope_cos_sin(
    position_ids: paddle.Tensor, inv_freq: paddle.Tensor, mrope_section: Sequence[int], dtype: str
) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """cos and signed sin (:func:`signed_sin`) ``[B, L, head_dim]`` for MRoPE position ids
    ``[3, B, L]`` (T, H, W), the tables :func:`apply_rotary` takes.

    Rotary frequency block j of ``mrope_section`` (e.g. [16, 24, 24]) takes its angle from
    position axis j, in both halves of the head dimension. Computed in float32.
    """
    freqs = position_ids.astype("float32").unsqueeze(-1) * inv_freq  # [3, B, L, head_dim // 2]
    chunks = paddle.split(freqs, list(mrope_section), axis=-1)
    freqs = paddle.concat([chunk[axis] for axis, chunk in enumerate(chunks)], axis=-1)  # [B, L, head_dim // 2]
    emb = paddle.concat([freqs, freqs], axis=-1)  # [B, L, head_dim]
    return emb.cos().astype(dtype), signed_sin(emb.sin()).astype(dtype)


def rope_index(
    input_ids: ArrayLike,
    image_grid_thw: Optional[ArrayLike] = None,
    video_grid_thw: Optional[ArrayLike] = None,
    second_per_grid_ts: Optional[ArrayLike] = None,
    attention_mask: Optional[ArrayLike] = None,
    *,
    spatial_merge_size: int = 2,
    image_token_id: int = 151655,
    video_token_id: int = 151656,
    vision_start_token_id: int = 151652,
    tokens_per_second: float = 2,
) -> Tuple[np.ndarray, np.ndarray]:
    """MRoPE position ids ``[3, B, L]`` and rope deltas ``[B, 1]`` (int64 numpy arrays).

    Per row, over the tokens where ``attention_mask == 1`` (left or right padding): text runs
    count up on all three axes from the previous maximum + 1; a vision item of llm grid
    (t, h, w) gets T = floor(k * second_per_grid_t * tokens_per_second) for frame group k
    (0 for images; float32 until the floor, as in the reference), H = row, W = column, all
    offset by the position where it starts. Padded positions hold 1. The delta is
    ``max + 1 - row length``: at decode step ``p`` every axis is at ``p + delta``.
    """
    ids = _to_numpy(input_ids).astype(np.int64)
    batch, length = ids.shape
    mask = np.ones(ids.shape, dtype=bool) if attention_mask is None else (_to_numpy(attention_mask) == 1)
    images = _to_numpy(image_grid_thw)
    videos = _to_numpy(video_grid_thw)

    if images is None and videos is None:
        if attention_mask is None:
            position_ids = np.broadcast_to(np.arange(length), (3, batch, length)).copy()
            return position_ids, np.zeros((batch, 1), dtype=np.int64)
        pos = np.cumsum(mask, axis=-1) - 1
        pos[~mask] = 1
        deltas = pos.max(axis=-1, keepdims=True) + 1 - length
        return np.broadcast_to(pos, (3, batch, length)).copy(), deltas.astype(np.int64)

    seconds = None if second_per_grid_ts is None else _to_numpy(second_per_grid_ts).astype(np.float32).reshape(-1)
    position_ids = np.ones((3, batch, length), dtype=np.int64)
    deltas = np.zeros((batch, 1), dtype=np.int64)
    image_index = video_index = 0
    for row in range(batch):
        tokens = ids[row][mask[row]]
        starts = np.nonzero(tokens == vision_start_token_id)[0]
        following = tokens[starts[starts + 1 < len(tokens)] + 1]
        remain_images = int((following == image_token_id).sum())
        remain_videos = int((following == video_token_id).sum())
        pieces = []
        next_start = 0  # first position of the next chunk
        st = 0  # index into tokens
        for _ in range(remain_images + remain_videos):
            ed_image = _find(tokens, image_token_id, st) if remain_images > 0 else len(tokens) + 1
            ed_video = _find(tokens, video_token_id, st) if remain_videos > 0 else len(tokens) + 1
            if ed_image < ed_video:
                t, h, w = (int(v) for v in images[image_index])
                second_per_grid_t = np.float32(0.0)
                image_index += 1
                remain_images -= 1
                ed = ed_image
            else:
                t, h, w = (int(v) for v in videos[video_index])
                second_per_grid_t = np.float32(1.0) if seconds is None else seconds[video_index]
                video_index += 1
                remain_videos -= 1
                ed = ed_video
            h, w = h // spatial_merge_size, w // spatial_merge_size
            text_len = ed - st
            pieces.append(np.broadcast_to(np.arange(text_len) + next_start, (3, text_len)))
            time = np.arange(t, dtype=np.float32) * second_per_grid_t * np.float32(tokens_per_second)
            t_index = np.repeat(np.floor(time).astype(np.int64), h * w)
            h_index = np.tile(np.repeat(np.arange(h), w), t)
            w_index = np.tile(np.arange(w), t * h)
            vision = np.stack([t_index, h_index, w_index]) + text_len + next_start
            pieces.append(vision)
            next_start = int(vision.max()) + 1
            st = ed + t * h * w
        if st < len(tokens):
            text_len = len(tokens) - st
            pieces.append(np.broadcast_to(np.arange(text_len) + next_start, (3, text_len)))
        positions = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), dtype=np.int64)
        position_ids[:, row, mask[row]] = positions
        deltas[row, 0] = (int(positions.max()) + 1 if positions.size else 0) - length
    return position_ids, deltas


def _find(tokens: np.ndarray, token_id: int, start: int) -> int:
    """Index of the first ``token_id`` at or after ``start``, or len + 1 when absent."""
    hits = np.nonzero(tokens[start:] == token_id)[0]
    return start + int(hits[0]) if hits.size else len(tokens) + 1
