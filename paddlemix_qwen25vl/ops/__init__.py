"""Custom operators (compiled from ``external_ops/``) and their pure-paddle fallbacks.

``flash_attn_varlen_func`` runs the compiled operator when it is available
(:func:`has_flash_attn_op`) and otherwise the slower :func:`varlen_attention_reference`,
logging one warning. :func:`build_ops` compiles the operators just in time.
:mod:`.decode_attention` runs a CPU decode step's attention as one operator when it is built.
"""
from .loader import build_ops, has_flash_attn_op
from .varlen_attention import flash_attn_varlen_func, varlen_attention_reference

__all__ = ["build_ops", "flash_attn_varlen_func", "has_flash_attn_op", "varlen_attention_reference"]
