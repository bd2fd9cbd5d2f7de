"""The inference scripts run end to end on the bundled demo checkpoint; streaming; grounding helpers."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from paddlemix_qwen25vl.grounding import GroundingItem, draw_grounding, parse_grounding, to_original, to_resized

from helpers.paths import REPO


def run_script(name, env, *args):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", name), "--max_new_tokens", "6", *args],
        env=env, capture_output=True, text=True, timeout=600, cwd=env.get("WORKDIR", REPO),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize(
    "script,args",
    [
        ("single_image_infer.py", ["--benchmark"]),
        ("multi_image_infer.py", []),
        ("video_infer.py", ["--stream"]),
        ("single_image_batch_infer.py", ["--decode_strategy", "sampling", "--temperature", "0.7"]),
    ],
)
def test_script_runs_on_demo(demo_env, script, args):
    out = run_script(script, demo_env, *args)
    assert "output_text:" in out
    if "--benchmark" in args:
        report = json.loads(out[out.index("{"): out.rindex("}") + 1])
        assert report["new_tokens"] == 6 and report["prefill_seconds"] > 0 and report["peak_rss_gb"] > 0


@pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, "examples", "assets", "demo_weights")), reason="no trained demo weights")
def test_main_command_answers_what_the_readme_says(demo_env):
    """The README's first command asks the trained demo model about the demo image (a red circle)."""
    assert run_script("single_image_infer.py", demo_env).split("output_text:")[1].strip() == "circle"
    assert run_script("single_image_infer.py", demo_env, "--question", "What colour is the shape?").split("output_text:")[1].strip() == "red"


def test_grounding_script_saves_picture(demo_env, tmp_path):
    out = run_script("grounding_infer.py", demo_env, "--output_image", str(tmp_path / "boxes.png"))
    assert "output_text:" in out and (tmp_path / "boxes.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--max_new_tokens", "40000"], "exceeds the model's maximum of 32768 positions"),
    (["--image_file", "/no/such/image.png"], "/no/such/image.png"),
])
def test_script_errors_are_clear(demo_env, args, message):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "single_image_infer.py"), *args],
        env=demo_env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr or "FileNotFoundError" in result.stderr


def test_streaming_yields_the_same_text(demo_env):
    from paddlenlp.generation import TextIteratorStreamer

    from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, process_vision_info
    from paddlemix_qwen25vl.demo import DEMO_IMAGE, demo_checkpoint

    path = demo_checkpoint(demo_env["PADDLEMIX_DEMO_DIR"])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    processor = Qwen2_5_VLProcessor.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "image", "image": DEMO_IMAGE}, {"type": "text", "text": "Hi"}]}]
    images, _ = process_vision_info(messages)
    inputs = processor(text=[processor.apply_chat_template(messages, add_generation_prompt=True)], images=images)
    tokens, _ = model.generate(**inputs, max_new_tokens=12, decode_strategy="greedy_search")
    expected = processor.batch_decode(tokens.numpy().tolist(), skip_special_tokens=True)[0]
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(
        target=model.generate, kwargs=dict(**inputs, max_new_tokens=12, decode_strategy="greedy_search", streamer=streamer)
    )
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert len(pieces) > 1 and "".join(pieces) == expected


ANSWERS = [
    ('[{"bbox_2d": [10, 20, 110, 220], "label": "cat"}]', [GroundingItem("cat", box=(10, 20, 110, 220))]),
    ('```json\n[\n  {"bbox_2d": [5, 6, 7, 8], "label": "a"},\n  {"bbox_2d": [1, 2, 3, 4], "label": "b"}\n]\n```',
     [GroundingItem("a", box=(5, 6, 7, 8)), GroundingItem("b", box=(1, 2, 3, 4))]),
    ('The dog is here: {"bbox_2d": [30, 40, 10, 20], "label": "dog"}. Anything else?', [GroundingItem("dog", box=(10, 20, 30, 40))]),
    ('```json\n[{"point_2d": [12.5, 7], "label": "eye"}, {"bbox_2d": [1, 2, 3', [GroundingItem("eye", point=(12.5, 7))]),
    ('[{"bbox_2d": [1, 2, 3], "label": "bad"}, {"bbox_2d": ["x", 2, 3, 4]}, {"label": "none"}]', []),
    ("I cannot see any car in this image.", []),
    ("", []),
]


@pytest.mark.parametrize("text,expected", ANSWERS)
def test_parse_grounding(text, expected):
    assert parse_grounding(text) == expected


def test_coordinates_round_trip_and_drawing():
    items = [GroundingItem("box", box=(14.0, 28.0, 280.0, 196.0)), GroundingItem("pt", point=(100.0, 50.0))]
    original = to_original(items, resized_hw=(224, 308), original_hw=(480, 640))
    assert original[0].box == pytest.approx((14 * 640 / 308, 28 * 480 / 224, 280 * 640 / 308, 196 * 480 / 224))
    back = to_resized(original, original_hw=(480, 640), resized_hw=(224, 308))
    for a, b in zip(back, items):
        assert (a.box or a.point) == pytest.approx(b.box or b.point)
    clamped = to_original([GroundingItem("out", box=(-5, -5, 999, 999))], (100, 100), (50, 60))
    assert clamped[0].box == (0.0, 0.0, 60.0, 50.0)
    drawn = np.asarray(draw_grounding(Image.new("RGB", (640, 480), "white"), original))
    assert (drawn != 255).any()
