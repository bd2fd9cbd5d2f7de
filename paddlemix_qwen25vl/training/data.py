"""SFT data: the --meta_path file, annotation files, and the lazy training dataset.

``--meta_path`` is a JSON object ``{name: {"annotation": path, "repeat_time": k[,
"data_root": dir]}}`` (PaddleMIX's; ``root`` is accepted for ``data_root``). As in PaddleMIX,
relative paths (the meta file, each ``annotation``, each media path) are taken from the
working directory; a path not found there is also looked for beside the meta file (an
annotation) or the annotation file (media). An explicit ``data_root`` is joined to every
relative media path. ``repeat_time`` 0.3 takes the first 30% of the records (PaddleMIX's
``raw_data[:int(n * 0.3)]``); 2.5 every record twice plus the first half. The "official"
pipeline's ``--dataset_use name%30`` (:mod:`.registry`) takes a seeded random 30% instead, as
PaddleMIX's does.

Annotation files are a JSON list or JSON lines. Records are parsed when they are read
(``__getitem__``), so media are decoded only for the samples a step actually uses.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..processing.image_processing import to_rgb
from ..processing.vision_info import VIDEO_MAX_PIXELS, fetch_image, fetch_video, load_image
from ..rope import rope_index, rope_index_options
from .conversation import IGNORE_INDEX, RecordError, encode_conversation, parse_record

__all__ = ["DatasetSpec", "load_meta", "read_annotation", "build_index", "SFTDataset", "DataStats", "fit_length"]

logger = logging.getLogger(__name__)


@dataclass
class DatasetSpec:
    """One entry of the meta file, with paths made absolute."""

    name: str
    annotation: str
    data_root: str  # the explicit data_root, else the annotation file's folder
    repeat_time: float = 1.0
    root_given: bool = False  # data_root was in the meta file: media paths are joined to it
    sampling_rate: float = 1.0  # --dataset_use name%N: a seeded random N% of the records (N >= 100: all)


def _existing(path: str, fallback_dir: str) -> str:
    """``path`` as given (relative to the working directory, as PaddleMIX reads it) when it
    exists, else relative to ``fallback_dir``."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.join(fallback_dir, path)


def load_meta(meta_path: str) -> List[DatasetSpec]:
    """Parse a meta file; relative paths: the working directory, else the meta file's folder."""
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"{meta_path}: expected a JSON object {{name: {{'annotation': ..., ...}}}}")
    base = os.path.dirname(os.path.abspath(meta_path))
    specs = []
    for name, entry in meta.items():
        if "annotation" not in entry:
            raise ValueError(f"{meta_path}: dataset {name!r} has no 'annotation'")
        annotation = _existing(entry["annotation"], base)
        if not os.path.exists(annotation):
            raise FileNotFoundError(
                f"{meta_path}: dataset {name!r}: annotation {entry['annotation']!r} not found in the working "
                f"directory {os.getcwd()!r} nor beside the meta file"
            )
        root = entry.get("data_root", entry.get("root"))
        data_root = _existing(root, base) if root is not None else os.path.dirname(annotation)
        repeat = float(entry.get("repeat_time", 1.0))
        if repeat <= 0:
            raise ValueError(f"{meta_path}: dataset {name!r} has repeat_time {repeat}; it must be > 0")
        specs.append(DatasetSpec(name, annotation, data_root, repeat, root_given=root is not None))
    return specs


def read_annotation(path: str) -> List[Any]:
    """Records of a JSON list file or a JSON-lines file (blank lines ignored)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return json.loads(text)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                # kept as a bad record so that it is reported with the others
                records.append(RecordError(f"line {number} is not JSON: {err}"))
    return records


def _repeat(count: int, times: float) -> List[int]:
    """Record numbers ``0..count-1`` taken ``times`` times; the fraction takes the first records."""
    whole, fraction = int(times), times - int(times)
    return list(range(count)) * whole + list(range(int(fraction * count)))


def _draw(count: int, times: float, rng: np.random.Generator) -> List[int]:
    """Record numbers ``0..count-1`` taken ``times`` times; the fraction is a seeded random subset."""
    whole, fraction = int(times), times - int(times)
    picked = list(range(count)) * whole
    if fraction > 0:
        picked += sorted(rng.choice(count, size=int(math.ceil(fraction * count)), replace=False).tolist())
    return picked


def build_index(specs: Sequence[DatasetSpec], seed: int = 42, resample: bool = False) -> List[Tuple[int, int]]:
    """``(dataset number, record number)`` pairs after applying every ``sampling_rate`` (a seeded
    random subset) then ``repeat_time`` (whole copies, then the first records).

    ``resample`` (``--use_data_resampling``, PaddleMIX's weighting): the total stays the same
    but dataset i gets a share proportional to sqrt(n_i) of it, n_i its size after
    ``repeat_time`` (small datasets are repeated, large ones subsampled, seeded).
    """
    rng = np.random.default_rng(seed)
    picked = []
    for spec in specs:
        count = len(read_annotation(spec.annotation))
        kept = list(range(count))
        if spec.sampling_rate < 1:  # PaddleMIX: random.sample(annotations, int(n * rate))
            kept = sorted(rng.choice(count, size=int(count * spec.sampling_rate), replace=False).tolist())
        picked.append([kept[i] for i in _repeat(len(kept), spec.repeat_time)])
    if resample:
        weights = np.sqrt([len(p) for p in picked])
        total = sum(len(p) for p in picked)
        picked = [[p[i] for i in _draw(len(p), total * w / weights.sum() / len(p), rng)] if p else p
                  for p, w in zip(picked, weights)]
    return [(number, record) for number, records in enumerate(picked) for record in records]


class DataStats:
    """Counts of skipped, truncated and dropped samples (each record reported once)."""

    def __init__(self) -> None:
        self.skipped: Dict[str, str] = {}  # record name -> reason
        self.truncated: set = set()
        self.too_long: set = set()

    def summary(self) -> str:
        """One paragraph for the end of training."""
        reasons = Counter(reason.split(":")[0] for reason in self.skipped.values())
        lines = [
            f"data summary: {len(self.skipped)} bad record(s) skipped, {len(self.too_long)} too long and dropped, "
            f"{len(self.truncated)} truncated (text only)"
        ]
        lines += [f"  {count} x {reason}" for reason, count in reasons.most_common()]
        return "\n".join(lines)


def fit_length(
    input_ids: List[int], labels: List[int], max_length: int, vision_ids: Sequence[int]
) -> Optional[Tuple[List[int], List[int]]]:
    """Cut a sample to ``max_length`` tokens without cutting through a vision item.

    Returns the (possibly shortened) ids and labels, or None when the cut would fall inside
    or before the last vision item or would leave no supervised token.
    """
    if len(input_ids) <= max_length:
        return input_ids, labels
    vision = [i for i, token in enumerate(input_ids) if token in vision_ids]
    if vision and vision[-1] >= max_length:
        return None
    labels = labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return input_ids[:max_length], labels


class SFTDataset:
    """Lazy supervised fine-tuning dataset (a map-style ``paddle.io.Dataset``).

    ``__getitem__`` returns numpy arrays: ``input_ids [L]``, ``labels [L]``, ``position_ids
    [3, L]`` (MRoPE, from :func:`paddlemix_qwen25vl.rope.rope_index`, the function the model's
    ``get_rope_index`` wraps) and, when the sample has media, ``pixel_values`` /
    ``image_grid_thw`` and ``pixel_values_videos`` / ``video_grid_thw``. A bad or over-long
    record is logged, counted in :attr:`stats` and replaced by the next usable one (so batch
    sizes and the data order stay fixed); with ``strict`` it raises instead.

    ``meta`` is a ``--meta_path`` file or the datasets themselves (the "official" pipeline's
    ``--dataset_use``, :func:`~paddlemix_qwen25vl.training.registry.dataset_specs`).
    ``min_pixels`` / ``max_pixels`` replace the checkpoint's per-image pixel budget for
    training only (the saved processor keeps the checkpoint's).
    """

    def __init__(
        self,
        meta: Union[str, Sequence[DatasetSpec]],
        processor: Any,
        config: Any,
        max_seq_length: int,
        image_resolution: Optional[int] = None,
        strict: bool = False,
        seed: int = 42,
        video_resolution: Optional[int] = None,
        video_fps: Optional[float] = None,
        video_maxlen: Optional[int] = None,
        resample: bool = False,
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
    ) -> None:
        self.specs = load_meta(meta) if isinstance(meta, str) else list(meta)
        self.records = [read_annotation(spec.annotation) for spec in self.specs]
        self.index = build_index(self.specs, seed, resample)
        if not self.index:
            source = meta if isinstance(meta, str) else ", ".join(spec.name for spec in self.specs)
            raise ValueError(f"{source}: the datasets hold no records")
        self.tokenizer = processor.tokenizer
        self.image_processor = copy.copy(processor.image_processor)
        self.image_processor.min_pixels = min_pixels or self.image_processor.min_pixels
        self.image_processor.max_pixels = max_pixels or self.image_processor.max_pixels
        self.config = config
        self.max_seq_length = max_seq_length
        self.image_resolution = image_resolution
        self.video_resolution, self.video_fps, self.video_maxlen = video_resolution, video_fps, video_maxlen
        self.strict = strict
        self.stats = DataStats()
        self._vision_ids = {config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id}

    def __len__(self) -> int:
        return len(self.index)

    def record_name(self, idx: int) -> str:
        """``dataset[record]`` naming the idx-th sample's record in messages."""
        number, record = self.index[idx]
        return f"{self.specs[number].name}[{record}] ({self.specs[number].annotation})"

    def __getitem__(self, idx: int) -> Dict[str, np.ndarray]:
        for attempt in range(len(self)):
            position = (idx + attempt) % len(self)
            try:
                sample = self.build(position)
            except (RecordError, OSError, ValueError, RuntimeError) as err:
                if self.strict:
                    raise RecordError(f"bad record {self.record_name(position)}: {err}") from err
                name = self.record_name(position)
                if name not in self.stats.skipped:
                    logger.warning(f"skipping record {name}: {err}")
                self.stats.skipped[name] = f"{type(err).__name__}: {err}"
                continue
            if sample is not None:
                return sample
        raise RuntimeError("every record of the dataset was skipped; see the warnings above")

    # ------------------------------------------------------------------ building
    def build(self, idx: int) -> Optional[Dict[str, np.ndarray]]:
        """The sample of the idx-th entry, or None when it is too long (counted); raises on a bad record."""
        number, record_number = self.index[idx]
        record = self.records[number][record_number]
        if isinstance(record, Exception):
            raise record
        conversation = parse_record(record)
        spec = self.specs[number]
        sample: Dict[str, np.ndarray] = {}
        image_tokens: List[int] = []
        video_tokens: List[int] = []
        merge = self.image_processor.merge_size ** 2
        if conversation.images:
            images = [self._load_image(self._path(spec, path)) for path in conversation.images]
            out = self.image_processor(images=images, return_tensors="np")
            sample["pixel_values"], sample["image_grid_thw"] = out["pixel_values"], out["image_grid_thw"]
            image_tokens = (out["image_grid_thw"].prod(axis=1) // merge).tolist()
        seconds: List[float] = []
        if conversation.videos:
            clips = []
            for path in conversation.videos:
                frames, fps = self._load_video(self._path(spec, path))
                clips.append(frames)
                seconds.append(self.image_processor.temporal_patch_size / float(fps))
            out = self.image_processor(videos=clips, return_tensors="np")
            sample["pixel_values_videos"], sample["video_grid_thw"] = out["pixel_values_videos"], out["video_grid_thw"]
            video_tokens = (out["video_grid_thw"].prod(axis=1) // merge).tolist()
        input_ids, labels = encode_conversation(conversation, self.tokenizer, image_tokens, video_tokens)
        fitted = fit_length(input_ids, labels, self.max_seq_length, self._vision_ids)
        name = self.record_name(idx)
        if fitted is None:
            if name not in self.stats.too_long:
                logger.warning(f"dropping record {name}: {len(input_ids)} tokens > --max_seq_length {self.max_seq_length}")
            self.stats.too_long.add(name)
            return None
        if len(fitted[0]) < len(input_ids):
            self.stats.truncated.add(name)
        input_ids, labels = fitted
        sample["input_ids"] = np.asarray(input_ids, dtype=np.int64)
        sample["labels"] = np.asarray(labels, dtype=np.int64)
        sample["position_ids"] = self.positions(sample["input_ids"], sample.get("image_grid_thw"),
                                                sample.get("video_grid_thw"), seconds or None)
        return sample

    def positions(self, input_ids: np.ndarray, image_grid_thw, video_grid_thw, second_per_grid_ts) -> np.ndarray:
        """MRoPE position ids ``[3, L]`` of one sample."""
        positions, _ = rope_index(
            input_ids[None],
            image_grid_thw,
            video_grid_thw,
            second_per_grid_ts,
            **rope_index_options(self.config),
        )
        return positions[:, 0]

    @staticmethod
    def _path(spec: DatasetSpec, path: str) -> str:
        """A media path of a record: URLs and absolute paths as they are; relative ones joined to
        an explicit data_root, else from the working directory or the annotation's folder."""
        if "://" in path or path.startswith("data:") or os.path.isabs(path):
            return path
        if spec.root_given:
            return os.path.join(spec.data_root, path)
        return _existing(path, spec.data_root)

    def _load_image(self, path: str) -> Image.Image:
        """Decoded image, its longer side scaled down to ``image_resolution`` (then the processor's rounding)."""
        image = load_image(path)
        if self.image_resolution and max(image.size) > self.image_resolution:
            scale = self.image_resolution / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = to_rgb(image).resize(size, resample=Image.BICUBIC)
        return fetch_image({"image": image, "max_pixels": self.image_processor.max_pixels,
                            "min_pixels": self.image_processor.min_pixels})

    def _load_video(self, path: str) -> Tuple[np.ndarray, float]:
        """Sampled frames (``video_fps`` per second, at most ``video_maxlen``) and their fps;
        ``video_resolution`` caps each frame at resolution**2 pixels."""
        item: Dict[str, Any] = {"video": path}
        if self.video_resolution:
            item["max_pixels"] = min(VIDEO_MAX_PIXELS, self.video_resolution ** 2)
        if self.video_fps:
            item["fps"] = self.video_fps
        if self.video_maxlen:
            item["max_frames"] = self.video_maxlen
        if not os.path.exists(path) and "://" not in path:
            raise FileNotFoundError(f"no such video file: {path}")
        return fetch_video(item, return_video_sample_fps=True)
