"""Rotary position embeddings: the vision tower's 2D rotary, the decoder's MRoPE, and
``get_rope_index``, the one place where multimodal (T, H, W) position ids are computed
(used by the model's forward, generation and the training data pipeline alike).

Dimensions:
    N: vision patches     D: head dim (of the tower or the decoder the table is for)
    B: batch rows         L: positions of a row     3: the (T, H, W) position axes
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle

from .ops.loader import get_ops

__all__ = [
    "signed_sin",
    "apply_rotary",
    "apply_rotary_qk",
    "rotary_inv_freq",
    "vision_rotary_freqs",
    "mrope_cos_sin",
    "DecodeRotaryTable",
    "rope_index",
    "rope_index_options",
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


def _rotary_op_applies(q: paddle.Tensor, k: paddle.Tensor, cos: paddle.Tensor) -> bool:
    """Whether the compiled ``qwen25vl_rotary_qk`` runs these tensors: float32 on the CPU, no
    gradient (it has no backward), tables of one row per position (Ht = 1) or per head."""
    ops = get_ops()
    if ops is None or not hasattr(ops, "qwen25vl_rotary_qk") or paddle.is_grad_enabled():
        return False
    if not (q.place.is_cpu_place() and q.dtype == k.dtype == cos.dtype == paddle.float32):
        return False
    leading = list(cos.shape[:-2])
    return all(x.ndim == cos.ndim and list(x.shape[:-2]) == leading and x.shape[-1] == cos.shape[-1]
               and cos.shape[-2] in (1, x.shape[-2]) for x in (q, k))


def apply_rotary_qk(q: paddle.Tensor, k: paddle.Tensor, cos: paddle.Tensor,
                    sin_signed: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """:func:`apply_rotary` of ``q [..., H, D]`` and ``k [..., KVH, D]`` with the same tables
    ``[..., 1 or H, D]``. On the CPU without a graph, one call of the compiled
    ``qwen25vl_rotary_qk`` (external_ops/csrc/rotary_cpu.cc), bitwise the same: Paddle's
    elementwise path is eight calls, and in a decode step each costs tens of microseconds
    to ~0.2 ms whatever its size (benchmarks/README.md, "The generation loop")."""
    if _rotary_op_applies(q, k, cos):
        q_out, k_out = get_ops().qwen25vl_rotary_qk(q, k, cos, sin_signed)
        return q_out, k_out
    return apply_rotary(q, cos, sin_signed), apply_rotary(k, cos, sin_signed)


def vision_rotary_freqs(grid_thw: np.ndarray, head_dim: int, spatial_merge_size: int, theta: float = 10000.0) -> np.ndarray:
    """2D rotary angles of every patch, in the processor's (t, h/m, w/m, m, m) row order (m = spatial_merge_size).

    Returns float32 ``[N, D // 2]``: the first half rotates with the patch row, the second
    half with the patch column (each over D // 4 frequencies).
    """
    inv_freq = rotary_inv_freq(head_dim // 2, theta)  # [D // 4]
    m = spatial_merge_size
    rows = []
    for t, h, w in grid_thw.tolist():
        # Patch (row, col) ids, reordered so that each m x m merge group is contiguous.
        hpos = np.broadcast_to(np.arange(h)[:, None], (h, w)).reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3)
        wpos = np.broadcast_to(np.arange(w)[None, :], (h, w)).reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3)
        pos = np.stack([hpos.reshape(-1), wpos.reshape(-1)], axis=-1)  # [h*w, 2]
        rows.append(np.tile(pos, (t, 1)))
    pos_ids = np.concatenate(rows, axis=0)  # [N, 2]
    # Same float32 product as the reference's outer(arange, inv_freq) table lookup.
    freqs = pos_ids[:, :, None].astype(np.float32) * inv_freq[None, None, :]  # [N, 2, D // 4]
    return freqs.reshape(pos_ids.shape[0], -1)


def mrope_cos_sin(
    position_ids: paddle.Tensor, inv_freq: paddle.Tensor, mrope_section: Sequence[int], dtype: str
) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """cos and signed sin (:func:`signed_sin`) ``[B, L, 1, D]`` for MRoPE position ids
    ``[3, B, L]`` (T, H, W), the tables :func:`apply_rotary` takes (broadcast over heads).

    Rotary frequency block j of ``mrope_section`` (e.g. [16, 24, 24]) takes its angle from
    position axis j, in both halves of the head dimension. Computed in float32.
    """
    freqs = position_ids.astype("float32").unsqueeze(-1) * inv_freq  # [3, B, L, D // 2]
    chunks = paddle.split(freqs, list(mrope_section), axis=-1)
    freqs = paddle.concat([chunk[axis] for axis, chunk in enumerate(chunks)], axis=-1)  # [B, L, D // 2]
    emb = paddle.concat([freqs, freqs], axis=-1).unsqueeze(2)  # [B, L, 1, D]
    return emb.cos().astype(dtype), signed_sin(emb.sin()).astype(dtype)


class DecodeRotaryTable:
    """The cos / signed sin tables of every decode position of one generation, built once.

    A decode step's MRoPE positions are ``past_len + rope_delta`` on all three axes, so the
    tables of the steps after ``first .. first + T - 1`` cached tokens are one :func:`mrope_cos_sin`
    call (the same elementwise float32 math, so the same values). A step then takes two slices
    instead of the ~20 operators of its positions and tables, ~1 ms of a CPU decode step with
    the caches cold (benchmarks/README.md, "Rotary tables once per generation").
    """

    def __init__(self, rope_deltas: paddle.Tensor, first: int, positions: paddle.Tensor, inv_freq: paddle.Tensor,
                 mrope_section: Sequence[int], dtype: paddle.dtype) -> None:
        """``positions [3, B, T]``: those of the steps after ``first .. first + T - 1`` cached
        tokens, from ``rope_deltas [B, 1]``."""
        self.rope_deltas, self.first = rope_deltas, first
        self.cos, self.sin_signed = mrope_cos_sin(positions, inv_freq, mrope_section, dtype)  # [B, T, 1, D]

    def rows(self, rope_deltas: paddle.Tensor, past_len: int, length: int,
             dtype: paddle.dtype) -> Optional[Tuple[paddle.Tensor, paddle.Tensor]]:
        """cos / signed sin ``[B, length, 1, D]`` of the step after ``past_len`` cached tokens, or
        None when this table is not for them (other deltas, positions or dtype)."""
        start = past_len - self.first
        if rope_deltas is not self.rope_deltas or dtype != self.cos.dtype or start < 0 or start + length > self.cos.shape[1]:
            return None
        return self.cos[:, start:start + length], self.sin_signed[:, start:start + length]


def rope_index_options(config: Any) -> Dict[str, Any]:
    """The keyword arguments of :func:`rope_index` that a :class:`Qwen2_5_VLConfig` fixes."""
    return {
        "spatial_merge_size": config.vision_config.spatial_merge_size,
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "tokens_per_second": config.vision_config.tokens_per_second,
    }


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
    (t, h, w) = (grid_t, grid_h / merge, grid_w / merge) gets T = floor(k * second_per_grid_t *
    tokens_per_second) for frame group k (0 for images; float32 until the floor, as in the
    reference), H = row, W = column, all offset by the position where it starts. Padded
    positions hold 1. The delta is ``max + 1 - row length``: at decode step ``p`` every axis is
    at ``p + delta``. ``rope_index_options(config)`` gives the keyword arguments.

    Worked example: 3 text tokens, vision_start, an image of grid (1, 4, 6) (llm grid 1 x 2 x 3:
    six pad tokens), vision_end, 4 text tokens::

        token      t0 t1 t2 vs  i  i  i  i  i  i ve t3 t4 t5 t6
        T           0  1  2  3  4  4  4  4  4  4  7  8  9 10 11
        H           0  1  2  3  4  4  4  5  5  5  7  8  9 10 11
        W           0  1  2  3  4  5  6  4  5  6  7  8  9 10 11

    The image starts at 4 (after 4 text positions); the text after it resumes at the largest
    position so far (6) + 1 = 7; delta = 11 + 1 - 15 = -3. A video of grid (4, 4, 4) with
    second_per_grid_t 1.0 in the same place takes T = 4, 6, 8, 10 for its four frame groups
    (k * 1.0 * 2 + 4), and the text after it starts at 11.
    """
    ids = _to_numpy(input_ids).astype(np.int64)
    mask = np.ones(ids.shape, dtype=bool) if attention_mask is None else (_to_numpy(attention_mask) == 1)
    images, videos = _to_numpy(image_grid_thw), _to_numpy(video_grid_thw)
    if images is None and videos is None:
        return _text_positions(mask, padded=attention_mask is not None)
    seconds = None if second_per_grid_ts is None else _to_numpy(second_per_grid_ts).astype(np.float32).reshape(-1)
    items = _VisionItems(images, videos, seconds, image_token_id, video_token_id)
    batch, length = ids.shape
    position_ids = np.ones((3, batch, length), dtype=np.int64)  # padding holds 1
    deltas = np.zeros((batch, 1), dtype=np.int64)
    for row in range(batch):
        tokens = ids[row][mask[row]]
        positions = _row_positions(tokens, items.take(tokens, vision_start_token_id, spatial_merge_size), spatial_merge_size, tokens_per_second)
        position_ids[:, row, mask[row]] = positions
        deltas[row, 0] = (int(positions.max()) + 1 if positions.size else 0) - length
    return position_ids, deltas


def _text_positions(mask: np.ndarray, padded: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Text only: 0, 1, 2, ... over the unmasked tokens of each row ``mask [B, L]``, on all three axes."""
    batch, length = mask.shape
    if not padded:
        return np.broadcast_to(np.arange(length), (3, batch, length)).copy(), np.zeros((batch, 1), dtype=np.int64)
    pos = np.cumsum(mask, axis=-1) - 1
    pos[~mask] = 1
    deltas = pos.max(axis=-1, keepdims=True) + 1 - length
    return np.broadcast_to(pos, (3, batch, length)).copy(), deltas.astype(np.int64)


class _VisionItems:
    """The batch's images and videos, handed out in order of appearance as rows are walked."""

    def __init__(self, images: Optional[np.ndarray], videos: Optional[np.ndarray], seconds: Optional[np.ndarray],
                 image_token_id: int, video_token_id: int) -> None:
        self.images, self.videos, self.seconds = images, videos, seconds
        self.image_token_id, self.video_token_id = image_token_id, video_token_id
        self.image_index = self.video_index = 0

    def take(self, tokens: np.ndarray, vision_start_token_id: int,
             spatial_merge_size: int) -> List[Tuple[int, Tuple[int, int, int], np.float32]]:
        """``(first pad index, (t, h, w) grid, second_per_grid_t)`` of each item of one row, in order."""
        starts = np.nonzero(tokens == vision_start_token_id)[0]
        following = tokens[starts[starts + 1 < len(tokens)] + 1]
        remain_images = int((following == self.image_token_id).sum())
        remain_videos = int((following == self.video_token_id).sum())
        items, cursor = [], 0
        for _ in range(remain_images + remain_videos):
            ed_image = _find(tokens, self.image_token_id, cursor) if remain_images > 0 else len(tokens) + 1
            ed_video = _find(tokens, self.video_token_id, cursor) if remain_videos > 0 else len(tokens) + 1
            if ed_image < ed_video:
                grid, second = self.images[self.image_index], np.float32(0.0)
                self.image_index, remain_images, ed = self.image_index + 1, remain_images - 1, ed_image
            else:
                grid = self.videos[self.video_index]
                second = np.float32(1.0) if self.seconds is None else self.seconds[self.video_index]
                self.video_index, remain_videos, ed = self.video_index + 1, remain_videos - 1, ed_video
            t, h, w = (int(v) for v in grid)
            items.append((ed, (t, h, w), second))
            cursor = ed + t * (h // spatial_merge_size) * (w // spatial_merge_size)  # past its pad tokens
        return items


def _row_positions(tokens: np.ndarray, items: Sequence[Tuple[int, Tuple[int, int, int], np.float32]],
                   spatial_merge_size: int, tokens_per_second: float) -> np.ndarray:
    """Positions ``[3, n]`` of one row's ``n`` unpadded tokens: text runs and vision items in turn."""
    pieces = []
    next_start = 0  # first position of the next chunk
    st = 0  # index into tokens
    for ed, (t, h, w), second_per_grid_t in items:
        h, w = h // spatial_merge_size, w // spatial_merge_size  # the llm grid
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
    return np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), dtype=np.int64)


def _find(tokens: np.ndarray, token_id: int, start: int) -> int:
    """Index of the first ``token_id`` at or after ``start``, or len + 1 when absent."""
    hits = np.nonzero(tokens[start:] == token_id)[0]
    return start + int(hits[0]) if hits.size else len(tokens) + 1
