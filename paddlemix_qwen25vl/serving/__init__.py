"""Serving: the continuous-batching engine (:mod:`.engine`) and the OpenAI-compatible HTTP API on top of it."""

from .engine import Engine, EngineRequest, QueueFull, SamplingParams

__all__ = ["Engine", "EngineRequest", "QueueFull", "SamplingParams"]
