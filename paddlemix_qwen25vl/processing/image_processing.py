"""Qwen2.5-VL image processor: resize to a multiple of 28, rescale, CLIP-normalise, patchify."""
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from paddlenlp.transformers.feature_extraction_utils import BatchFeature

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 16384  # 12845056, the released preprocessor_config.json
MAX_ASPECT_RATIO = 200

# An image: PIL or an HWC uint8 array. A video: a THWC uint8 array or a list of frames.
ImageLike = Union[Image.Image, np.ndarray]
VideoLike = Union[np.ndarray, Sequence[ImageLike]]


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    at_least_factor: bool = True,
) -> Tuple[int, int]:
    """Size (h, w) closest to (height, width) with both sides multiples of `factor` and
    min_pixels <= h * w <= max_pixels, keeping the aspect ratio.

    `at_least_factor=True` is the qwen-vl-utils rule (each side first rounded to at least
    `factor`): 10x1000 gives 28x1008. The image processor uses False, as transformers 4.51.3
    does, and like it refuses a side shorter than `factor` (fetch_image enlarges such images first).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width} (height x width)")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be at most {MAX_ASPECT_RATIO}, got "
            f"{max(height, width) / min(height, width)} for an image of {height}x{width} (height x width)"
        )
    if not at_least_factor and min(height, width) < factor:
        raise ValueError(
            f"image of {height}x{width} (height x width) has a side shorter than {factor} pixels, which the "
            "reference image processor refuses; load it with fetch_image/process_vision_info (which enlarge it) "
            "or resize it first"
        )
    floor = factor if at_least_factor else 0
    h_bar = max(floor, round(height / factor) * factor)
    w_bar = max(floor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(floor, math.floor(height / beta / factor) * factor)
        w_bar = max(floor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`; RGBA is composited onto white (as qwen-vl-utils does), other modes use PIL's convert."""
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def _as_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.dtype != np.uint8:
        raise ValueError(
            f"an image array must be HWC uint8 with 3 or 4 channels, got shape {array.shape} dtype {array.dtype}"
        )
    return Image.fromarray(array)


def convert_to_tensors(data: Dict[str, Any], return_tensors: Optional[str]) -> BatchFeature:
    """Numpy arrays in `data` to paddle tensors for return_tensors="pd" (dtypes kept); lists stay lists."""
    if return_tensors not in (None, "np", "pd"):
        raise ValueError(f"return_tensors must be 'pd', 'np' or None, got {return_tensors!r}")
    if return_tensors == "pd":
        import paddle

        data = {k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in data.items()}
    return BatchFeature(data)


class Qwen2_5_VLImageProcessor:
    """Turns images and videos into the vision tower's patch rows.

    Each image is resized (PIL bicubic) to `smart_resize` of its size, scaled by 1/255,
    normalised with the CLIP mean and std, tiled to `temporal_patch_size` frames and cut
    into rows of C * temporal_patch_size * patch_size**2 = 1176 values, ordered so that
    every `merge_size**2` consecutive rows form one merge group. Videos are handled the same
    way, one frame pair per temporal patch. The numbers equal transformers'
    `Qwen2VLImageProcessor` (slow, PIL backend), except that RGBA images are composited onto
    white here while transformers drops the alpha channel.
    """

    model_input_names = ["pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"]

    def __init__(
        self,
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
        patch_size: int = 14,
        temporal_patch_size: int = 2,
        merge_size: int = 2,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        do_resize: bool = True,
        resample: int = Image.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        do_convert_rgb: bool = True,
        size: Optional[Dict[str, int]] = None,
        **metadata,
    ):
        unknown = set(metadata) - {"processor_class", "image_processor_type"}
        if unknown:
            raise TypeError(f"Qwen2_5_VLImageProcessor got unknown arguments {sorted(unknown)}")
        # transformers saves the pixel budget as size = {shortest_edge, longest_edge};
        # explicit min_pixels/max_pixels win, as there.
        size = size or {}
        self.min_pixels = min_pixels if min_pixels is not None else size.get("shortest_edge", MIN_PIXELS)
        self.max_pixels = max_pixels if max_pixels is not None else size.get("longest_edge", MAX_PIXELS)
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.do_resize = do_resize
        self.resample = resample
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.do_convert_rgb = do_convert_rgb

    def resized_size(self, height: int, width: int) -> Tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        if not self.do_resize:
            return height, width
        return smart_resize(
            height,
            width,
            factor=self.patch_size * self.merge_size,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            at_least_factor=False,
        )

    def _frame_to_array(self, frame: ImageLike, size: Tuple[int, int]) -> np.ndarray:
        """One frame -> CHW float32, resized to `size` = (height, width)."""
        image = _as_pil(frame)
        if self.do_convert_rgb:
            image = to_rgb(image)
        if self.do_resize:
            image = image.resize((size[1], size[0]), resample=self.resample)
        array = np.asarray(image)
        if self.do_rescale:
            # float64 product, then float32: the reference's order, so results agree to the bit
            array = (array.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            array = array.astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)
            std = np.asarray(self.image_std, dtype=np.float32)
            array = (array - mean) / std
        return array.transpose(2, 0, 1)

    def preprocess_frames(self, frames: Sequence[ImageLike]) -> Tuple[np.ndarray, Tuple[int, int, int]]:
        """Frames of one image (one frame) or one video -> (patch rows [N, 1176] float32, (t, h, w) grid)."""
        first = _as_pil(frames[0])
        height, width = self.resized_size(first.height, first.width)
        patches = np.stack([self._frame_to_array(frame, (height, width)) for frame in frames])
        tp, ps, ms = self.temporal_patch_size, self.patch_size, self.merge_size
        if patches.shape[0] % tp:
            # repeat the last frame up to a whole temporal patch (an image becomes tp frames)
            repeats = np.repeat(patches[-1:], tp - patches.shape[0] % tp, axis=0)
            patches = np.concatenate([patches, repeats], axis=0)
        channels = patches.shape[1]
        grid_t, grid_h, grid_w = patches.shape[0] // tp, height // ps, width // ps
        # [T*tp, C, H, W] -> (t, tp, C, h/m, m, ps, w/m, m, ps) -> rows (t, h/m, w/m, m, m)
        patches = patches.reshape(grid_t, tp, channels, grid_h // ms, ms, ps, grid_w // ms, ms, ps)
        patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        rows = patches.reshape(grid_t * grid_h * grid_w, channels * tp * ps * ps)
        return rows, (grid_t, grid_h, grid_w)

    def _batch(self, items: List[Sequence[ImageLike]], prefix: str) -> Dict[str, np.ndarray]:
        rows, grids = zip(*(self.preprocess_frames(frames) for frames in items))
        return {
            f"pixel_values{prefix}": np.concatenate(rows, axis=0),
            f"{'video' if prefix else 'image'}_grid_thw": np.asarray(grids, dtype=np.int64),
        }

    def __call__(
        self,
        images: Optional[Union[ImageLike, Sequence[ImageLike]]] = None,
        videos: Optional[Union[VideoLike, Sequence[VideoLike]]] = None,
        return_tensors: Optional[str] = "pd",
    ) -> BatchFeature:
        """Preprocess images and/or videos.

        Returns pixel_values [sum of t*h*w, 1176] (float32) and image_grid_thw [n, 3] (int64)
        for images; pixel_values_videos and video_grid_thw for videos. `return_tensors`:
        "pd" (paddle tensors) or "np"/None (numpy arrays).
        """
        data = {}
        if images is not None:
            images = [images] if isinstance(images, (Image.Image, np.ndarray)) else list(images)
            data.update(self._batch([[image] for image in images], ""))
        if videos is not None:
            data.update(self._batch(_as_video_list(videos), "_videos"))
        return convert_to_tensors(data, return_tensors)

    preprocess = __call__

    def to_dict(self) -> Dict[str, Any]:
        """The preprocessor_config.json fields (the released names, loadable by transformers)."""
        return {
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "do_resize": self.do_resize,
            "resample": int(self.resample),
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "do_convert_rgb": self.do_convert_rgb,
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
        }

    def save_pretrained(self, save_directory: str) -> str:
        """Write preprocessor_config.json into `save_directory`; returns the file path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, PREPROCESSOR_CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def from_pretrained(cls, pretrained_dir: str, **overrides) -> "Qwen2_5_VLImageProcessor":
        """Load preprocessor_config.json from a directory; keyword arguments override its fields."""
        path = os.path.join(pretrained_dir, PREPROCESSOR_CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {PREPROCESSOR_CONFIG_NAME} in {pretrained_dir}")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config.update(overrides)
        return cls(**config)


def _as_video_list(videos: Union[VideoLike, Sequence[VideoLike]]) -> List[Sequence[ImageLike]]:
    """One video (THWC array or list of frames) or a list of videos -> list of frame sequences."""
    if isinstance(videos, np.ndarray):
        return [videos] if videos.ndim == 4 else [list(v) for v in videos]
    videos = list(videos)
    if not videos:
        raise ValueError("videos is empty")
    first = videos[0]
    if isinstance(first, Image.Image) or (isinstance(first, np.ndarray) and first.ndim == 3):
        return [videos]
    return videos
