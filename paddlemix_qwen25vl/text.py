"""The Qwen2.5 decoder: GQA attention with MRoPE, SwiGLU MLP, RMSNorm, a KV cache.

Built from the tensor-parallel blocks of :mod:`paddlemix_qwen25vl.distributed`: with
``mp.world_size == N`` each rank holds ``1/N`` of the heads, kv heads, MLP channels and
vocabulary; with the default ``SINGLE`` context they are plain ``nn.Linear``/``nn.Embedding``.

Dimensions:
    B: batch rows            L, Lq: new positions of this forward; Lk: cached + new keys
    C: hidden size           H, KVH: this rank's query / kv heads     D: head dim
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
from paddle.distributed.fleet.utils import recompute

from .attention import dense_attention, left_padding_starts, resolve_attn_implementation, sequence_runs, varlen_attention
from .attention_math import causal_padding_mask
from .cache import KVCache
from .configuration import Qwen2_5_VLConfig
from .distributed.context import SINGLE, ParallelContext
from .distributed.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from .layers import RMSNorm, SwiGLUMLP
from .rope import apply_rotary_qk, mrope_cos_sin, rotary_inv_freq
from .runtime import on_gpu

__all__ = ["Qwen2_5_VLTextModel"]


@dataclass
class AttentionLayout:
    """How this forward's tokens attend: an additive dense mask, or unpadded varlen sequences."""

    implementation: str  # the kernel this forward runs, resolved from config.attn_implementation
    mask: Optional[paddle.Tensor] = None  # [B, 1, Lq, Lk] for eager/sdpa
    key_starts: Optional[paddle.Tensor] = None  # [B]: the same mask for a CPU decode step of a left-padded batch
    rows_q: Optional[paddle.Tensor] = None  # flat indices of real queries in [B * Lq]
    rows_k: Optional[paddle.Tensor] = None  # flat indices of real keys in [B * Lk]
    cu_seqlens_q: Optional[np.ndarray] = None
    cu_seqlens_k: Optional[np.ndarray] = None


class DecoderAttention(nn.Layer):
    """Grouped-query self-attention; q/k/v projections with bias, o_proj without.

    Under tensor parallelism q/k/v are column-parallel and o_proj row-parallel: each rank
    attends with its own ``heads / mp`` query heads and ``kv_heads / mp`` kv heads (contiguous
    head ranges, so every rank keeps whole GQA groups) and caches only those.
    """

    def __init__(self, config: Qwen2_5_VLConfig, layer_idx: int, mp: ParallelContext = SINGLE) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = mp.shard(config.num_attention_heads, "num_attention_heads")  # local heads
        self.num_kv_heads = mp.shard(config.num_key_value_heads, "num_key_value_heads")
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        q_width, kv_width = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        self.q_proj = ColumnParallelLinear(hidden, q_width, mp=mp)
        self.k_proj = ColumnParallelLinear(hidden, kv_width, mp=mp)
        self.v_proj = ColumnParallelLinear(hidden, kv_width, mp=mp)
        self.o_proj = RowParallelLinear(q_width, hidden, bias=False, mp=mp)

    def forward(
        self,
        hidden_states: paddle.Tensor,
        cos: paddle.Tensor,
        sin_signed: paddle.Tensor,
        layout: AttentionLayout,
        cache: Optional[KVCache],
    ) -> paddle.Tensor:
        batch, q_len, _ = hidden_states.shape
        q = self.q_proj(hidden_states).reshape([batch, q_len, self.num_heads, self.head_dim])
        k = self.k_proj(hidden_states).reshape([batch, q_len, self.num_kv_heads, self.head_dim])
        v = self.v_proj(hidden_states).reshape([batch, q_len, self.num_kv_heads, self.head_dim])
        q, k = apply_rotary_qk(q, k, cos, sin_signed)  # cos/sin_signed: [B, Lq, 1, D]
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # [B, Lk, KVH, D]
        if layout.implementation == "flash_attention_2":
            k_len = k.shape[1]
            q_rows = paddle.gather(q.reshape([batch * q_len, self.num_heads, self.head_dim]), layout.rows_q)
            k_rows = paddle.gather(k.reshape([batch * k_len, self.num_kv_heads, self.head_dim]), layout.rows_k)
            v_rows = paddle.gather(v.reshape([batch * k_len, self.num_kv_heads, self.head_dim]), layout.rows_k)
            out_rows = varlen_attention(
                q_rows, k_rows, v_rows, layout.cu_seqlens_q, layout.cu_seqlens_k, layout.implementation, causal=True
            )
            out = paddle.scatter(paddle.zeros_like(q).reshape([batch * q_len, self.num_heads, -1]), layout.rows_q, out_rows)
        else:
            out = dense_attention(q, k, v, layout.mask, layout.implementation, key_starts=layout.key_starts)
        # o_proj takes this rank's heads and returns their contribution summed over all ranks.
        return self.o_proj(out.reshape([batch, q_len, self.num_heads * self.head_dim]))


class DecoderLayer(nn.Layer):
    """x + attn(input_layernorm(x)); x + mlp(post_attention_layernorm(x))."""

    def __init__(self, config: Qwen2_5_VLConfig, layer_idx: int, mp: ParallelContext = SINGLE) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(config, layer_idx, mp)
        self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size, config.hidden_act, bias=False, mp=mp)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: paddle.Tensor,
        cos: paddle.Tensor,
        sin_signed: paddle.Tensor,
        layout: AttentionLayout,
        cache: Optional[KVCache],
    ) -> paddle.Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cos, sin_signed, layout, cache)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


def _unpadded_layout(
    attention_mask: Optional[paddle.Tensor], batch: int, q_len: int, past_len: int
) -> AttentionLayout:
    """Real-token rows and sequence bounds for varlen flash attention (see ``sequence_runs``)."""
    mask = np.ones((batch, past_len + q_len), dtype=np.int64) if attention_mask is None else attention_mask.numpy()
    rows_q, rows_k, cu_q, cu_k = sequence_runs(mask, past_len)
    return AttentionLayout(
        "flash_attention_2",
        rows_q=paddle.to_tensor(rows_q),
        rows_k=paddle.to_tensor(rows_k),
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
    )


class RotaryFrequencies(nn.Layer):
    """The decoder's rotary ``inv_freq [D / 2]``, kept in float32 under any mixed precision."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # paddle.amp.decorate(level="O2") casts every other layer's floating buffers: in bfloat16
        # the angles at position 1000 would be off by up to ~2 rad (inference uses float32).
        self._cast_to_low_precision = False
        self.register_buffer("inv_freq", paddle.to_tensor(rotary_inv_freq(head_dim, theta)), persistable=False)


class Qwen2_5_VLTextModel(nn.Layer):
    """Token embeddings, decoder layers and the final norm (``model.*`` in checkpoints);
    ``mp`` splits them across tensor-parallel ranks (norms and rotary tables are replicated)."""

    def __init__(self, config: Qwen2_5_VLConfig, mp: ParallelContext = SINGLE) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, mp)
        self.layers = nn.LayerList([DecoderLayer(config, i, mp) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = RotaryFrequencies(config.head_dim, config.rope_theta)
        self.recompute = False

    def embed(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """Token embeddings ``[B, L, C]``. Like torch's ``Embedding(padding_idx=pad_token_id)``, the
        pad token's row is looked up as stored but its lookups send no gradient back."""
        embeds = self.embed_tokens(input_ids)
        if self.config.pad_token_id is None or not self.training:
            return embeds
        is_pad = (input_ids == self.config.pad_token_id).unsqueeze(-1)
        return paddle.where(is_pad, embeds.detach(), embeds)

    def forward(
        self,
        inputs_embeds: paddle.Tensor,
        position_ids: Optional[paddle.Tensor],
        attention_mask: Optional[paddle.Tensor] = None,
        past_key_values: Optional[KVCache] = None,
        rotary: Optional[Tuple[paddle.Tensor, paddle.Tensor]] = None,
    ) -> Tuple[paddle.Tensor, Optional[KVCache]]:
        """``inputs_embeds [B, L, C]``, ``position_ids [3, B, L]``, ``attention_mask [B, past + L]``
        (0 = padding; packed samples numbered 1, 2, ... attend only within themselves).
        ``rotary``: these positions' cos / signed sin tables ``[B, L, 1, D]`` already computed
        (a decode step's, :class:`~paddlemix_qwen25vl.rope.DecodeRotaryTable`), instead of position_ids."""
        batch, q_len, _ = inputs_embeds.shape
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        implementation = resolve_attn_implementation(self.config.attn_implementation, inputs_embeds)
        if implementation == "flash_attention_2" and q_len == 1 and not on_gpu():
            # One new token per sequence on the CPU: the operator has nothing to tile, and the
            # unpadded gather/scatter around it cost more than the attention. Same softmax, dense.
            implementation = "eager"
        if implementation == "flash_attention_2":
            layout = _unpadded_layout(attention_mask, batch, q_len, past_len)
        elif attention_mask is None and q_len == 1:  # one unpadded query at the end sees every key
            layout = AttentionLayout(implementation)
        else:
            mask = causal_padding_mask(attention_mask, batch, q_len, past_len, inputs_embeds.dtype)
            starts = left_padding_starts(attention_mask.numpy()) if q_len == 1 and not on_gpu() else None
            layout = AttentionLayout(implementation, mask=mask,
                                     key_starts=None if starts is None else paddle.to_tensor(starts))

        cos, sin_signed = rotary if rotary is not None else mrope_cos_sin(  # [B, L, 1, D]
            position_ids, self.rotary.inv_freq, self.config.mrope_section, inputs_embeds.dtype)

        hidden_states = inputs_embeds
        for layer in self.layers:
            # Reentrant recompute of a layer whose inputs all have stop_gradient (frozen embeddings,
            # text-only batch) returns a stop_gradient output: its LoRA weights would get no gradient.
            if self.recompute and self.training and not hidden_states.stop_gradient:
                hidden_states = recompute(layer, hidden_states, cos, sin_signed, layout, None)
            else:
                hidden_states = layer(hidden_states, cos, sin_signed, layout, past_key_values)
        return self.norm(hidden_states), past_key_values
