"""Where the files that ship with the library live: in an installed package (wheel or
``pip install .``) under ``paddlemix_qwen25vl/_bundled/``, in a source checkout at the
repository's top level. Both hold the same tree:

    configs/            released model configs (presets) and PaddleMIX's data configs
    examples/assets/    demo images and video, the trained demo weights
    external_ops/       the custom operators' sources and build flags
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED_TREES", "resource_path"]

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = PACKAGE_DIR / "_bundled"  # filled by setup.py's build step
CHECKOUT_DIR = PACKAGE_DIR.parent
BUNDLED_TREES = ("configs", "examples/assets", "external_ops")


def resource_path(relative: str) -> Path:
    """The shipped file or folder ``relative`` (for example ``"configs/qwen2_5_vl_3b"``).

    The installed copy wins; otherwise the source checkout's. When neither exists the
    checkout path is returned, so the caller's error names where it looked.
    """
    bundled = BUNDLED_DIR / relative
    return bundled if bundled.exists() else CHECKOUT_DIR / relative
