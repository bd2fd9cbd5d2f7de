"""Grounding answers: parse Qwen2.5-VL boxes and points, map them to the original image, draw them.

Qwen2.5-VL answers in absolute pixels of the *resized* image the model saw, as JSON such as
``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]`` or ``[{"point_2d": [x, y], "label": "eye"}]``,
often inside a ```json fence or surrounded by text, and sometimes cut off by max_new_tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

__all__ = ["GroundingItem", "parse_grounding", "to_original", "to_resized", "draw_grounding"]

_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL)
_OBJECT = re.compile(r"\{[^{}]*\}")


@dataclass(frozen=True)
class GroundingItem:
    """One answer entry: a box ``(x1, y1, x2, y2)`` or a point ``(x, y)``, with its label."""

    label: str
    box: Optional[Tuple[float, float, float, float]] = None
    point: Optional[Tuple[float, float]] = None


def _item(entry: object) -> Optional[GroundingItem]:
    if not isinstance(entry, dict):
        return None
    label = str(entry.get("label", ""))
    box, point = entry.get("bbox_2d"), entry.get("point_2d")
    try:
        if isinstance(box, (list, tuple)) and len(box) == 4:
            x1, y1, x2, y2 = (float(v) for v in box)
            return GroundingItem(label, box=(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
        if isinstance(point, (list, tuple)) and len(point) == 2:
            return GroundingItem(label, point=(float(point[0]), float(point[1])))
    except (TypeError, ValueError):
        return None
    return None


def parse_grounding(answer: str) -> List[GroundingItem]:
    """Boxes and points in ``answer``; entries that are malformed or cut off are skipped."""
    fenced = _FENCE.search(answer)
    text = fenced.group(1) if fenced else answer
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start >= 0:
        try:
            parsed = json.loads(text[start:])
            entries = parsed if isinstance(parsed, list) else [parsed]
            return [item for item in map(_item, entries) if item is not None]
        except json.JSONDecodeError:
            pass
    # Truncated or surrounded by prose: keep every complete {...} object that parses.
    items = []
    for match in _OBJECT.finditer(text):
        try:
            item = _item(json.loads(match.group(0)))
        except json.JSONDecodeError:
            continue
        if item is not None:
            items.append(item)
    return items


def _scale(item: GroundingItem, sx: float, sy: float, width: float, height: float) -> GroundingItem:
    clamp_x = lambda v: min(max(v * sx, 0.0), width)  # noqa: E731
    clamp_y = lambda v: min(max(v * sy, 0.0), height)  # noqa: E731
    if item.box is not None:
        x1, y1, x2, y2 = item.box
        return replace(item, box=(clamp_x(x1), clamp_y(y1), clamp_x(x2), clamp_y(y2)))
    x, y = item.point
    return replace(item, point=(clamp_x(x), clamp_y(y)))


def to_original(items: Sequence[GroundingItem], resized_hw: Tuple[int, int], original_hw: Tuple[int, int]) -> List[GroundingItem]:
    """Map coordinates of the resized image the model saw (h, w) to the original image (h, w), clamped."""
    (rh, rw), (oh, ow) = resized_hw, original_hw
    return [_scale(item, ow / rw, oh / rh, ow, oh) for item in items]


def to_resized(items: Sequence[GroundingItem], original_hw: Tuple[int, int], resized_hw: Tuple[int, int]) -> List[GroundingItem]:
    """Inverse of :func:`to_original` (e.g. to build grounding training targets)."""
    return to_original(items, original_hw, resized_hw)


def draw_grounding(image: Image.Image, items: Sequence[GroundingItem], color: str = "red") -> Image.Image:
    """A copy of ``image`` with each box drawn as a rectangle and each point as a dot, labelled."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 200))
    for item in items:
        if item.box is not None:
            draw.rectangle(item.box, outline=color, width=width)
            anchor = (item.box[0] + width, item.box[1] + width)
        else:
            x, y = item.point
            r = 3 * width
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
            anchor = (x + r, y + r)
        if item.label:
            draw.text(anchor, item.label, fill=color)
    return canvas
