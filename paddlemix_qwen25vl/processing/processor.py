"""Qwen2.5-VL processor: chat text + images/videos -> model inputs."""
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from .image_processing import Qwen2_5_VLImageProcessor, convert_to_tensors
from .tokenizer import MIXQwen2_5_Tokenizer
from .video import FPS


class Qwen2_5_VLProcessor:
    """Wraps `Qwen2_5_VLImageProcessor` and `MIXQwen2_5_Tokenizer`.

    `__call__` preprocesses the media, expands every `<|image_pad|>` / `<|video_pad|>` of the
    text into t*h*w/merge_size**2 copies (one per vision embedding, in order of appearance)
    and tokenizes, padding on the tokenizer's side (left by default, for batched generation).
    """

    def __init__(
        self,
        image_processor: Qwen2_5_VLImageProcessor,
        tokenizer: MIXQwen2_5_Tokenizer,
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
    ):
        # min_pixels/max_pixels override the image processor's budget (as in the released
        # examples: from_pretrained(path, min_pixels=..., max_pixels=...)), on a copy so that
        # the caller's image processor keeps its own.
        overrides = {k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v is not None}
        if overrides:
            image_processor = type(image_processor)(**{**image_processor.to_dict(), **overrides})
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.image_token = tokenizer.image_token
        self.video_token = tokenizer.video_token

    def __call__(
        self,
        text: Union[str, List[str]],
        images: Optional[Any] = None,
        videos: Optional[Any] = None,
        fps: Optional[Union[float, Sequence[float]]] = None,
        padding: Union[bool, str] = True,
        return_tensors: Optional[str] = "pd",
        **tokenizer_kwargs,
    ):
        """Build model inputs.

        `text`: a prompt or a batch of prompts (typically from `apply_chat_template`) holding
        one `<|image_pad|>` per image and one `<|video_pad|>` per video, in the order of
        `images` / `videos`. `fps`: the sampling fps of each video (one number for all;
        default 2.0), as returned by `process_vision_info(..., return_video_kwargs=True)`.

        Returns input_ids (int64), attention_mask, and when given media pixel_values (float32),
        image_grid_thw (int64), pixel_values_videos, video_grid_thw and second_per_grid_ts
        (temporal_patch_size / fps per video, a list of floats).
        """
        texts = [text] if isinstance(text, str) else list(text)
        data = {}
        if images is not None:
            data.update(self.image_processor(images=images, return_tensors="np"))
        if videos is not None:
            data.update(self.image_processor(videos=videos, return_tensors="np"))
            data["second_per_grid_ts"] = self._second_per_grid_ts(fps, len(data["video_grid_thw"]))
        no_media = np.zeros((0, 3), np.int64)
        texts = self._expand(texts, self.image_token, data.get("image_grid_thw", no_media), "image")
        texts = self._expand(texts, self.video_token, data.get("video_grid_thw", no_media), "video")
        encoded = self.tokenizer(
            texts, padding=padding, return_attention_mask=True, return_tensors="np", **tokenizer_kwargs
        )
        data["input_ids"] = np.asarray(encoded["input_ids"], dtype=np.int64)
        data["attention_mask"] = np.asarray(encoded["attention_mask"], dtype=np.int64)
        return convert_to_tensors(data, return_tensors)

    def _expand(self, texts: List[str], token: str, grids: np.ndarray, kind: str) -> List[str]:
        """Replace the n-th `token` of the texts by one copy per merged patch of grids[n]."""
        found = sum(t.count(token) for t in texts)
        if found != len(grids):
            raise ValueError(
                f"the text has {found} {kind} placeholder(s) {token} but {len(grids)} {kind}(s) were given"
            )
        counts = iter((grids.prod(axis=1) // self.image_processor.merge_size**2).tolist())
        expanded = []
        for t in texts:
            first, *rest = t.split(token)
            expanded.append(first + "".join(token * next(counts) + part for part in rest))
        return expanded

    def _second_per_grid_ts(self, fps: Optional[Union[float, Sequence[float]]], num_videos: int) -> List[float]:
        if fps is None or isinstance(fps, (int, float)):
            fps = [FPS if fps is None else fps] * num_videos
        if len(fps) != num_videos:
            raise ValueError(f"got {len(fps)} fps values for {num_videos} videos; give one per video or one number")
        return [self.image_processor.temporal_patch_size / float(f) for f in fps]

    def apply_chat_template(self, conversation, tokenize: bool = False, add_generation_prompt: bool = False, **kwargs):
        """Render messages with the chat template (see `MIXQwen2_5_Tokenizer.apply_chat_template`); text by default."""
        return self.tokenizer.apply_chat_template(
            conversation, tokenize=tokenize, add_generation_prompt=add_generation_prompt, **kwargs
        )

    def batch_decode(self, *args, **kwargs) -> List[str]:
        """Decode a batch of id sequences (forwards to the tokenizer)."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        """Decode one id sequence (forwards to the tokenizer)."""
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> List[str]:
        """Names of the tensors `__call__` can return."""
        return ["input_ids", "attention_mask"] + self.image_processor.model_input_names + ["second_per_grid_ts"]

    def save_pretrained(self, save_directory: str) -> None:
        """Write the tokenizer files and preprocessor_config.json into `save_directory`."""
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls, pretrained_dir: str, min_pixels: Optional[int] = None, max_pixels: Optional[int] = None, **kwargs
    ) -> "Qwen2_5_VLProcessor":
        """Load tokenizer files and preprocessor_config.json from a directory."""
        return cls(
            Qwen2_5_VLImageProcessor.from_pretrained(pretrained_dir),
            MIXQwen2_5_Tokenizer.from_pretrained(pretrained_dir, **kwargs),
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
