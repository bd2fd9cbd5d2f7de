"""Qwen2_5_VLProcessor against transformers' Qwen2_5_VLProcessor built from the same files."""
import json
from fractions import Fraction

import numpy as np
import paddle
import pytest
from PIL import Image
from helpers.media import tokenizer_dir, write_video
from transformers import Qwen2_5_VLProcessor as ReferenceProcessor
from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor

from paddlemix_qwen25vl.processing import (
    MIXQwen2_5_Tokenizer,
    Qwen2_5_VLImageProcessor,
    Qwen2_5_VLProcessor,
    process_vision_info,
)
from paddlemix_qwen25vl.processing.chat_template import QWEN2_5_VL_CHAT_TEMPLATE

MIN_PIXELS, MAX_PIXELS = 3136, 12845056


@pytest.fixture(scope="module")
def processor():
    return Qwen2_5_VLProcessor(Qwen2_5_VLImageProcessor(), MIXQwen2_5_Tokenizer.from_pretrained(tokenizer_dir()))


@pytest.fixture(scope="module")
def reference():
    return ReferenceProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        tokenizer=Qwen2TokenizerFast.from_pretrained(tokenizer_dir()),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def image(height, width, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def user(*items):
    content = [{"type": "image", "image": x} if isinstance(x, Image.Image) else x for x in items]
    return [{"role": "user", "content": content}]


def text(s):
    return {"type": "text", "text": s}


def assert_matches_reference(processor, reference, messages, images=None, videos=None, fps=None, batch=None):
    """Both processors on the same prompt(s) (rendered by each one's chat template) and media."""
    conversations = batch or [messages]
    ours_text = [processor.apply_chat_template(m, add_generation_prompt=True) for m in conversations]
    ref_text = [reference.apply_chat_template(m, add_generation_prompt=True) for m in conversations]
    assert ours_text == ref_text
    video_kwargs = {} if fps is None else {"fps": fps}
    ours = processor(text=ours_text, images=images, videos=videos, return_tensors="pd", **video_kwargs)
    ref = reference(text=ref_text, images=images, videos=videos, padding=True, return_tensors="np", **video_kwargs)
    assert set(ours.keys()) == set(ref.keys())
    for key in ref.keys():
        if key == "second_per_grid_ts":
            assert ours[key] == pytest.approx(list(ref[key]), rel=1e-12)
            continue
        np.testing.assert_allclose(ours[key].numpy(), ref[key], rtol=0, atol=1e-6, err_msg=key)
    assert ours["input_ids"].dtype == paddle.int64 and ours["attention_mask"].dtype == paddle.int64
    return ours


def test_single_image(processor, reference):
    photo = image(480, 640)
    ours = assert_matches_reference(processor, reference, user(photo, text("Describe this image.")), images=[photo])
    assert ours["pixel_values"].dtype == paddle.float32 and ours["image_grid_thw"].dtype == paddle.int64
    ids = ours["input_ids"][0].tolist()
    assert ids[:15] == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652]
    assert ids.count(151655) == 391  # 476x644 -> 34x46 patches -> 17x23 merged


def test_several_images(processor, reference):
    photos = [image(480, 640, 1), image(100, 300, 2), image(1000, 500, 3)]
    messages = user(photos[0], text("and"), photos[1], photos[2], text("Compare them."))
    ours = assert_matches_reference(processor, reference, messages, images=photos)
    counts = (ours["image_grid_thw"].numpy().prod(axis=1) // 4).sum()
    assert (ours["input_ids"] == 151655).astype("int64").sum().item() == counts


def test_video(processor, reference, tmp_path):
    path = write_video(str(tmp_path / "clip.mp4"), 90, Fraction(30000, 1001), height=120, width=160)
    messages = user({"type": "video", "video": path}, text("What happens?"))
    _, videos, kwargs = process_vision_info(messages, return_video_kwargs=True)
    ours = assert_matches_reference(processor, reference, messages, videos=videos, fps=kwargs["fps"])
    assert ours["second_per_grid_ts"] == [pytest.approx(2 / (6 / 90 * 30000 / 1001))]


def test_images_and_videos_together(processor, reference):
    frames = np.random.default_rng(5).integers(0, 256, (5, 84, 112, 3), dtype=np.uint8)  # odd: last frame repeated
    photo = image(200, 300)
    messages = user(photo, {"type": "video"}, {"type": "video"}, text("?"))
    assert_matches_reference(processor, reference, messages, images=[photo], videos=[frames, frames[:2]], fps=[1.0, 3.0])
    # one fps number for all videos, and the 2.0 default
    assert_matches_reference(processor, reference, messages, images=[photo], videos=[frames, frames[:2]], fps=1.5)
    assert_matches_reference(processor, reference, messages, images=[photo], videos=[frames, frames[:2]])


def test_padded_batch(processor, reference):
    photos = [image(480, 640, 1), image(56, 56, 2), image(300, 200, 3)]
    batch = [
        user(photos[0], text("Describe this image in detail, please.")),
        user(photos[1], text("Hi")),
        [{"role": "user", "content": "Text only, no image."}],
        user(photos[2], text("What is it?")),
    ]
    ours = assert_matches_reference(processor, reference, None, images=photos, batch=batch)
    mask = ours["attention_mask"].numpy()
    assert mask[:, -1].all() and not mask[1, 0]  # padded on the left
    ids = ours["input_ids"].numpy()
    assert (ids[mask == 0] == 151643).all()


def test_placeholders_must_match_media(processor):
    photo = image(56, 56)
    prompt = processor.apply_chat_template(user(photo, photo, text("x")))
    with pytest.raises(ValueError, match=r"2 image placeholder\(s\) <\|image_pad\|> but 1 image\(s\)"):
        processor(text=prompt, images=[photo])
    with pytest.raises(ValueError, match=r"2 image placeholder\(s\) .* but 0 image\(s\)"):
        processor(text=prompt)
    with pytest.raises(ValueError, match=r"0 video placeholder\(s\) <\|video_pad\|> but 1 video\(s\)"):
        processor(text=prompt, images=[photo, photo], videos=[np.zeros((2, 56, 56, 3), np.uint8)])
    with pytest.raises(ValueError, match="3 fps values for 1 videos"):
        processor(text="<|video_pad|>", videos=[np.zeros((2, 56, 56, 3), np.uint8)], fps=[1.0, 2.0, 3.0])


def test_decode(processor):
    ids = processor(text=["Hello world", "你好"], return_tensors="np")["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["Hello world", "你好"]
    assert processor.decode(ids[0]) == "Hello world"


def test_numpy_output(processor):
    out = processor(text="<|vision_start|><|image_pad|><|vision_end|>", images=image(56, 56), return_tensors="np")
    assert out["input_ids"].dtype == np.int64 and out["pixel_values"].dtype == np.float32
    assert out["input_ids"].tolist() == [[151652, 151655, 151655, 151655, 151655, 151653]]


def test_save_and_load(processor, tmp_path):
    processor.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["processor_class"] == "Qwen2_5_VLProcessor" and config["max_pixels"] == MAX_PIXELS
    loaded = Qwen2_5_VLProcessor.from_pretrained(str(tmp_path), min_pixels=100_000, max_pixels=200_000)
    assert (loaded.image_processor.min_pixels, loaded.image_processor.max_pixels) == (100_000, 200_000)
    photo = image(480, 640)
    prompt = loaded.apply_chat_template(user(photo, text("x")), add_generation_prompt=True)
    out = loaded(text=prompt, images=[photo])
    _, gh, gw = out["image_grid_thw"][0].tolist()
    assert 100_000 <= gh * gw * 196 <= 200_000
    assert prompt == processor.apply_chat_template(user(photo, text("x")), add_generation_prompt=True)
    assert ReferenceProcessor.from_pretrained(str(tmp_path)).tokenizer("<|im_start|>")["input_ids"] == [151644]


def test_pixel_overrides_leave_the_image_processor_alone():
    image_processor = Qwen2_5_VLImageProcessor(min_pixels=5000, max_pixels=600_000)
    tokenizer = MIXQwen2_5_Tokenizer.from_pretrained(tokenizer_dir())
    processor = Qwen2_5_VLProcessor(image_processor, tokenizer, max_pixels=300_000)
    assert (processor.image_processor.min_pixels, processor.image_processor.max_pixels) == (5000, 300_000)
    assert (image_processor.min_pixels, image_processor.max_pixels) == (5000, 600_000)
