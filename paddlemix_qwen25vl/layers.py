"""Building blocks shared by the vision tower and the decoder: RMSNorm and the SwiGLU MLP.

Dimensions:
    ...: any leading axes ([N] in the vision tower, [B, L] in the decoder)
    C: hidden size     I: MLP intermediate size (this rank's share under tensor parallelism)
"""

from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.incubate.nn.functional import fused_rms_norm

from .cpu import fused_rms_norm_allowed
from .distributed.context import SINGLE, ParallelContext
from .distributed.layers import ColumnParallelLinear, RowParallelLinear

__all__ = ["RMSNorm", "SwiGLUMLP", "ACT2FN"]

# Every released Qwen2.5-VL uses SiLU in both towers (the merger's GELU is its own layer).
ACT2FN = {"silu": F.silu}


class RMSNorm(nn.Layer):
    """Root-mean-square norm; the variance is taken in float32 whatever the input dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))
        self.variance_epsilon = eps

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        """``[..., C]`` -> ``[..., C]``."""
        if hidden_states.dtype == paddle.float32 and not paddle.is_grad_enabled() and fused_rms_norm_allowed():
            # Inference: Paddle's fused kernel is one op instead of six (a decode step's norms
            # are dispatch-bound); it has no CPU backward, hence not under autograd, and its CPU
            # kernel needs AVX-512.
            return fused_rms_norm(hidden_states, self.weight, None, self.variance_epsilon, hidden_states.ndim - 1)[0]
        input_dtype = hidden_states.dtype
        low_precision = input_dtype != paddle.float32  # astype costs a Python call even when it is a no-op
        if low_precision:
            hidden_states = hidden_states.astype("float32")
        variance = paddle.square(hidden_states).mean(-1, keepdim=True)  # square: Paddle's CPU pow is far slower
        hidden_states = hidden_states * paddle.rsqrt(variance + self.variance_epsilon)
        return self.weight * (hidden_states.astype(input_dtype) if low_precision else hidden_states)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


class SwiGLUMLP(nn.Layer):
    """down(act(gate(x)) * up(x)); with bias in the vision tower, without in the decoder.

    gate/up are column-parallel and down row-parallel under tensor parallelism (``mp``);
    with the default single-process context they are plain ``nn.Linear`` layers.
    """

    def __init__(
        self, hidden_size: int, intermediate_size: int, hidden_act: str, bias: bool, mp: ParallelContext = SINGLE
    ) -> None:
        super().__init__()
        self.gate_proj = ColumnParallelLinear(hidden_size, intermediate_size, bias=bias, mp=mp)
        self.up_proj = ColumnParallelLinear(hidden_size, intermediate_size, bias=bias, mp=mp)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias, mp=mp)
        if hidden_act not in ACT2FN:
            raise ValueError(f"unsupported hidden_act {hidden_act!r}; expected one of {', '.join(ACT2FN)}")
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """``[..., C]`` -> gate, up ``[..., I]`` -> ``[..., C]``."""
        if paddle.is_grad_enabled():
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        hidden = self.act_fn(self.gate_proj(x))
        hidden.multiply_(self.up_proj(x))  # in place: no graph keeps the activation, one [..., I] buffer fewer
        return self.down_proj(hidden)
