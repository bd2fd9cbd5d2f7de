"""Qwen2_5_VLImageProcessor against transformers' Qwen2VLImageProcessor (slow, PIL backend)."""
import json

import numpy as np
import paddle
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessor

from paddlemix_qwen25vl.processing import Qwen2_5_VLImageProcessor, smart_resize
from paddlemix_qwen25vl.processing.image_processing import to_rgb

MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 16384

RELEASED_PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}


def reference(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    return Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)


def random_image(height, width, mode, seed=0):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def assert_same(ours, ref, key="pixel_values", grid="image_grid_thw"):
    assert ours[key].shape == ref[key].shape
    np.testing.assert_allclose(ours[key], ref[key], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours[grid], ref[grid])


SIZES = [(28, 28), (480, 640), (100, 37), (333, 777), (1080, 1920), (57, 2000), (2000, 57), (29, 5000)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "I;16"])
def test_matches_reference(height, width, mode):
    image = random_image(height, width, mode)
    ours = Qwen2_5_VLImageProcessor()(images=image, return_tensors="np")
    assert_same(ours, reference()(images=image, return_tensors="np"))


@pytest.mark.parametrize("height,width", [(480, 640), (333, 777)])
def test_rgba_is_composited_on_white(height, width):
    """transformers drops alpha (PIL convert); we paste on white, as qwen-vl-utils does.

    Like with like: ours(RGBA) equals the reference on the white-composited image, and for an
    opaque RGBA image both rules agree.
    """
    rgb = np.asarray(random_image(height, width, "RGB"))
    alpha = np.random.default_rng(1).integers(0, 256, (height, width, 1), dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA")
    ours = Qwen2_5_VLImageProcessor()(images=rgba, return_tensors="np")
    assert_same(ours, reference()(images=to_rgb(rgba), return_tensors="np"))

    transparent = Image.new("RGBA", (width, height), (10, 20, 30, 0))
    white = np.asarray(Qwen2_5_VLImageProcessor(do_normalize=False)(images=transparent, return_tensors="np")["pixel_values"])
    np.testing.assert_allclose(white, 1.0, atol=1e-6)

    opaque = Image.fromarray(np.concatenate([rgb, np.full_like(alpha, 255)], axis=-1), "RGBA")
    assert_same(Qwen2_5_VLImageProcessor()(images=opaque, return_tensors="np"), reference()(images=opaque, return_tensors="np"))


@pytest.mark.parametrize(
    "min_pixels,max_pixels", [(3136, 200_000), (100_000, 1_003_520), (256 * 28 * 28, 1280 * 28 * 28), (3136, 50_000)]
)
@pytest.mark.parametrize("height,width", [(480, 640), (1080, 1920), (60, 40)])
def test_pixel_budget_honoured(min_pixels, max_pixels, height, width):
    image = random_image(height, width, "RGB")
    ours = Qwen2_5_VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)(images=image, return_tensors="np")
    assert_same(ours, reference(min_pixels, max_pixels)(images=image, return_tensors="np"))
    _, gh, gw = ours["image_grid_thw"][0]
    assert min_pixels <= gh * gw * 14 * 14 <= max_pixels


def test_several_images_and_tensors():
    images = [random_image(h, w, "RGB", seed=i) for i, (h, w) in enumerate([(56, 56), (480, 640), (90, 300)])]
    ours = Qwen2_5_VLImageProcessor()(images=images, return_tensors="pd")
    assert ours["pixel_values"].dtype == paddle.float32 and ours["image_grid_thw"].dtype == paddle.int64
    ref = reference()(images=images, return_tensors="np")
    assert_same({k: v.numpy() for k, v in ours.items()}, ref)
    assert ours["pixel_values"].shape[1] == 3 * 2 * 14 * 14
    assert int(ours["image_grid_thw"].prod(axis=1).sum()) == ours["pixel_values"].shape[0]


def test_numpy_image_input():
    array = np.asarray(random_image(100, 150, "RGB"))
    assert_same(Qwen2_5_VLImageProcessor()(images=array, return_tensors="np"), reference()(images=array, return_tensors="np"))


@pytest.mark.parametrize("num_frames", [1, 4, 5])
def test_video_matches_reference(num_frames):
    video = np.random.default_rng(num_frames).integers(0, 256, (num_frames, 84, 112, 3), dtype=np.uint8)
    ours = Qwen2_5_VLImageProcessor()(videos=video, return_tensors="np")
    ref = reference()(images=None, videos=video, return_tensors="np")
    assert_same(ours, ref, "pixel_values_videos", "video_grid_thw")
    assert ours["video_grid_thw"][0, 0] == (num_frames + 1) // 2
    frames = [Image.fromarray(f) for f in video]  # a list of frames is one video too
    assert_same(Qwen2_5_VLImageProcessor()(videos=frames, return_tensors="np"), ref, "pixel_values_videos", "video_grid_thw")


def test_processor_refuses_sides_below_28_like_the_reference():
    """transformers 4.51.3's image processor raises for a side below 28; the vision-info helper
    enlarges instead (10x1000 -> 28x1008)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference_smart_resize

    with pytest.raises(ValueError, match="must be larger than factor"):
        reference_smart_resize(10, 1000)
    with pytest.raises(ValueError, match=r"10x1000 \(height x width\) has a side shorter than 28"):
        Qwen2_5_VLImageProcessor()(images=random_image(10, 1000, "RGB"), return_tensors="np")
    assert smart_resize(10, 1000) == (28, 1008)


def test_aspect_ratio_over_200_is_rejected():
    with pytest.raises(ValueError, match=r"aspect ratio.*200.*201.*28x5628"):
        Qwen2_5_VLImageProcessor()(images=random_image(28, 5628, "RGB"))


def test_bad_array_is_rejected():
    with pytest.raises(ValueError, match="HWC uint8"):
        Qwen2_5_VLImageProcessor()(images=np.zeros((3, 32, 32), np.float32))


def test_config_round_trip_and_released_file(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(RELEASED_PREPROCESSOR_CONFIG))
    released = Qwen2_5_VLImageProcessor.from_pretrained(str(tmp_path))
    assert (released.min_pixels, released.max_pixels, released.merge_size) == (3136, 12845056, 2)

    custom = Qwen2_5_VLImageProcessor(min_pixels=1000, max_pixels=500_000)
    out = tmp_path / "saved"
    custom.save_pretrained(str(out))
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert {k: saved[k] for k in RELEASED_PREPROCESSOR_CONFIG} == {
        **RELEASED_PREPROCESSOR_CONFIG,
        "min_pixels": 1000,
        "max_pixels": 500_000,
    }
    assert Qwen2_5_VLImageProcessor.from_pretrained(str(out)).to_dict() == custom.to_dict()

    # transformers reads the file we write, with the same budget
    ref = Qwen2VLImageProcessor.from_pretrained(str(out))
    image = random_image(700, 900, "RGB")
    assert_same(custom(images=image, return_tensors="np"), ref(images=image, return_tensors="np"))


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        Qwen2_5_VLImageProcessor.from_pretrained(str(tmp_path))
    with pytest.raises(TypeError, match="unknown.*not_a_field"):
        Qwen2_5_VLImageProcessor(not_a_field=1)
