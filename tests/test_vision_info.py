"""Vision-info helpers: the qwen-vl-utils algorithm (sizes, frame counts, indices, budgets) and loading."""
import base64
import io
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from helpers.media import decode_frame_index, frame_pattern, http_server, write_video
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference_smart_resize

from paddlemix_qwen25vl.processing import fetch_image, fetch_video, process_vision_info, smart_nframes, smart_resize
from paddlemix_qwen25vl.processing.video import frame_indices, video_frame_range
from paddlemix_qwen25vl.processing.vision_info import video_max_pixels


# ---- the algorithm, on tables written from the reference description ----

@pytest.mark.parametrize(
    "height,width,kwargs,expected",
    [
        (480, 640, {}, (476, 644)),  # 17 x 23 merged tokens = 391
        (1080, 1920, {}, (1092, 1932)),  # 39 x 69 = 2691
        (10, 1000, {}, (28, 1008)),  # thin: each side at least 28 in the helper
        (20, 20, {}, (56, 56)),  # below min_pixels: scaled up
        (4000, 3000, {}, (4004, 2996)),  # within the default 12845056
        (4000, 3000, {"max_pixels": 1003520}, (1148, 840)),  # over max_pixels: scaled down
        (56, 56, {"min_pixels": 100352}, (336, 336)),
    ],
)
def test_smart_resize_table(height, width, kwargs, expected):
    assert smart_resize(height, width, **kwargs) == expected


def test_smart_resize_processor_rule_equals_transformers():
    rng = np.random.default_rng(0)
    for height, width in rng.integers(28, 3000, (300, 2)).tolist():
        for budget in [(3136, 12845056), (3136, 1003520), (200_000, 400_000)]:
            ours = smart_resize(height, width, 28, *budget, at_least_factor=False)
            assert ours == reference_smart_resize(height, width, 28, *budget)
            # with both sides >= 28 the floor of the helper rule never bites
            assert smart_resize(height, width, 28, *budget) == ours


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match=r"aspect ratio must be at most 200, got 250.0 .*20x5000"):
        smart_resize(20, 5000)


@pytest.mark.parametrize(
    "ele,total,fps,expected",
    [
        ({}, 300, 30.0, 20),  # 10 s at 2 fps
        ({}, 309, 29.97, 20),  # 20.62 floored to even
        ({}, 20, 30.0, 4),  # short clip: min_frames 4
        ({"fps": 1.0}, 300, 30.0, 10),
        ({"fps": 30.0}, 100, 25.0, 100),  # capped by the frame count
        ({"max_frames": 7}, 300, 30.0, 6),  # max_frames floored to even
        ({"min_frames": 5}, 30, 30.0, 6),  # min_frames ceiled to even
        ({"nframes": 7}, 300, 30.0, 8),  # round(3.5) * 2
        ({"nframes": 5}, 300, 30.0, 4),  # round(2.5) = 2 (Python rounds half to even)
        ({}, 10000, 25.0, 768),  # FPS_MAX_FRAMES
        ({}, 3, 30.0, 2),
    ],
)
def test_smart_nframes_table(ele, total, fps, expected):
    assert smart_nframes(ele, total, fps) == expected


@pytest.mark.parametrize(
    "ele,total,match",
    [
        ({"nframes": 400}, 300, r"between 2 and 300 .* 400"),
        ({}, 1, r"between 2 and 1 .* 0"),
        ({"fps": 1.0, "nframes": 4}, 300, "either 'fps' or 'nframes'"),
    ],
)
def test_smart_nframes_errors(ele, total, match):
    with pytest.raises(ValueError, match=match):
        smart_nframes(ele, total, 30.0)


@pytest.mark.parametrize("start,end,n", [(0, 299, 20), (0, 308, 20), (0, 24, 4), (30, 90, 10), (5, 1000, 768), (0, 3, 4)])
def test_frame_indices_equal_torch_linspace_round(start, end, n):
    expected = torch.linspace(start, end, n).round().long().numpy()
    np.testing.assert_array_equal(frame_indices(start, end, n), expected)


@pytest.mark.parametrize(
    "ele,total,fps,expected",
    [
        ({}, 300, 30.0, (0, 299, 300)),
        ({"video_start": 1.0, "video_end": 3.0}, 300, 30.0, (30, 90, 61)),
        ({"video_start": 0.51}, 100, 10.0, (6, 99, 94)),  # start is ceiled
        ({"video_end": 100.0}, 100, 10.0, (0, 99, 100)),  # clamped to the duration
    ],
)
def test_video_frame_range(ele, total, fps, expected):
    assert video_frame_range(ele, total, fps) == expected


def test_video_frame_range_rejects_empty_clip():
    with pytest.raises(ValueError, match="start frame 60 .* not before end frame 30"):
        video_frame_range({"video_start": 2.0, "video_end": 1.0}, 300, 30.0)


@pytest.mark.parametrize(
    "ele,nframes,expected",
    [
        ({}, 20, 602112),  # 768 * 28 * 28 cap
        ({}, 768, 235200),  # 90316800 / 768 * 2
        ({"total_pixels": 20 * 28 * 28 * 10}, 20, 105369),  # floor int(128 * 28 * 28 * 1.05)
        ({"max_pixels": 200_000}, 20, 200_000),  # the item's max_pixels is a cap
        ({"max_pixels": 10**7}, 20, 602112),  # ... never a raise
        ({"min_pixels": 200_000, "total_pixels": 1}, 20, 210000),
    ],
)
def test_video_per_frame_budget(ele, nframes, expected):
    if ele.get("max_pixels", 0) > 602112:
        with pytest.warns(UserWarning, match="exceeds"):
            assert video_max_pixels(ele, nframes) == expected
    else:
        assert video_max_pixels(ele, nframes) == expected


# ---- videos written with PyAV and read through decord ----

@pytest.mark.parametrize(
    "num_frames,fps,ele,expected_n,expected_sample_fps",
    [
        (300, 30, {}, 20, 2.0),
        (309, Fraction(30000, 1001), {}, 20, 20 / 309 * 30000 / 1001),
        (25, 10, {}, 4, 4 / 25 * 10),
        (51, 24, {"fps": 4.0}, 8, 8 / 51 * 24),
        (51, 24, {"nframes": 6}, 6, 6 / 51 * 24),
        (300, 30, {"video_start": 1.0, "video_end": 3.0}, 4, 4 / 61 * 30),
        (120, 30, {"min_frames": 10, "max_frames": 40}, 10, 10 / 120 * 30),
    ],
)
def test_fetch_video_samples_the_right_frames(tmp_path, num_frames, fps, ele, expected_n, expected_sample_fps):
    path = write_video(str(tmp_path / "clip.mp4"), num_frames, fps)
    frames, sample_fps = fetch_video({"video": path, **ele}, return_video_sample_fps=True)
    assert frames.dtype == np.uint8 and frames.shape[0] == expected_n
    assert frames.shape[1] % 28 == 0 and frames.shape[2] % 28 == 0
    assert sample_fps == pytest.approx(expected_sample_fps, rel=1e-9)
    start, end, _ = video_frame_range(ele, num_frames, float(fps))
    expected_indices = torch.linspace(start, end, expected_n).round().long().tolist()
    assert [decode_frame_index(f) for f in frames] == expected_indices


def test_second_per_grid_ts_from_sample_fps(tmp_path):
    spg = {}
    for name, (n, fps) in {"a": (300, 30), "b": (309, Fraction(30000, 1001))}.items():
        path = write_video(str(tmp_path / f"{name}.mp4"), n, fps)
        _, sample_fps = fetch_video({"video": "file://" + path}, return_video_sample_fps=True)
        spg[name] = 2 / sample_fps
    assert spg["a"] == pytest.approx(1.0)
    assert spg["b"] == pytest.approx(1.0310, abs=1e-4)


def test_fetch_video_frame_size_follows_budget(tmp_path):
    path = write_video(str(tmp_path / "big.mp4"), 40, 10, height=480, width=640)
    frames = fetch_video({"video": path, "total_pixels": 8 * 100_000})
    # 40 frames at 10 fps -> 8 sampled; they share 800000 pixels: 800000 / 8 * 2 = 200000 per frame
    assert frames.shape == (8, *smart_resize(480, 640, min_pixels=100352, max_pixels=200_000), 3)
    resized = fetch_video({"video": path, "resized_height": 100, "resized_width": 150})
    assert resized.shape[1:3] == (112, 140)


def test_fetch_video_from_frame_list():
    frames = [Image.fromarray(frame_pattern(i, 56, 84)) for i in range(5)]
    video, fps = fetch_video({"type": "video", "video": frames, "fps": 3.0}, return_video_sample_fps=True)
    assert video.shape == (6, 56, 84, 3)  # padded with the last frame to an even count
    assert [decode_frame_index(f) for f in video] == [0, 1, 2, 3, 4, 4]
    assert fps == 3.0
    _, default_fps = fetch_video({"video": frames[:2]}, return_video_sample_fps=True)
    assert default_fps == 2.0


# ---- images ----

def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))


def test_fetch_image_sources_agree(tmp_path, photo):
    path = tmp_path / "photo.png"
    photo.save(path)
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(photo)).decode()
    expected = np.asarray(photo.resize((644, 476), Image.BICUBIC))
    with http_server({"/photo.png": (200, png_bytes(photo))}) as base:
        sources = [str(path), "file://" + str(path), data_url, photo, base + "/photo.png"]
        for source in sources:
            image = fetch_image({"type": "image", "image": source})
            assert image.size == (644, 476)
            np.testing.assert_array_equal(np.asarray(image), expected)
        url_item = fetch_image({"type": "image_url", "image_url": {"url": base + "/photo.png"}})
        np.testing.assert_array_equal(np.asarray(url_item), expected)


def test_fetch_image_size_options(photo):
    assert fetch_image({"image": photo, "resized_height": 100, "resized_width": 200}).size == (196, 112)
    assert fetch_image({"image": photo, "max_pixels": 100_000}).size == (364, 252)
    assert fetch_image({"image": photo, "min_pixels": 1_000_000}).size == (1176, 868)


def test_fetch_image_rgba_on_white():
    rgba = Image.new("RGBA", (56, 56), (0, 0, 255, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 28, 56))
    out = np.asarray(fetch_image({"image": rgba}))
    np.testing.assert_array_equal(out[:, :20], np.broadcast_to([255, 0, 0], (56, 20, 3)))
    np.testing.assert_array_equal(out[:, 36:], np.full((56, 20, 3), 255))


def test_process_vision_info(tmp_path, photo):
    path = write_video(str(tmp_path / "clip.mp4"), 60, 30)
    messages = [
        {"role": "system", "content": "You are helpful."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": photo},
                {"type": "video", "video": path},
                {"type": "text", "text": "What happens?"},
                {"type": "image", "image": photo, "max_pixels": 50_000},
                {"type": "video", "video": [photo, photo, photo], "fps": 1.0},
            ],
        },
    ]
    images, videos, kwargs = process_vision_info(messages, return_video_kwargs=True)
    assert [im.size for im in images] == [(644, 476), (252, 168)]
    assert [v.shape[0] for v in videos] == [4, 4]
    assert kwargs == {"fps": [pytest.approx(4 / 60 * 30), 1.0]}
    # a batch of conversations, and a text-only one
    images, videos = process_vision_info([messages[1:2], [{"role": "user", "content": "hi"}]])
    assert len(images) == 2 and len(videos) == 2
    assert process_vision_info([{"role": "user", "content": "hi"}]) == (None, None)


# ---- bad input ----

def test_missing_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        fetch_image({"image": missing})
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        fetch_image({"image": "file://" + missing})
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        fetch_video({"video": str(tmp_path / "nope.mp4")})


def test_corrupt_image_and_video(tmp_path, photo):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ValueError, match="cannot read image .*garbage.jpg"):
        fetch_image({"image": str(garbage)})
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png_bytes(photo)[:5000])
    with pytest.raises(ValueError, match="cannot read image .*truncated.png"):
        fetch_image({"image": str(truncated)})
    with pytest.raises(ValueError, match="cannot read image"):
        fetch_image({"image": "data:image/png;base64," + base64.b64encode(b"nope").decode()})
    with pytest.raises(ValueError, match="invalid base64"):
        fetch_image({"image": "data:image/png;base64,@@@"})
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(ValueError, match="cannot read video .*bad.mp4"):
        fetch_video({"video": str(bad_video)})


def test_too_few_frames(tmp_path):
    path = write_video(str(tmp_path / "one.mp4"), 1, 10)
    with pytest.raises(ValueError, match="between 2 and 1"):
        fetch_video({"video": path})
    path = write_video(str(tmp_path / "ten.mp4"), 10, 10)
    with pytest.raises(ValueError, match="between 2 and 10 .* 12"):
        fetch_video({"video": path, "nframes": 12})


def test_extreme_aspect_ratio_image():
    with pytest.raises(ValueError, match=r"aspect ratio .* 201.0 .*28x5628"):
        fetch_image({"image": Image.new("RGB", (5628, 28))})


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "s3://bucket/a.jpg", "gopher://x"])
def test_unsupported_scheme(url):
    with pytest.raises(ValueError, match=f"unsupported URL scheme '{url.split(':')[0]}'"):
        fetch_image({"image": url})


@pytest.mark.parametrize("status", [404, 403, 500])
def test_http_errors_carry_the_status(status):
    with http_server({"/x.png": (status, b"error page")}) as base:
        with pytest.raises(OSError, match=f"HTTP error {status}.*{base}/x.png"):
            fetch_image({"image": base + "/x.png"})


def test_http_connection_refused():
    with http_server({}) as base:
        pass  # the server is closed now: nothing listens on that port
    with pytest.raises(OSError, match="could not download"):
        fetch_image({"image": base + "/x.png"})


def test_bad_items():
    with pytest.raises(ValueError, match="'image' or 'image_url'"):
        fetch_image({"type": "image"})
    with pytest.raises(ValueError, match="non-empty list of frames"):
        fetch_video({"video": []})
