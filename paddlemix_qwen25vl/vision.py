"""The Qwen2.5-VL vision tower: a ViT with 2D rotary, window attention and a 2x2 patch merger.

Input rows are 14x14 patches over 2 frames (``[N, 3 * 2 * 14 * 14]``), ordered so that every
U = 4 consecutive rows form one 2x2 merge group; the output has one row per merge group, i.e.
per image/video pad token of the prompt.

Dimensions:
    N: patches (rows of pixel_values)     C: hidden size (1280)
    H: attention heads                    D: head dim (C // H)
    U: patches per merge group, spatial_merge_size ** 2 (4)
    M: merge groups, N // U (rows of the output, out_hidden_size wide)
"""

from __future__ import annotations

from typing import List, Protocol, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from .attention import varlen_attention
from .configuration import Qwen2_5_VLVisionConfig
from .layers import RMSNorm, SwiGLUMLP
from .rope import apply_rotary_qk, signed_sin, vision_rotary_freqs

__all__ = ["Qwen2_5_VisionTransformer", "window_index"]


class AttnImplementationSource(Protocol):
    """Anything with an ``attn_implementation`` attribute: the model's :class:`Qwen2_5_VLConfig`."""

    attn_implementation: str


def window_index(grid_thw: np.ndarray, window_merged: int, spatial_merge_size: int = 2) -> Tuple[np.ndarray, np.ndarray]:
    """Order of merge groups that makes every attention window contiguous, and window bounds.

    Per item, the merged grid (t, h / spatial_merge_size, w / spatial_merge_size) is padded to
    multiples of ``window_merged`` (the window's side in merge groups; a side already divisible
    still gets a full empty pad window, as in the reference), cut into windows of
    ``window_merged x window_merged`` merge groups, and the pad dropped. Returns ``index [M]``
    (new position -> original merge group) and ``cu_window_seqlens`` over patches, with empty
    windows removed.

    One frame of 3 x 5 merge groups, ``window_merged = 2`` (``.`` = pad)::

         0  1 |  2  3 |  4  .       windows in row order, each read row by row:
         5  6 |  7  8 |  9  .         A = 0 1 5 6   B = 2 3 7 8   C = 4 9
        ------+-------+------         D = 10 11     E = 12 13     F = 14
        10 11 | 12 13 | 14  .       index = 0 1 5 6 2 3 7 8 4 9 10 11 12 13 14
         .  . |  .  . |  .  .       cu_window_seqlens = U * [0, 4, 8, 10, 12, 14, 15]
    """
    spatial_merge_unit = spatial_merge_size**2
    pad = -100
    indices: List[np.ndarray] = []
    cu_seqlens = [0]
    offset = 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // spatial_merge_size, w // spatial_merge_size  # the merged grid
        ids = np.arange(t * gh * gw).reshape(t, gh, gw)
        pad_h = window_merged - gh % window_merged
        pad_w = window_merged - gw % window_merged
        nh, nw = (gh + pad_h) // window_merged, (gw + pad_w) // window_merged  # windows per column / row
        padded = np.pad(ids, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=pad)
        padded = padded.reshape(t, nh, window_merged, nw, window_merged).transpose(0, 1, 3, 2, 4)
        padded = padded.reshape(t, nh * nw, window_merged * window_merged)  # [t, windows, groups]
        sizes = (padded != pad).sum(-1).reshape(-1)  # merge groups per window
        flat = padded.reshape(-1)
        indices.append(flat[flat != pad] + offset)
        cu_seqlens.extend((np.cumsum(sizes) * spatial_merge_unit + cu_seqlens[-1]).tolist())
        offset += t * gh * gw
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    keep = np.concatenate([[True], cu[1:] != cu[:-1]])  # unique_consecutive: drop empty windows
    return np.concatenate(indices), cu[keep]


class VisionPatchEmbed(nn.Layer):
    """Conv3D with kernel = stride = (2, 14, 14) and no bias, run as the equivalent matmul."""

    def __init__(self, config: Qwen2_5_VLVisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
        kernel = [config.temporal_patch_size, config.patch_size, config.patch_size]
        self.proj = nn.Conv3D(config.in_channels, config.hidden_size, kernel, stride=kernel, bias_attr=False)

    @property
    def extra_parameters(self) -> List[paddle.Tensor]:
        """The conv weight, read here and not by ``proj``'s forward: sharding stage3 gathers a
        layer's own parameters and these before its forward, and ``proj`` never runs."""
        return [self.proj.weight]

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        weight = self.proj.weight.reshape([self.embed_dim, self.patch_dim])  # [C, 3*2*14*14]
        return paddle.matmul(pixel_values.astype(weight.dtype), weight, transpose_y=True)  # [N, C]


class VisionAttention(nn.Layer):
    """Multi-head self-attention within each window or frame (``cu_seqlens``), with 2D rotary."""

    def __init__(self, config: Qwen2_5_VLVisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: paddle.Tensor,
        cu_seqlens: np.ndarray,
        cos: paddle.Tensor,
        sin_signed: paddle.Tensor,
        implementation: str,
    ) -> paddle.Tensor:
        seq_len = hidden_states.shape[0]
        qkv = self.qkv(hidden_states).reshape([seq_len, 3, self.num_heads, self.head_dim])
        # One copy to [3, N, H, D] so that q, k, v are contiguous: Paddle's CPU
        # elementwise kernels (the rotary below) are much slower on the strided views of unbind(axis=1).
        q, k, v = qkv.transpose([1, 0, 2, 3]).contiguous().unbind(axis=0)  # each [N, H, D]
        # Rotary in float32 whatever the compute dtype (cos/sin_signed: [N, H, D]).
        q, k = apply_rotary_qk(q.astype("float32"), k.astype("float32"), cos, sin_signed)
        q, k = q.astype(v.dtype), k.astype(v.dtype)
        out = varlen_attention(q, k, v, cu_seqlens, cu_seqlens, implementation)  # [N, H, D]
        return self.proj(out.reshape([seq_len, -1]))


class VisionBlock(nn.Layer):
    """x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, config: Qwen2_5_VLVisionConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, eps=1e-6)
        self.norm2 = RMSNorm(config.hidden_size, eps=1e-6)
        self.attn = VisionAttention(config)
        self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size, config.hidden_act, bias=True)

    def forward(
        self, hidden_states: paddle.Tensor, cu_seqlens: np.ndarray, cos: paddle.Tensor, sin_signed: paddle.Tensor, implementation: str
    ) -> paddle.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), cu_seqlens, cos, sin_signed, implementation)
        return hidden_states + self.mlp(self.norm2(hidden_states))


class PatchMerger(nn.Layer):
    """RMSNorm, concatenate each merge group ``[M, U * C]`` (4 x 1280 -> 5120), Linear, exact GELU, Linear."""

    def __init__(self, config: Qwen2_5_VLVisionConfig) -> None:
        super().__init__()
        self.merged_dim = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = RMSNorm(config.hidden_size, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_dim, self.merged_dim),
            nn.GELU(),
            nn.Linear(self.merged_dim, config.out_hidden_size),
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.mlp(self.ln_q(x).reshape([-1, self.merged_dim]))


class Qwen2_5_VisionTransformer(nn.Layer):
    """``visual(pixel_values [N, 1176], grid_thw [items, 3]) -> [M, out_hidden_size]``."""

    def __init__(self, config: Qwen2_5_VLVisionConfig, attn_implementation: Union[str, AttnImplementationSource] = "sdpa") -> None:
        """``attn_implementation``: a kernel name for a standalone tower, or an object whose
        ``attn_implementation`` is read at every forward (the model passes its config, so that
        changing ``config.attn_implementation`` switches both towers)."""
        super().__init__()
        if config.spatial_merge_size != 2:
            raise ValueError(f"spatial_merge_size {config.spatial_merge_size} is unsupported; Qwen2.5-VL uses 2")
        self.config = config
        self._attn_source = attn_implementation
        self.recompute = False
        self.spatial_merge_unit = config.spatial_merge_size**2  # U
        # The window's merged side: window_size pixels in merge groups (112 // 2 // 14 = 4).
        self.window_merged = config.window_size // config.spatial_merge_size // config.patch_size
        self.head_dim = config.hidden_size // config.num_heads
        self.patch_embed = VisionPatchEmbed(config)
        self.blocks = nn.LayerList([VisionBlock(config) for _ in range(config.depth)])
        self.merger = PatchMerger(config)

    @property
    def attn_implementation(self) -> str:
        """The kernel the blocks run: the standalone name, or the model config's current choice."""
        source = self._attn_source
        return source if isinstance(source, str) else source.attn_implementation

    def _check_inputs(self, pixel_values: paddle.Tensor, grid: np.ndarray) -> None:
        patch_dim = self.patch_embed.patch_dim
        if pixel_values.ndim != 2 or pixel_values.shape[1] != patch_dim:
            raise ValueError(
                f"pixel_values must be [num_patches, {patch_dim}] (3 channels x 2 frames x 14 x 14), "
                f"got shape {list(pixel_values.shape)}"
            )
        if grid.ndim != 2 or grid.shape[1] != 3:
            raise ValueError(f"grid_thw must be [num_items, 3] (t, h, w), got shape {list(grid.shape)}")
        if (grid[:, 1:] % self.config.spatial_merge_size).any():
            raise ValueError(f"grid_thw heights and widths must be even (2x2 merge), got {grid.tolist()}")
        if int(grid.prod(-1).sum()) != pixel_values.shape[0]:
            raise ValueError(
                f"grid_thw {grid.tolist()} describes {int(grid.prod(-1).sum())} patches but pixel_values has "
                f"{pixel_values.shape[0]} rows"
            )

    def zero_touch(self, dtype: str) -> paddle.Tensor:
        """A zero scalar (in ``dtype``) that depends on every parameter of the tower: ``0 *`` the sum of
        its output on one blank 2x2-patch image.

        Data-parallel and sharded training reduce every trainable parameter's gradient on every
        rank (and stage3 gathers each layer's weights in its forward): a rank whose batch has no
        image must still run the tower, or the others wait for it forever. PaddleMIX's collator
        adds a fake image for the same reason; here the batch is left as it is.
        """
        pixels = paddle.zeros([self.spatial_merge_unit, self.patch_embed.patch_dim], dtype=self.patch_embed.proj.weight.dtype)
        side = self.config.spatial_merge_size  # one merge group: a frame of side x side patches
        return self(pixels, np.array([[1, side, side]])).sum().astype(dtype) * 0.0

    def forward(self, pixel_values: paddle.Tensor, grid_thw: Union[paddle.Tensor, np.ndarray]) -> paddle.Tensor:
        grid = grid_thw.numpy() if isinstance(grid_thw, paddle.Tensor) else np.asarray(grid_thw)
        grid = grid.astype(np.int64)
        self._check_inputs(pixel_values, grid)
        hidden_states = self.patch_embed(pixel_values)  # [N, C]
        seq_len, dim = hidden_states.shape

        # Reorder merge groups so that every window is contiguous; undone after the merger.
        order, cu_window = window_index(grid, self.window_merged, self.config.spatial_merge_size)
        order_t = paddle.to_tensor(order)
        grouped = hidden_states.reshape([-1, self.spatial_merge_unit, dim])  # [M, U, C]
        hidden_states = paddle.gather(grouped, order_t).reshape([seq_len, dim])
        freqs = vision_rotary_freqs(grid, self.head_dim, self.config.spatial_merge_size)  # [N, D / 2]
        freqs = freqs.reshape(-1, self.spatial_merge_unit, freqs.shape[-1])[order].reshape(seq_len, -1)
        emb = paddle.to_tensor(np.concatenate([freqs, freqs], axis=-1)).unsqueeze(1)  # [N, 1, D]
        # Expanded to every head once for all blocks: Paddle's CPU elementwise kernels are much
        # slower when they broadcast.
        cos = paddle.tile(emb.cos(), [1, self.config.num_heads, 1])  # [N, H, D]
        sin_signed = paddle.tile(signed_sin(emb.sin()), [1, self.config.num_heads, 1])  # the table apply_rotary takes

        # Full-attention blocks see whole frames: one sequence per (item, frame).
        frame_sizes = np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])
        cu_frames = np.concatenate([[0], np.cumsum(frame_sizes)])

        for index, block in enumerate(self.blocks):
            cu_seqlens = cu_frames if index in self.config.fullatt_block_indexes else cu_window
            if self.recompute and self.training and not hidden_states.stop_gradient:  # see the decoder's loop
                hidden_states = recompute(block, hidden_states, cu_seqlens, cos, sin_signed, self.attn_implementation)
            else:
                hidden_states = block(hidden_states, cu_seqlens, cos, sin_signed, self.attn_implementation)

        merged = self.merger(hidden_states)  # [M, out_hidden_size], in window order
        return paddle.gather(merged, paddle.to_tensor(np.argsort(order)))
