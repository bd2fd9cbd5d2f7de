"""Load the images and videos named in chat messages (the qwen-vl-utils behaviour).

Items are dicts such as {"type": "image", "image": "a.jpg", "max_pixels": ...} or
{"type": "video", "video": "b.mp4", "fps": 1.0}; see `fetch_image` and `fetch_video`.
"""
import io
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from .image_processing import MAX_PIXELS, MIN_PIXELS, smart_resize, to_rgb
from .sources import resolve_source
from .video import FPS, FRAME_FACTOR, read_video_decord

IMAGE_FACTOR = 28
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
# Pixel budget of a whole video, shared by its frames (qwen-vl-utils' default).
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)

Message = Dict[str, Any]


def load_image(image: Union[str, Image.Image]) -> Image.Image:
    """A PIL image from a PIL image, local path, file://, http(s):// or data:image/...;base64 URL.

    Raises FileNotFoundError for a missing file and ValueError for data that is not an image.
    """
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, str):
        raise TypeError(f"an image must be a path, URL or PIL.Image, got {type(image).__name__}")
    source = resolve_source(image)
    name = source if isinstance(source, str) else image[:80]
    try:
        loaded = Image.open(source if isinstance(source, str) else io.BytesIO(source))
        loaded.load()  # decode now: Image.open is lazy and a truncated file fails only here
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {name}: {e}") from e
    return loaded


def _target_size(ele: Dict[str, Any], height: int, width: int, min_pixels: int, max_pixels: int) -> Tuple[int, int]:
    """Size to resize to: the item's resized_height/resized_width if given, else its own, within the budget."""
    if "resized_height" in ele and "resized_width" in ele:
        return smart_resize(ele["resized_height"], ele["resized_width"], factor=IMAGE_FACTOR)
    return smart_resize(height, width, factor=IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)


def fetch_image(ele: Dict[str, Any], size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """Load `ele["image"]` (or `ele["image_url"]`), convert to RGB (RGBA onto white) and resize
    (bicubic) to `size` = (height, width) if given, else to the smart_resize of its size with
    the item's min_pixels / max_pixels (defaults 3136 / 12845056) or resized_height / resized_width.
    """
    image = ele.get("image", ele.get("image_url"))
    if isinstance(image, dict):  # OpenAI style {"image_url": {"url": ...}}
        image = image.get("url")
    if image is None:
        raise ValueError(f"an image item needs an 'image' or 'image_url' entry, got keys {sorted(ele)}")
    image = to_rgb(load_image(image))
    if size is None:
        size = _target_size(
            ele, image.height, image.width, ele.get("min_pixels", MIN_PIXELS), ele.get("max_pixels", MAX_PIXELS)
        )
    return image.resize((size[1], size[0]), resample=Image.BICUBIC)


def video_max_pixels(ele: Dict[str, Any], nframes: int) -> int:
    """Per-frame pixel budget: the video's total_pixels shared by its frames (counted in pairs),
    within [min_pixels * 1.05, 768 * 28 * 28], and at most the item's max_pixels."""
    min_pixels = ele.get("min_pixels", VIDEO_MIN_PIXELS)
    total_pixels = ele.get("total_pixels", VIDEO_TOTAL_PIXELS)
    max_pixels = max(min(VIDEO_MAX_PIXELS, total_pixels / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    if ele.get("max_pixels", max_pixels) > max_pixels:
        warnings.warn(f"video max_pixels {ele['max_pixels']} exceeds the per-frame limit {max_pixels}; using the limit")
    return min(ele.get("max_pixels", max_pixels), max_pixels)


def fetch_video(ele: Dict[str, Any], return_video_sample_fps: bool = False):
    """Load `ele["video"]`: a video file (path, file://, http(s)://, data: URL) sampled with
    fps / nframes / min_frames / max_frames / video_start / video_end, or a list of frame images.

    Returns frames [n, H, W, 3] uint8 with n even and H, W multiples of 28, and with
    `return_video_sample_fps` also the fps of the sampled frames (a frame list: `ele["fps"]`, default 2).
    """
    video = ele.get("video")
    if isinstance(video, str):
        frames, sample_fps = read_video_decord(ele, resolve_source(video))
        nframes, height, width = frames.shape[:3]
        size = _target_size(ele, height, width, ele.get("min_pixels", VIDEO_MIN_PIXELS), video_max_pixels(ele, nframes))
        frames = np.stack([np.asarray(Image.fromarray(f).resize((size[1], size[0]), Image.BICUBIC)) for f in frames])
    elif isinstance(video, (list, tuple)) and video:
        item = {k: v for k, v in ele.items() if k not in ("type", "video")}
        # every frame gets the first frame's size, so that they stack into one clip
        first = fetch_image({**item, "image": video[0]})
        size = (first.height, first.width)
        frames = np.stack([np.asarray(first)] + [np.asarray(fetch_image({**item, "image": f}, size)) for f in video[1:]])
        if len(frames) % FRAME_FACTOR:  # pad with the last frame to whole temporal patches
            frames = np.concatenate([frames, frames[-1:].repeat(FRAME_FACTOR - len(frames) % FRAME_FACTOR, 0)])
        sample_fps = item.get("fps", FPS)
    else:
        raise ValueError(f"a video item needs 'video': a path/URL or a non-empty list of frames, got {video!r:.80}")
    return (frames, sample_fps) if return_video_sample_fps else frames


def extract_vision_info(conversations: Union[List[Message], List[List[Message]]]) -> List[Dict[str, Any]]:
    """The image and video items of one conversation or a batch of conversations, in order."""
    if conversations and isinstance(conversations[0], dict):
        conversations = [conversations]
    items = []
    for conversation in conversations:
        for message in conversation:
            if isinstance(message["content"], list):
                for ele in message["content"]:
                    if {"image", "image_url", "video"} & set(ele) or ele.get("type") in ("image", "image_url", "video"):
                        items.append(ele)
    return items


def process_vision_info(
    conversations: Union[List[Message], List[List[Message]]], return_video_kwargs: bool = False
) -> Union[Tuple[Optional[List[Image.Image]], Optional[List[np.ndarray]]], Tuple[Any, Any, Dict[str, List[float]]]]:
    """Load every image and video of the messages, in order of appearance.

    Returns (images or None, videos or None), plus {"fps": [sample fps per video]} when
    `return_video_kwargs` (pass it to the processor so that second_per_grid_ts is right).
    """
    images, videos, fps = [], [], []
    for ele in extract_vision_info(conversations):
        if "image" in ele or "image_url" in ele:
            images.append(fetch_image(ele))
        elif "video" in ele:
            frames, sample_fps = fetch_video(ele, return_video_sample_fps=True)
            videos.append(frames)
            fps.append(sample_fps)
        else:
            raise ValueError(f"a vision item needs an 'image', 'image_url' or 'video' entry, got keys {sorted(ele)}")
    result = (images or None, videos or None)
    return result + ({"fps": fps},) if return_video_kwargs else result
