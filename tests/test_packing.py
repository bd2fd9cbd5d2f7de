"""Samples packed into one row (attention_mask numbering them 1, 2, ...) give each sample's own logits."""

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration
from paddlemix_qwen25vl.attention import sequence_runs
from helpers.reference import make_inputs

pytestmark = pytest.mark.usefixtures("custom_ops")  # these tests run the compiled operators

SAMPLES = [
    [([("image", (1, 4, 6))], [3, 4], [])],
    [([], [9], [])],
    [([("video", (2, 4, 4))], [2, 5], [0.5])],
]


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flash_attention_2"])
def test_packed_row_equals_separate_samples(reference_checkpoint, implementation):
    _, path = reference_checkpoint
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation=implementation)
    separate, ids, segments, positions = [], [], [], []
    pixels, grids, videos, video_grids, seconds = [], [], [], [], []
    for number, rows in enumerate(SAMPLES, start=1):
        inputs = make_inputs(rows, seed=number)
        inputs.pop("labels")
        with paddle.no_grad():
            separate.append(model(**{k: paddle.to_tensor(v) for k, v in inputs.items()}, use_cache=False).logits.numpy()[0])
        pos, _ = model.get_rope_index(
            paddle.to_tensor(inputs["input_ids"]),
            inputs.get("image_grid_thw"),
            inputs.get("video_grid_thw"),
            inputs.get("second_per_grid_ts"),
        )
        ids.append(inputs["input_ids"][0])
        segments.append(np.full(inputs["input_ids"].shape[1], number))
        positions.append(pos.numpy()[:, 0])
        if "pixel_values" in inputs:
            pixels.append(inputs["pixel_values"])
            grids.append(inputs["image_grid_thw"])
        if "pixel_values_videos" in inputs:
            videos.append(inputs["pixel_values_videos"])
            video_grids.append(inputs["video_grid_thw"])
            seconds.append(inputs["second_per_grid_ts"])
    packed = dict(
        input_ids=paddle.to_tensor(np.concatenate(ids)[None]),
        attention_mask=paddle.to_tensor(np.concatenate(segments)[None]),
        position_ids=paddle.to_tensor(np.concatenate(positions, axis=1)[:, None]),
        pixel_values=paddle.to_tensor(np.concatenate(pixels)),
        image_grid_thw=paddle.to_tensor(np.concatenate(grids)),
        pixel_values_videos=paddle.to_tensor(np.concatenate(videos)),
        video_grid_thw=paddle.to_tensor(np.concatenate(video_grids)),
    )
    with paddle.no_grad():
        logits = model(**packed, use_cache=False).logits.numpy()[0]
    np.testing.assert_allclose(logits, np.concatenate(separate), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="need position_ids per sample"):
        model(**{k: v for k, v in packed.items() if k != "position_ids"}, use_cache=False)


def test_sequence_runs_with_cache_and_padding():
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 2, 2, 2, 0]])
    rows_q, rows_k, cu_q, cu_k = sequence_runs(mask, past_length=3)
    assert cu_k.tolist() == [0, 4, 6, 9] and cu_q.tolist() == [0, 3, 3, 5]
    assert rows_k.tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert rows_q.tolist() == [0, 1, 2, 3, 4]
