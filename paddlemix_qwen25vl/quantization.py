"""Low-memory inference: Linear and embedding weights kept in bfloat16, int8 or int4.

:func:`quantize_model` swaps, in place, every ``nn.Linear`` of the vision tower and the
decoder (and an untied lm_head) for a :class:`WeightOnlyLinear`, and on CPU the token
embedding for a :class:`WeightOnlyEmbedding` whose one ``[V, C]`` table also serves a tied
lm_head (:class:`WeightOnlyTiedHead`). Activations stay in the compute dtype (float32 on
CPU). What keeps its float weights, and why: the RMSNorm weights and every bias (a few
thousand values per layer, applied to float32 activations: nothing to gain), the patch-embed
Conv3D (1.5M values applied once per image to raw pixels) and the rotary tables (no weights).

Swapped on a model from ``build`` (nothing allocated yet), the layers quantise each weight as
it is read: :func:`~paddlemix_qwen25vl.loading.load_weights` hands every tensor to its layer's
``checkpoint_targets()``, so the float model never exists, and a bfloat16 checkpoint's words
become the bfloat16 weights as they are. A model saved with int8/int4 weights writes
``qweight``/``scales`` and ``config.quantization_config``, and loads back as stored; a
bfloat16 one writes an ordinary bfloat16 checkpoint.

Formats and CPU kernels: :mod:`.ops.weight_only`. On a GPU, int8/int4 use Paddle's
``weight_quantize`` / ``weight_only_linear`` on the float checkpoint (their own weight layout:
such a model is not saved, and a checkpoint saved quantised is not loaded there), the
embedding stays in the compute dtype, and bfloat16 runs natively (no swap).
Tensor parallelism (``mp_degree > 1``) is not supported here.

Dimensions:
    ...: leading axes ([B, L] in the decoder, [N] in the vision tower)
    in, out: a Linear's input / output features     V: vocabulary size     C: hidden size
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
from paddlenlp.quantization.quantization_config import QuantizationConfig

from .checkpoint_io import (CheckpointError, drop_mapped_pages, tensor_to_numpy, to_float32, to_paddle, weight_from_array,
                            weight_tensor)
from .distributed.layers import TiedLMHead
from .loading import Saved, Target, parameter_saved, parameter_target
from .ops.weight_only import (INT4_GROUP, WEIGHT_KINDS, check_quantized, ensure_weight_only_ops, quantize_weight,
                              weight_only_embedding, weight_only_matmul)
from .runtime import on_gpu

__all__ = [
    "QUANT_TYPES",
    "WeightOnlyLinear",
    "WeightOnlyEmbedding",
    "WeightOnlyTiedHead",
    "check_quant_type",
    "quantization_config",
    "saved_quant_type",
    "resolve_weight_kind",
    "quantize_model",
    "weight_kind",
]

logger = logging.getLogger(__name__)

QUANT_TYPES = ("weight_only_int8", "weight_only_int4")  # PaddleNLP's --quant_type names
# Output rows quantised at a time: bounds the float32 copy of a large weight (the 3B's
# embedding would be 1.2 GB at once).
_ROWS_PER_CHUNK = 8192
_GPU_WEIGHT_DTYPE = {"weight_only_int8": "int8", "weight_only_int4": "int4"}


def check_quant_type(quant_type: Optional[str]) -> Optional[str]:
    """``quant_type`` if it is None or one of :data:`QUANT_TYPES`, else a ValueError naming them."""
    if quant_type is not None and quant_type not in QUANT_TYPES:
        raise ValueError(f"unknown quant_type {quant_type!r}; use one of {', '.join(QUANT_TYPES)} (or None: float weights)")
    return quant_type


def _group_size(kind: str) -> int:
    return INT4_GROUP if kind == "weight_only_int4" else -1  # -1: one scale per output channel


def quantization_config(kind: str) -> QuantizationConfig:
    """PaddleNLP's record of a weight-only checkpoint (``config.json``'s ``quantization_config``):
    ``quant_type`` and ``weight_quantize_algo`` name the kind; int4's group is ``weight_blocksize``."""
    blocks = {"weight_blocksize": INT4_GROUP} if kind == "weight_only_int4" else {}
    return QuantizationConfig(weight_quantize_algo=kind, quant_type=kind, **blocks)


def saved_quant_type(config: Any) -> Optional[str]:
    """The quant_type a checkpoint was saved with (``config.quantization_config``), or None."""
    settings = getattr(config, "quantization_config", None)
    kind = getattr(settings, "quant_type", None)
    if kind is None:
        return None
    check_quant_type(kind)
    if kind == "weight_only_int4" and settings.weight_blocksize != INT4_GROUP:
        raise CheckpointError(f"quantization_config: {kind} checkpoints of this library use weight_blocksize {INT4_GROUP}, "
                              f"found {settings.weight_blocksize}")
    return kind


def resolve_weight_kind(quant_type: Optional[str], precision_weights: Optional[str], config: Any, mp_degree: int) -> Optional[str]:
    """The weight kind ``from_pretrained`` builds (None: plain float layers).

    ``quant_type`` (checked) wins over ``precision_weights`` (bfloat16 weights on CPU, from
    :func:`~paddlemix_qwen25vl.runtime.resolve_precision`); a checkpoint saved quantised loads
    as it was saved (another ``quant_type`` is an error). Under tensor parallelism quantisation
    is refused and bfloat16 weights fall back to float32 with a warning.
    """
    saved = saved_quant_type(config)
    check_quant_type(quant_type)
    if saved is not None and quant_type not in (None, saved):
        raise ValueError(f"the checkpoint is already quantised ({saved}): it cannot be loaded with quant_type={quant_type!r}")
    kind = saved or quant_type
    if saved is not None and on_gpu():
        raise ValueError(f"the checkpoint was saved quantised ({saved}) for the CPU kernels: on a GPU, load the float "
                         f"checkpoint with quant_type={saved!r} (Paddle's GPU kernels quantise it themselves)")
    if mp_degree > 1:
        if kind is not None:
            raise ValueError(f"quant_type {kind!r} is not supported with tensor parallelism (mp_degree={mp_degree}): load with mp_degree=1")
        if precision_weights is not None:
            logger.warning("bfloat16 weights on CPU are not supported with tensor parallelism: running in float32 instead")
        return None
    return kind or precision_weights


class _WeightOnlyLayer(nn.Layer):
    """A weight held as ``kind`` in the output-major layout ``[out, in]`` of :mod:`.ops.weight_only`.

    Before loading it holds nothing; ``checkpoint_targets()`` tells the loader which tensors it
    takes: the float weight (quantised as it arrives) or, ``prequantized``, its ``qweight`` and
    ``scales`` as saved. ``transposed``: the float weight is stored ``[in, out]`` (Paddle's Linear).
    """

    transposed = False

    def __init__(self, out_features: int, in_features: int, float_dtype: paddle.dtype, kind: str, prequantized: bool = False) -> None:
        super().__init__()
        if kind not in WEIGHT_KINDS:
            raise ValueError(f"unknown weight kind {kind!r}; use one of {', '.join(WEIGHT_KINDS)}")
        self.out_features, self.in_features, self.kind = out_features, in_features, kind
        self.prequantized = prequantized and kind != "bfloat16"  # bfloat16 is saved as a plain weight
        self.gpu = on_gpu() and kind != "bfloat16"
        self.float_dtype = float_dtype  # the compute dtype (what Paddle's GPU kernels quantise from)
        self._pending: Dict[str, paddle.Tensor] = {}  # a saved qweight waiting for its scales, or the reverse
        self.register_buffer("qweight", None, persistable=True)  # set when loaded
        self.register_buffer("scales", None, persistable=True)

    # ------------------------------------------------------------------ loading
    def _float_shape(self) -> Tuple[int, int]:
        return (self.in_features, self.out_features) if self.transposed else (self.out_features, self.in_features)

    def _quantized_shapes(self) -> Dict[str, Tuple[Tuple[int, ...], str]]:
        """``{name: (shape, safetensors dtype)}`` of the stored ``qweight`` and ``scales``."""
        out, k = self.out_features, self.in_features
        if self.kind == "weight_only_int8":
            return {"qweight": ((out, k), "I8"), "scales": ((out,), "F32")}
        return {"qweight": ((out, (k + 1) // 2), "U8"), "scales": ((out, -(-k // INT4_GROUP)), "F32")}

    def checkpoint_targets(self) -> Dict[str, Target]:
        """The tensors this layer loads (its own; a bias is added by the subclass)."""
        if not self.prequantized:
            return {"weight": Target(self._float_shape(), self.take_float)}
        return {
            name: Target(shape, lambda value, dtype_name, n=name, d=dtype: self._take_quantized(n, d, value, dtype_name))
            for name, (shape, dtype) in self._quantized_shapes().items()
        }

    def take_float(self, value: np.ndarray, dtype_name: str) -> None:
        """Quantise a float weight (stored dtype ``dtype_name``, this layer's float layout)."""
        if self.gpu:  # only Linear layers are swapped there: value is [in, out], what Paddle's kernels quantise
            self._set_gpu(to_paddle(value, dtype_name, self.float_dtype))
            return
        rows = value.T if self.transposed else value  # [out, in]; a torch Linear weight's own layout (no copy)
        if self.kind == "bfloat16" and dtype_name == "BF16":
            self._set(weight_from_array(rows).view(paddle.bfloat16), None)  # the stored words, as they are
            return
        self._set(*_quantized_by_chunks(rows, dtype_name, self.kind))

    def _take_quantized(self, name: str, expected: str, value: np.ndarray, dtype_name: str) -> None:
        if dtype_name != expected:
            raise CheckpointError(f"{self.kind} {name} must be stored as {expected}, found {dtype_name}")
        self._pending[name] = weight_from_array(value)
        if len(self._pending) < 2:
            return  # the other half comes next
        self._set(self._pending.pop("qweight"), self._pending.pop("scales"))

    def _set(self, qweight: paddle.Tensor, scales: Optional[paddle.Tensor]) -> None:
        if not self.gpu:  # checked once here: forward skips the checks (weight_only_matmul)
            check_quantized(qweight, scales, self.kind)
        self.register_buffer("qweight", qweight, persistable=True)
        self.register_buffer("scales", scales, persistable=True)

    def _set_gpu(self, weight: paddle.Tensor) -> None:
        """``weight [in, out]`` in Paddle's GPU weight-only layout."""
        qweight, scales = paddle.nn.quant.weight_quantize(weight, algo=self.kind, group_size=_group_size(self.kind))
        self._set(qweight, scales)

    # ------------------------------------------------------------------- saving
    def checkpoint_tensors(self) -> Dict[str, Saved]:
        """The tensors this layer saves: bfloat16 as a plain ``weight``, int8/int4 as ``qweight`` and ``scales``."""
        if self.gpu:
            raise NotImplementedError(
                "a model quantised on a GPU holds Paddle's GPU weight layout and is not saved: save the float "
                "checkpoint and pass quant_type to from_pretrained"
            )
        if self.kind == "bfloat16":
            return {"weight": Saved(self._float_shape(), "BF16", lambda: _words(self.qweight, self.transposed))}
        return {
            name: Saved(shape, dtype, lambda n=name: tensor_to_numpy(getattr(self, n))[0])
            for name, (shape, dtype) in self._quantized_shapes().items()
        }

    def extra_repr(self) -> str:
        return f"out={self.out_features}, in={self.in_features}, kind={self.kind}"


def _quantized_by_chunks(rows: np.ndarray, dtype_name: str, kind: str) -> Tuple[paddle.Tensor, Optional[paddle.Tensor]]:
    """``(qweight, scales)`` of the stored float weight ``rows [out, in]``, quantised
    _ROWS_PER_CHUNK rows at a time (rows are independent) into tensors allocated once: neither a
    float32 copy nor a concatenation ever holds the whole weight (the 3B's embedding is 1.2 GB
    in float32, and a concatenation would need its quantised size twice). qweight is a
    :func:`weight_tensor` (huge pages), even for one chunk: decode streams it every step."""
    qweight = scales = None
    for start in range(0, rows.shape[0], _ROWS_PER_CHUNK):
        stored = rows[start:start + _ROWS_PER_CHUNK]
        chunk = paddle.to_tensor(np.ascontiguousarray(to_float32(stored, dtype_name)))
        drop_mapped_pages(stored)  # read: its file pages need not stay in this process
        q, s = quantize_weight(chunk, kind)
        if qweight is None:
            qweight = weight_tensor([rows.shape[0], *q.shape[1:]], q.dtype)
            scales = None if s is None else paddle.empty([rows.shape[0], *s.shape[1:]], dtype=s.dtype)
        qweight[start:start + q.shape[0]] = q
        if s is not None:
            scales[start:start + s.shape[0]] = s
    return qweight, scales


def _words(qweight: paddle.Tensor, transposed: bool) -> np.ndarray:
    words = tensor_to_numpy(qweight)[0]  # [out, in] uint16
    return words.T if transposed else words


class WeightOnlyLinear(_WeightOnlyLayer):
    """``y = x W + b`` with ``W`` held as ``kind`` (``x [..., in]`` -> ``[..., out]``); the bias
    (the replaced Linear's parameter) stays in the compute dtype."""

    transposed = True

    def __init__(self, linear: nn.Linear, kind: str, prequantized: bool = False) -> None:
        in_features, out_features = linear.weight.shape
        super().__init__(out_features, in_features, linear.weight.dtype, kind, prequantized)
        self.bias = linear.bias

    def checkpoint_targets(self) -> Dict[str, Target]:
        bias = {} if self.bias is None else {"bias": parameter_target(self.bias)}
        return {**super().checkpoint_targets(), **bias}

    def checkpoint_tensors(self) -> Dict[str, Saved]:
        bias = {} if self.bias is None else {"bias": parameter_saved(self.bias)}
        return {**super().checkpoint_tensors(), **bias}

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.gpu:
            return paddle.nn.quant.weight_only_linear(
                x, self.qweight, bias=self.bias, weight_scale=self.scales,
                weight_dtype=_GPU_WEIGHT_DTYPE[self.kind], group_size=_group_size(self.kind),
            )
        return weight_only_matmul(x, self.qweight, self.scales, self.bias, self.kind)


class WeightOnlyEmbedding(_WeightOnlyLayer):
    """Token embedding ``[V, C]`` held as ``kind`` (rows dequantised as they are looked up);
    :meth:`project` is the tied lm_head on the same table."""

    def __init__(self, embedding: nn.Embedding, kind: str, prequantized: bool = False) -> None:
        super().__init__(*embedding.weight.shape, embedding.weight.dtype, kind, prequantized)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """``input_ids [...]`` -> ``[..., C]``."""
        return weight_only_embedding(input_ids.astype("int64"), self.qweight, self.scales, self.kind)

    def project(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        """Logits ``[..., V]`` of ``hidden_states [..., C]`` against the table."""
        return weight_only_matmul(hidden_states, self.qweight, self.scales, None, self.kind)


class WeightOnlyTiedHead(nn.Layer):
    """The tied lm_head on a :class:`WeightOnlyEmbedding` (one quantised table serves both)."""

    def __init__(self, embedding: WeightOnlyEmbedding) -> None:
        super().__init__()
        self._embedding = [embedding]  # a list keeps it out of this layer's sublayers and checkpoint

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        return self._embedding[0].project(hidden_states)


def _swap(parent: nn.Layer, name: str, new: nn.Layer) -> None:
    parent._sub_layers[name] = new  # keeps its place (nn.Sequential runs its layers in that order)


def _quantize_now(old: nn.Layer, new: _WeightOnlyLayer) -> None:
    """Quantise a layer that already holds its float weight (a model quantised after loading)."""
    if old.weight._is_initialized():
        new.take_float(*tensor_to_numpy(old.weight))


def quantize_model(model: nn.Layer, kind: str, prequantized: bool = False) -> nn.Layer:
    """Swap, in place, ``model``'s (a ``Qwen2_5_VLForConditionalGeneration``) Linear layers, and
    on CPU its embedding and tied lm_head, for weight-only layers of ``kind`` (one of
    ``"bfloat16"``, ``"weight_only_int8"``, ``"weight_only_int4"``).

    On a model from ``build`` the layers wait for :func:`~paddlemix_qwen25vl.loading.load_weights`
    (of float weights, or with ``prequantized`` of a checkpoint saved quantised); layers that
    already hold weights are quantised now. int8/int4 set ``config.quantization_config``.
    Returns ``model``.
    """
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"unknown weight kind {kind!r}; use one of {', '.join(WEIGHT_KINDS)}")
    if model.mp.world_size > 1:
        raise ValueError(f"weight-only {kind} is not supported with tensor parallelism (mp_degree={model.mp.world_size})")
    if kind == "bfloat16" and on_gpu():
        raise ValueError("bfloat16 weight-only layers are for the CPU: on a GPU load with dtype='bfloat16' (native bfloat16)")
    swaps = [(parent, name, child) for parent in model.sublayers(include_self=True)
             for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    for parent, name, linear in swaps:
        _swap(parent, name, WeightOnlyLinear(linear, kind, prequantized))
        _quantize_now(linear, parent._sub_layers[name])
    if not on_gpu():
        ensure_weight_only_ops()
        text = model.model
        embedding = WeightOnlyEmbedding(text.embed_tokens, kind, prequantized)
        _quantize_now(text.embed_tokens, embedding)
        text.embed_tokens = embedding
        if isinstance(model.lm_head, TiedLMHead):
            model.lm_head = WeightOnlyTiedHead(embedding)
    if kind in QUANT_TYPES:
        model.config.quantization_config = quantization_config(kind)
    return model


def weight_kind(model: nn.Layer) -> str:
    """How ``model``'s decoder weights are held: a weight kind, or the float dtype of its parameters."""
    layer = model.model.layers[0].mlp.down_proj
    return layer.kind if isinstance(layer, _WeightOnlyLayer) else str(layer.weight.dtype).replace("paddle.", "")
