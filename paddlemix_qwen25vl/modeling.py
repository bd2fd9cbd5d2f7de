"""``Qwen2_5_VLForConditionalGeneration``: vision tower + Qwen2.5 decoder + LM head.

The vision features replace the image/video pad tokens of the prompt; MRoPE position ids
come from :func:`paddlemix_qwen25vl.rope.rope_index` whenever the caller gives none
(prefill, training) and from ``past length + rope_deltas`` when decoding with a cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.base.initializer import _global_bias_initializer, _global_weight_initializer
from paddlenlp.generation import GenerationConfig
from paddlenlp.transformers.model_outputs import ModelOutput
from paddlenlp.transformers.model_utils import PretrainedModel, no_init_weights

from .cache import KVCache
from .configuration import Qwen2_5_VLConfig, check_attn_implementation
from .distributed.checkpoints import load_model_weights, save_rank_checkpoint
from .distributed.context import SINGLE, ParallelContext, check_tensor_parallel_config, init_tensor_parallel
from .distributed.layers import ColumnParallelLinear, TiedLMHead
from .generation import generate
from .loading import resolve_model_path, save_weights
from .quantization import quantize_model, resolve_weight_kind, saved_quant_type
from .rope import DecodeRotaryTable, rope_index, rope_index_options
from .runtime import prepare_cpu, resolve_precision
from .text import Qwen2_5_VLTextModel
from .vision import Qwen2_5_VisionTransformer

__all__ = ["Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLPreTrainedModel", "Qwen2_5_VLCausalLMOutputWithPast"]

GridLike = Union[paddle.Tensor, np.ndarray, None]


@dataclass
class Qwen2_5_VLCausalLMOutputWithPast(ModelOutput):
    """Forward output: ``loss`` (with labels), ``logits [B, L, vocab]``, the KV cache and rope deltas ``[B, 1]``."""

    loss: Optional[paddle.Tensor] = None
    logits: Optional[paddle.Tensor] = None
    past_key_values: Optional[KVCache] = None
    rope_deltas: Optional[paddle.Tensor] = None


class _Unfilled(nn.initializer.Initializer):
    """Leaves a new parameter unallocated: its value is set later (by :func:`load_weights`)."""

    def forward(self, param: paddle.Tensor, block: Any = None) -> None:
        return None


class Qwen2_5_VLPreTrainedModel(PretrainedModel):
    """paddlenlp base: config class and the reference's weight initialisation."""

    config_class = Qwen2_5_VLConfig
    base_model_prefix = "model"

    def _init_weights(self, layer: nn.Layer) -> None:
        std = self.config.initializer_range
        if isinstance(layer, (nn.Linear, nn.Conv3D, nn.Embedding)):
            layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape).astype(layer.weight.dtype))
        if isinstance(layer, (nn.Linear, nn.Conv3D)) and layer.bias is not None:
            layer.bias.set_value(paddle.zeros_like(layer.bias))


def _tensor_parallel_degree(mp_degree: int, tensor_parallel_degree: Optional[int]) -> int:
    """``mp_degree``, or PaddleNLP's ``tensor_parallel_degree`` for it (whose "off" is -1)."""
    if tensor_parallel_degree is None:
        return mp_degree
    degree = max(tensor_parallel_degree, 1)
    if mp_degree not in (1, degree):
        raise ValueError(f"mp_degree={mp_degree} and tensor_parallel_degree={tensor_parallel_degree} disagree; pass one")
    return degree


class Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLPreTrainedModel):
    """Qwen2.5-VL for image/video-conditioned text generation and fine-tuning.

    ``mp`` (a :class:`~paddlemix_qwen25vl.distributed.ParallelContext`) splits the decoder
    and the vocabulary-parallel lm_head across tensor-parallel ranks; the vision tower is
    replicated on every rank (about 0.67B parameters, small next to the 7B/72B decoders,
    and splitting its short windowed-attention sequences would cost collectives per block
    for little memory).
    """

    def __init__(self, config: Qwen2_5_VLConfig, mp: ParallelContext = SINGLE) -> None:
        super().__init__(config)
        self.mp = mp
        # Both towers read config.attn_implementation at every forward: the one place it is stored.
        self.visual = Qwen2_5_VisionTransformer(config.vision_config, attn_implementation=config)
        self.model = Qwen2_5_VLTextModel(config, mp)
        if config.tie_word_embeddings:
            self.lm_head = TiedLMHead(self.model.embed_tokens)
        else:  # logits for this rank's vocabulary slice, gathered into [..., vocab]
            self.lm_head = ColumnParallelLinear(config.hidden_size, config.vocab_size, bias=False, mp=mp, gather_output=True)
        self.set_recompute(vision=config.recompute_vision, decoder=config.recompute_decoder)
        # A server attaches one (serving/vision_cache.py): repeated images are encoded once.
        self.vision_feature_cache = None
        # Defaults for generate(); from_pretrained replaces them with generation_config.json.
        self.generation_config = GenerationConfig.from_model_config(config)

    # ----------------------------------------------------------------- settings
    def set_recompute(self, vision: bool = True, decoder: bool = True) -> None:
        """Switch gradient checkpointing (recompute in backward) for the vision blocks and decoder layers."""
        self.config.recompute_vision, self.config.recompute_decoder = vision, decoder
        self.visual.recompute, self.model.recompute = vision, decoder

    def set_attn_implementation(self, implementation: str) -> None:
        """Use ``"eager"``, ``"sdpa"`` or ``"flash_attention_2"`` in both towers from now on
        (both read ``config.attn_implementation``)."""
        check_attn_implementation(implementation)
        self.config.attn_implementation = implementation

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Layer:
        return self.lm_head

    # ---------------------------------------------------------------- positions
    def get_rope_index(
        self,
        input_ids: paddle.Tensor,
        image_grid_thw: GridLike = None,
        video_grid_thw: GridLike = None,
        second_per_grid_ts: GridLike = None,
        attention_mask: Optional[paddle.Tensor] = None,
    ) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """MRoPE ``position_ids [3, B, L]`` and ``rope_deltas [B, 1]`` (int64), as the reference's method."""
        position_ids, deltas = rope_index(
            input_ids,
            image_grid_thw,
            video_grid_thw,
            second_per_grid_ts,
            attention_mask,
            **rope_index_options(self.config),
        )
        return paddle.to_tensor(position_ids), paddle.to_tensor(deltas)

    # ------------------------------------------------------------------ forward
    def _place_features(
        self, inputs_embeds: paddle.Tensor, input_ids: paddle.Tensor, features: paddle.Tensor, token_id: int, kind: str
    ) -> paddle.Tensor:
        """Write vision ``features [n, C]`` over the n ``token_id`` pad tokens, in order of appearance."""
        rows = paddle.nonzero(input_ids.reshape([-1]) == token_id).reshape([-1])
        if rows.shape[0] != features.shape[0]:
            raise ValueError(
                f"{kind} features and {kind} tokens do not match: the prompt has {rows.shape[0]} <|{kind}_pad|> "
                f"tokens but the {kind} inputs give {features.shape[0]} features (each pad token must be "
                "expanded to t*h*w/4 copies by the processor)"
            )
        batch, length, dim = inputs_embeds.shape
        flat = paddle.scatter(inputs_embeds.reshape([-1, dim]), rows, features.astype(inputs_embeds.dtype))
        return flat.reshape([batch, length, dim])

    def _decode_positions(self, batch: int, length: int, past_len: int, rope_deltas: paddle.Tensor) -> paddle.Tensor:
        """Decode-step positions: ``past_len + i + rope_delta`` on all three axes -> ``[3, B, L]``."""
        positions = paddle.arange(past_len, past_len + length, dtype="int64").reshape([1, -1])
        positions = positions + rope_deltas.astype("int64").reshape([-1, 1])
        return positions.expand([batch, length]).unsqueeze(0).expand([3, batch, length])

    def _decode_rotary(self, cache: Any, past_len: int, inputs_embeds: paddle.Tensor,
                       rope_deltas: paddle.Tensor) -> Optional[Tuple[paddle.Tensor, paddle.Tensor]]:
        """A decode step's rotary tables ``[B, L, 1, D]`` from the ones its preallocated
        :class:`KVCache` holds for the generation (built at its first decode step), or None for
        other caches (a growing cache, the serving engine's) or deltas the tables are not for."""
        if not isinstance(cache, KVCache) or cache.capacity is None or cache.capacity <= past_len:
            return None  # (a full cache: its update names the problem)
        batch, length, _ = inputs_embeds.shape
        if cache.rotary is None:
            positions = self._decode_positions(batch, cache.capacity - past_len, past_len, rope_deltas)
            cache.rotary = DecodeRotaryTable(rope_deltas, past_len, positions, self.model.rotary.inv_freq,
                                             self.config.mrope_section, inputs_embeds.dtype)
        return cache.rotary.rows(rope_deltas, past_len, length, inputs_embeds.dtype)

    def forward(
        self,
        input_ids: Optional[paddle.Tensor] = None,
        attention_mask: Optional[paddle.Tensor] = None,
        position_ids: Optional[paddle.Tensor] = None,
        past_key_values: Optional[KVCache] = None,
        inputs_embeds: Optional[paddle.Tensor] = None,
        labels: Optional[paddle.Tensor] = None,
        use_cache: Optional[bool] = None,
        pixel_values: Optional[paddle.Tensor] = None,
        pixel_values_videos: Optional[paddle.Tensor] = None,
        image_grid_thw: GridLike = None,
        video_grid_thw: GridLike = None,
        rope_deltas: Optional[paddle.Tensor] = None,
        second_per_grid_ts: GridLike = None,
        logits_to_keep: int = 0,
        return_logits: bool = True,
        return_dict: bool = True,
    ) -> Qwen2_5_VLCausalLMOutputWithPast:
        """Logits (and loss with ``labels``) for ``input_ids [B, L]`` with optional images and videos.

        ``pixel_values [N, 1176]`` + ``image_grid_thw [n, 3]`` (and the video counterparts)
        are encoded by the vision tower and placed at the pad tokens. ``labels [B, L]`` use
        -100 for unsupervised tokens; the loss is the mean shifted cross entropy in float32.
        ``logits_to_keep > 0`` computes logits for the last that many positions only (generation
        needs one: the vocabulary projection of a whole prompt is wasted work).
        ``return_logits=False`` with ``labels`` returns the loss alone, projecting only the
        supervised positions onto the vocabulary (what training needs, at a fraction of the cost).
        """
        if labels is None and not return_logits:
            raise ValueError("return_logits=False only makes sense with labels (the loss is all that is returned)")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        # 1. token embeddings, with the vision features over the image/video pad tokens
        if inputs_embeds is None:
            inputs_embeds = self.embed_with_vision(input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        elif pixel_values is not None or pixel_values_videos is not None:
            raise ValueError("pixel inputs need input_ids (to find the pad tokens), not inputs_embeds")
        # 2. the cache and the MRoPE positions
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = KVCache(self.config.num_hidden_layers)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        rotary = None
        if position_ids is None and past_len > 0 and rope_deltas is not None:
            rotary = self._decode_rotary(past_key_values, past_len, inputs_embeds, rope_deltas)
        if rotary is None:
            position_ids, rope_deltas = self._positions(
                input_ids, inputs_embeds, position_ids, attention_mask, past_len, rope_deltas,
                image_grid_thw, video_grid_thw, second_per_grid_ts,
            )
        # 3. the decoder
        hidden_states, past_key_values = self.model(inputs_embeds, position_ids, attention_mask, past_key_values, rotary)
        # 4. logits and loss
        if logits_to_keep > 0:
            if labels is not None:
                raise ValueError("logits_to_keep cannot be combined with labels (the loss needs every position)")
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states) if return_logits else None  # [B, L or logits_to_keep, vocab]
        loss = None if labels is None else self._loss(hidden_states, logits, labels)
        output = Qwen2_5_VLCausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None, rope_deltas=rope_deltas
        )
        return output if return_dict else output.to_tuple()

    def get_vision_features(self, pixel_values: paddle.Tensor, grid_thw: GridLike) -> paddle.Tensor:
        """The vision tower on ``pixel_values [N, 1176]`` of items ``grid_thw [n, 3]``: one
        embedding per pad token ``[N / 4, hidden]`` (images and videos alike). With a
        ``vision_feature_cache`` attached, the same pixels and grids are encoded once."""
        if self.vision_feature_cache is not None:
            return self.vision_feature_cache.features(pixel_values, grid_thw, self.visual)
        return self.visual(pixel_values, grid_thw=grid_thw)

    def embed_with_vision(
        self,
        input_ids: paddle.Tensor,
        pixel_values: Optional[paddle.Tensor] = None,
        image_grid_thw: GridLike = None,
        pixel_values_videos: Optional[paddle.Tensor] = None,
        video_grid_thw: GridLike = None,
    ) -> paddle.Tensor:
        """Token embeddings ``[B, L, hidden]`` of ``input_ids [B, L]`` with the vision features
        written over the image and video pad tokens."""
        inputs_embeds = self.model.embed(input_ids)
        for pixels, grid, token_id, kind in (
            (pixel_values, image_grid_thw, self.config.image_token_id, "image"),
            (pixel_values_videos, video_grid_thw, self.config.video_token_id, "video"),
        ):
            if pixels is not None:
                if grid is None:
                    raise ValueError(f"{kind} pixel values were given without {kind}_grid_thw")
                features = self.get_vision_features(pixels, grid)
                inputs_embeds = self._place_features(inputs_embeds, input_ids, features, token_id, kind)
        if self.training and pixel_values is None and pixel_values_videos is None and dist.get_world_size() > 1:
            inputs_embeds = inputs_embeds + self.visual.zero_touch(inputs_embeds.dtype)  # see zero_touch
        return inputs_embeds

    def _positions(
        self,
        input_ids: Optional[paddle.Tensor],
        inputs_embeds: paddle.Tensor,
        position_ids: Optional[paddle.Tensor],
        attention_mask: Optional[paddle.Tensor],
        past_len: int,
        rope_deltas: Optional[paddle.Tensor],
        image_grid_thw: GridLike,
        video_grid_thw: GridLike,
        second_per_grid_ts: GridLike,
    ) -> Tuple[paddle.Tensor, Optional[paddle.Tensor]]:
        """``(position_ids [3, B, L], rope_deltas)``: the caller's, :func:`rope_index`'s at the
        prefill, or past length + rope delta at a decode step."""
        batch, length, _ = inputs_embeds.shape
        if position_ids is not None:
            if position_ids.ndim == 2:  # text-only positions [B, L]: the same on all three axes
                position_ids = position_ids.unsqueeze(0).expand([3, batch, length])
            return position_ids, rope_deltas
        if past_len == 0:
            if attention_mask is not None and bool((attention_mask > 1).any()):
                raise ValueError("packed rows (attention_mask numbering samples 1, 2, ...) need position_ids per sample")
            if input_ids is None:
                raise ValueError("position_ids are required with inputs_embeds (no token ids to place vision items)")
            return self.get_rope_index(input_ids, image_grid_thw, video_grid_thw, second_per_grid_ts, attention_mask)
        if rope_deltas is None:
            raise ValueError("decoding with a cache needs rope_deltas: pass outputs.rope_deltas of the prefill step")
        return self._decode_positions(batch, length, past_len, rope_deltas), rope_deltas

    def generate(self, input_ids: paddle.Tensor, **kwargs: Any) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Greedy or sampled continuation of ``input_ids``: see :func:`paddlemix_qwen25vl.generation.generate`."""
        return generate(self, input_ids, **kwargs)

    def _loss(self, hidden_states: paddle.Tensor, logits: Optional[paddle.Tensor], labels: paddle.Tensor) -> paddle.Tensor:
        """Mean cross entropy of token t predicting label t + 1 over the supervised (!= -100) labels, in float32.

        Only supervised rows enter the cross entropy (Paddle's ``reduction="mean"`` would also
        count ignored ones); without ``logits``, only those rows go through the lm_head.
        """
        targets = labels[:, 1:].reshape([-1])
        rows = paddle.nonzero(targets != -100).reshape([-1])
        if logits is not None:
            row_logits = paddle.gather(logits[:, :-1].reshape([-1, logits.shape[-1]]), rows)
        else:
            hidden = hidden_states[:, :-1].reshape([-1, hidden_states.shape[-1]])
            row_logits = self.lm_head(paddle.gather(hidden, rows))  # [supervised, vocab]
        return F.cross_entropy(row_logits.astype("float32"), paddle.gather(targets, rows), reduction="mean")

    # ------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str,
        dtype: Optional[str] = None,
        attn_implementation: Optional[str] = None,
        config: Optional[Qwen2_5_VLConfig] = None,
        quant_type: Optional[str] = None,
        mp_degree: int = 1,
        tensor_parallel_degree: Optional[int] = None,
        tensor_parallel_rank: Optional[int] = None,
        tensor_parallel_output: Optional[bool] = None,
        **config_overrides: Any,
    ) -> "Qwen2_5_VLForConditionalGeneration":
        """Load a checkpoint directory or hub id (HF or Paddle format, one file or sharded).

        ``dtype`` defaults to float32 on CPU and the checkpoint's dtype on GPU; weights are
        converted while loading. On CPU ``dtype="bfloat16"`` keeps the Linear and embedding
        weights in bfloat16 and computes in float32 (:func:`~paddlemix_qwen25vl.runtime.resolve_precision`).
        ``quant_type`` (``"weight_only_int8"`` or ``"weight_only_int4"``, PaddleNLP's names) quantises
        those weights tensor by tensor as they are read (:mod:`paddlemix_qwen25vl.quantization`);
        a checkpoint saved quantised loads quantised without it. The model is returned in eval mode.

        ``mp_degree > 1`` loads a tensor-parallel rank: run one process per rank under
        ``python -m paddle.distributed.launch`` (gloo on CPU, NCCL on GPU). Each rank builds
        and reads only its slice of the decoder (plus the whole vision tower), from any full
        checkpoint or from a per-rank one saved with the same degree. A degree that does not
        divide the heads, kv heads, MLP width or vocabulary raises a ValueError before anything runs.

        PaddleMIX's and PaddleNLP's spellings work: ``tensor_parallel_degree`` is ``mp_degree``,
        ``tensor_parallel_rank`` (if given) must be this process's rank, and
        ``tensor_parallel_output`` may only be False (logits are gathered on every rank). Other
        keywords must be fields of the checkpoint's config (they override it); anything else is
        a TypeError naming them.
        """
        prepare_cpu()  # threads, and MKL's fast path on AMD CPUs, before the first matmul
        path = resolve_model_path(pretrained_model_name_or_path)
        if config is None:
            config = Qwen2_5_VLConfig.from_pretrained(path)
        mp_degree = _tensor_parallel_degree(mp_degree, tensor_parallel_degree)
        if tensor_parallel_output:
            raise ValueError("tensor_parallel_output=True (per-rank logits) is not supported: logits are gathered on every rank")
        unknown = sorted(field for field in config_overrides if not hasattr(config, field))
        if unknown:
            raise TypeError(
                f"from_pretrained() got unknown keyword argument(s) {', '.join(unknown)}: they are neither loading "
                "options (dtype, attn_implementation, config, quant_type, mp_degree / tensor_parallel_degree, tensor_parallel_rank, "
                "tensor_parallel_output) nor fields of the model config"
            )
        for field, value in config_overrides.items():
            setattr(config, field, value)
        if attn_implementation is not None:
            config.attn_implementation = attn_implementation
        config._validate()
        check_tensor_parallel_config(config, mp_degree)
        precision = resolve_precision(dtype, getattr(config, "dtype", None))
        weight_kind = resolve_weight_kind(quant_type, precision.weights, config, mp_degree)
        mp = init_tensor_parallel(mp_degree)
        if tensor_parallel_rank is not None and tensor_parallel_rank != mp.rank:
            raise ValueError(f"tensor_parallel_rank={tensor_parallel_rank}, but this process is tensor-parallel rank {mp.rank}")
        model = cls.build(config, precision.compute, mp)
        if weight_kind is not None:  # before loading: each weight is quantised as it is read
            quantize_model(model, weight_kind, prequantized=saved_quant_type(config) is not None)
        load_model_weights(model, path)
        generation_file = os.path.join(path, "generation_config.json")
        if os.path.exists(generation_file):
            model.generation_config = GenerationConfig.from_pretrained(path)
        model.eval()
        return model

    @classmethod
    def build(cls, config: Qwen2_5_VLConfig, dtype: str, mp: ParallelContext = SINGLE) -> "Qwen2_5_VLForConditionalGeneration":
        """An uninitialised model (this rank's share under ``mp``) with parameters in ``dtype``, to be
        loaded by :func:`~paddlemix_qwen25vl.loading.load_weights`: until then its parameters have no memory."""
        previous = paddle.get_default_dtype()
        previous_init = (_global_weight_initializer(), _global_bias_initializer())
        paddle.set_default_dtype(dtype)
        # Every weight is about to be overwritten (a missing one fails the load): parameters get
        # no memory until their value arrives (Paddle's Xavier draws, or even a zero fill, were
        # half of a CPU load's time).
        nn.initializer.set_global_initializer(_Unfilled(), _Unfilled())
        try:
            with no_init_weights():
                return cls(config, mp=mp)
        finally:
            nn.initializer.set_global_initializer(*previous_init)
            paddle.set_default_dtype(previous)

    def save_pretrained(self, save_directory: str, max_shard_size: int = 5 * 1024**3) -> None:
        """Write ``config.json``, ``generation_config.json`` and Paddle-layout safetensors weights.

        Under tensor parallelism every rank must call it: each writes its own slices (see
        :mod:`paddlemix_qwen25vl.distributed.checkpoints` for the layout and the merge tool).
        """
        os.makedirs(save_directory, exist_ok=True)
        if self.mp.world_size == 1 or self.mp.rank == 0:
            self.config.architectures = [type(self).__name__]
            self.config.save_pretrained(save_directory)
            if self.generation_config is not None:
                with open(os.path.join(save_directory, "generation_config.json"), "w") as f:
                    json.dump(self.generation_config.to_dict(), f, indent=2)
        if self.mp.world_size == 1:
            save_weights(self, save_directory, max_shard_bytes=max_shard_size)
        else:
            save_rank_checkpoint(self, save_directory, max_shard_bytes=max_shard_size)
