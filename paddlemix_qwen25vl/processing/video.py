"""Video frame sampling (the qwen-vl-utils algorithm) and decoding through decord."""
import io
import math
from typing import Any, Dict, Tuple, Union

import numpy as np
from tqdm import tqdm

FRAME_FACTOR = 2
FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
# Decode in chunks so that long videos show progress and do not hold two copies at once.
DECODE_CHUNK = 32
PROGRESS_MIN_FRAMES = 4 * DECODE_CHUNK


def _round_by(x: float, factor: int) -> int:
    return round(x / factor) * factor


def _ceil_by(x: float, factor: int) -> int:
    return math.ceil(x / factor) * factor


def _floor_by(x: float, factor: int) -> int:
    return math.floor(x / factor) * factor


def smart_nframes(ele: Dict[str, Any], total_frames: int, video_fps: float) -> int:
    """Number of frames to sample from a clip of `total_frames` frames at `video_fps`.

    `ele["nframes"]` is rounded to a multiple of 2; otherwise total / video_fps * fps
    (fps default 2) is clamped to [min_frames (4), max_frames (min(768, total))], to
    `total_frames`, and floored to a multiple of 2. The result must lie in [2, total_frames].
    """
    if "fps" in ele and "nframes" in ele:
        raise ValueError("give either 'fps' or 'nframes' for a video, not both")
    if "nframes" in ele:
        nframes = _round_by(ele["nframes"], FRAME_FACTOR)
    else:
        fps = ele.get("fps", FPS)
        min_frames = _ceil_by(ele.get("min_frames", FPS_MIN_FRAMES), FRAME_FACTOR)
        max_frames = _floor_by(ele.get("max_frames", min(FPS_MAX_FRAMES, total_frames)), FRAME_FACTOR)
        nframes = total_frames / video_fps * fps
        nframes = min(min(max(nframes, min_frames), max_frames), total_frames)
        nframes = _floor_by(nframes, FRAME_FACTOR)
    if not FRAME_FACTOR <= nframes <= total_frames:
        raise ValueError(
            f"a video needs between {FRAME_FACTOR} and {total_frames} sampled frames (it has {total_frames} "
            f"frames in the selected range), but {nframes} were asked for"
        )
    return nframes


def video_frame_range(ele: Dict[str, Any], total_frames: int, video_fps: float) -> Tuple[int, int, int]:
    """(first frame, last frame, frame count) of the clip selected by video_start / video_end (seconds)."""
    if video_fps <= 0 or total_frames <= 0:
        raise ValueError(f"video has no frames to sample: {total_frames} frames at {video_fps} fps")
    video_start, video_end = ele.get("video_start"), ele.get("video_end")
    if video_start is None and video_end is None:
        return 0, total_frames - 1, total_frames
    duration = total_frames / video_fps
    start = math.ceil(max(0.0, min(video_start, duration)) * video_fps) if video_start is not None else 0
    end = total_frames - 1
    if video_end is not None:
        end = min(math.floor(max(0.0, min(video_end, duration)) * video_fps), total_frames - 1)
    if start >= end:
        raise ValueError(
            f"invalid video time range: start frame {start} (video_start={video_start}s) is not before end frame "
            f"{end} (video_end={video_end}s); the video lasts {duration:.2f}s ({total_frames} frames at {video_fps} fps)"
        )
    return start, end, end - start + 1


def frame_indices(start: int, end: int, nframes: int) -> np.ndarray:
    """`nframes` indices evenly spread over [start, end], rounded half to even (as torch.round)."""
    return np.round(np.linspace(start, end, nframes)).astype(np.int64)


def read_video_decord(ele: Dict[str, Any], source: Union[str, bytes]) -> Tuple[np.ndarray, float]:
    """Decode the sampled frames of `source` (a path or the file's bytes).

    Returns (frames [n, H, W, 3] uint8, sample fps = n / clip frames * video fps).
    """
    import decord

    name = source if isinstance(source, str) else f"<{len(source)} bytes>"
    try:
        reader = decord.VideoReader(source if isinstance(source, str) else io.BytesIO(source))
        total_frames, video_fps = len(reader), reader.get_avg_fps()
    except (decord.DECORDError, RuntimeError, AssertionError) as e:
        raise ValueError(f"cannot read video {name}: {e}") from e
    start, end, clip_frames = video_frame_range(ele, total_frames, video_fps)
    nframes = smart_nframes(ele, total_frames=clip_frames, video_fps=video_fps)
    indices = frame_indices(start, end, nframes).tolist()
    chunks = range(0, nframes, DECODE_CHUNK)
    progress = tqdm(chunks, desc=f"decoding {nframes} frames", unit="chunk", disable=nframes < PROGRESS_MIN_FRAMES)
    try:
        frames = np.concatenate([reader.get_batch(indices[i : i + DECODE_CHUNK]).asnumpy() for i in progress])
    except decord.DECORDError as e:
        raise ValueError(f"cannot decode frames of video {name}: {e}") from e
    sample_fps = nframes / max(clip_frames, 1e-6) * video_fps
    return frames, sample_fps
