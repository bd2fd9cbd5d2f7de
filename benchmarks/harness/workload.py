"""The inputs every implementation gets: the chat-rendered prompts and synthetic images and
videos (deterministic, so every run sees the same pixels)."""
from __future__ import annotations

from typing import Any, Dict, List

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
# The chat template's rendering of one user turn, written out so that every implementation
# tokenizes exactly the same text whatever its template code does.
PROMPTS = {
    "image": SYSTEM + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
    "Describe this image in detail.<|im_end|>\n<|im_start|>assistant\n",
    "video": SYSTEM + "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
    "Describe what happens in this video.<|im_end|>\n<|im_start|>assistant\n",
    "text": SYSTEM + "<|im_start|>user\nWrite a short story about a lighthouse keeper.<|im_end|>\n"
    "<|im_start|>assistant\n",  # load-and-generate runs (benchmarks/full_memory.py)
}
VIDEO_FPS = 2.0


def synthetic_image(size: int, seed: int = 0) -> Any:
    """A deterministic size x size RGB PIL image: smooth colour gradients plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def synthetic_video(frames: int, size: int) -> List[Any]:
    """``frames`` PIL frames of a size x size scene that changes from frame to frame."""
    return [synthetic_image(size, seed=i) for i in range(frames)]


def media_kwargs(spec: Dict[str, Any], media: str) -> Dict[str, Any]:
    """Processor keyword arguments for the image or the video of ``spec``'s sizes."""
    if media == "video":
        return {"videos": [synthetic_video(spec["video_frames"], spec["video_size"])], "fps": [VIDEO_FPS]}
    return {"images": [synthetic_image(spec["image_size"])]}
