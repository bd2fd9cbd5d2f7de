"""Logging shared by the library: warnings that say something once per process."""

from __future__ import annotations

import logging

__all__ = ["warn_once"]

_warned = set()  # (logger name, message) pairs already logged


def warn_once(logger: logging.Logger, message: str) -> None:
    """Log ``message`` as a warning on ``logger`` the first time this process asks, then never again."""
    key = (logger.name, message)
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)
