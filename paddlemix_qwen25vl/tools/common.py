"""What the offline checkpoint tools in ``examples/`` share."""

from __future__ import annotations

import logging

from ..runtime import has_gpu, set_device

__all__ = ["tool_device"]

logger = logging.getLogger(__name__)


def tool_device(requested: str) -> str:
    """PaddleMIX's ``--device`` (default ``gpu``): selected when there is a GPU, else CPU with a notice."""
    if requested.lower().startswith(("gpu", "cuda")) and not has_gpu():
        logger.warning(f"NOTICE: --device {requested}: no GPU found, running on CPU")
        requested = "cpu"
    try:
        return set_device(requested)
    except ValueError as err:
        raise SystemExit(str(err)) from None
