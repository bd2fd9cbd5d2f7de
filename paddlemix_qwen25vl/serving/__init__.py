"""Serving: the continuous-batching engine (:mod:`.engine`) and the OpenAI-compatible HTTP API on top of it."""

from .engine import Engine, EngineRequest, QueueFull, SamplingParams
from .vision_cache import VisionFeatureCache

__all__ = ["Engine", "EngineRequest", "QueueFull", "SamplingParams", "VisionFeatureCache"]
