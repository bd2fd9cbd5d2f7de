"""Parity with transformers 4.51.3: vision output, logits, position ids and loss on the same weights."""

import numpy as np
import paddle
import pytest
import torch

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration
from helpers.reference import make_inputs

pytestmark = pytest.mark.usefixtures("custom_ops")  # these tests run the compiled operators

# (name, rows): each row is (items, text run lengths, second_per_grid_ts of its videos)
CASES = [
    ("images_of_several_sizes", [([("image", (1, 8, 8)), ("image", (1, 10, 14)), ("image", (1, 4, 6))], [3, 2, 4, 5], [])]),
    ("video_0.5s", [([("video", (4, 4, 6))], [3, 4], [0.5])]),
    ("video_1.0s", [([("video", (4, 8, 8))], [3, 4], [1.0])]),
    ("video_1.031s", [([("video", (6, 4, 4))], [2, 5], [1.031])]),
    ("image_and_video", [([("image", (1, 6, 10)), ("video", (2, 4, 6))], [3, 2, 4], [1.031])]),
    (
        "left_padded_batch",
        [
            ([("image", (1, 4, 6))], [3, 4], []),
            ([("image", (1, 8, 10)), ("video", (2, 4, 4))], [5, 3, 6], [0.5]),
        ],
    ),
    ("text_only", [([], [17], [])]),
    ("left_padded_text_only", [([], [9], []), ([], [14], [])]),
]


def run(model, tensors):
    """Logits, loss, rope index and vision outputs; the reference and this library share the API."""
    out = model(**tensors, use_cache=False)
    positions, deltas = model.get_rope_index(
        tensors["input_ids"],
        tensors.get("image_grid_thw"),
        tensors.get("video_grid_thw"),
        tensors.get("second_per_grid_ts"),
        tensors["attention_mask"],
    )
    vision = {
        pixels: model.visual(tensors[pixels], grid_thw=tensors[grid]).numpy()
        for pixels, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))
        if pixels in tensors
    }
    return out.logits.numpy(), out.loss.item(), positions.numpy(), deltas.numpy(), vision, out.rope_deltas.numpy()


@pytest.fixture(scope="module", params=["eager", "sdpa", "flash_attention_2"])
def loaded(request, reference_checkpoint):
    ref_model, path = reference_checkpoint
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation=request.param)
    return ref_model, model


@pytest.mark.parametrize("name,rows", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(loaded, name, rows):
    ref_model, model = loaded
    inputs = make_inputs(rows)
    with torch.no_grad():
        ref_logits, ref_loss, ref_pos, ref_deltas, ref_vision, _ = run(ref_model, {k: torch.from_numpy(v) for k, v in inputs.items()})
    with paddle.no_grad():
        logits, loss, positions, deltas, vision, rope_deltas = run(model, {k: paddle.to_tensor(v) for k, v in inputs.items()})

    for pixels, expected in ref_vision.items():
        np.testing.assert_allclose(vision[pixels], expected, rtol=0, atol=1e-5, err_msg=f"{pixels} vision output")
    np.testing.assert_array_equal(positions, ref_pos)
    np.testing.assert_array_equal(deltas, ref_deltas)
    np.testing.assert_array_equal(rope_deltas, ref_deltas)
    real = inputs["attention_mask"] == 1  # padded positions carry no meaning on either side
    np.testing.assert_allclose(logits[real], ref_logits[real], rtol=0, atol=1e-4)
    assert abs(loss - ref_loss) <= 1e-5
