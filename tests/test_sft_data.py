"""SFT data pipeline: record formats, labels token by token, positions, bad and over-long records."""

import json
import os

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration
from paddlemix_qwen25vl.demo import DEMO_VIDEO
from paddlemix_qwen25vl.training.conversation import RecordError
from paddlemix_qwen25vl.training.data import SFTDataset, build_index, load_meta

from helpers.checkpoints import tiny_config
from helpers.data import save_image, write_dataset

IM_START, IM_END, NEWLINE, ASSISTANT = 151644, 151645, 198, 77091


def dataset(meta_path, processor, **kwargs):
    kwargs.setdefault("max_seq_length", 4096)
    return SFTDataset(meta_path, processor, tiny_config(), **kwargs)


def multi_turn(tmp_path):
    save_image(str(tmp_path / "a.png"))
    return {
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "<image>What is shown?"},
            {"role": "assistant", "content": "A red square."},
            {"role": "user", "content": "And its size?"},
            {"role": "assistant", "content": "Small, about 50 pixels."},
        ],
        "images": ["a.png"],
    }


def test_labels_token_by_token_multi_turn_with_image(tmp_path, processor):
    record = multi_turn(tmp_path)
    sample = dataset(write_dataset(str(tmp_path), [record]), processor)[0]
    # The reference: the chat template rendered whole and expanded by the processor.
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
                {"role": "assistant", "content": "A red square."},
                {"role": "user", "content": "And its size?"},
                {"role": "assistant", "content": "Small, about 50 pixels."}]
    text = processor.apply_chat_template(messages)
    from PIL import Image
    expected = processor(text=[text], images=[Image.open(tmp_path / "a.png")], return_tensors="np")
    ids = sample["input_ids"].tolist()
    assert ids == expected["input_ids"][0].tolist()
    np.testing.assert_array_equal(sample["image_grid_thw"], expected["image_grid_thw"])
    np.testing.assert_array_equal(sample["pixel_values"], expected["pixel_values"])
    tokenizer = processor.tokenizer
    supervised = []
    for reply in ("A red square.", "Small, about 50 pixels."):
        supervised.append(tokenizer(reply, add_special_tokens=False)["input_ids"] + [IM_END, NEWLINE])
    labels = sample["labels"].tolist()
    # Walk the ids: every token after "<|im_start|>assistant\n" up to and including "<|im_end|>\n" is supervised.
    want = [-100] * len(ids)
    starts = [i + 3 for i in range(len(ids) - 2) if ids[i:i + 3] == [IM_START, ASSISTANT, NEWLINE]]
    assert len(starts) == 2
    for start, reply in zip(starts, supervised):
        assert ids[start:start + len(reply)] == reply
        want[start:start + len(reply)] = reply
    assert labels == want


def test_conversations_format_equals_messages_format(tmp_path, processor):
    save_image(str(tmp_path / "a.png"))
    messages = {"messages": [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "Red."}],
                "images": ["a.png"]}
    conversations = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                         {"from": "gpt", "value": "Red."}]}
    a = dataset(write_dataset(str(tmp_path), [messages], name="m"), processor)[0]
    b = dataset(write_dataset(str(tmp_path), [conversations], name="c", jsonl=False), processor)[0]
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_text_only_record_and_default_system_prompt(tmp_path, processor):
    record = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
    sample = dataset(write_dataset(str(tmp_path), [record]), processor)[0]
    assert "pixel_values" not in sample and "pixel_values_videos" not in sample
    text = processor.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    assert sample["input_ids"].tolist() == processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(sample["position_ids"], np.tile(np.arange(len(sample["input_ids"])), (3, 1)))


def test_positions_equal_model_rope_index(tmp_path, processor, tiny_checkpoint):
    save_image(str(tmp_path / "a.png"), size=(112, 56))
    record = {"messages": [{"role": "user", "content": "<image>and<video>?"}, {"role": "assistant", "content": "ok"}],
              "images": ["a.png"], "videos": [DEMO_VIDEO]}
    sample = dataset(write_dataset(str(tmp_path), [record]), processor, image_resolution=112)[0]
    assert sample["video_grid_thw"].shape == (1, 3)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint)
    # the dataset passes the video's own second_per_grid_ts (temporal patch / sampling fps)
    _, fps = dataset(write_dataset(str(tmp_path), [record], name="again"), processor)._load_video(DEMO_VIDEO)
    fps_seconds = [2 / fps]
    expected, _ = model.get_rope_index(paddle.to_tensor(sample["input_ids"][None]), sample["image_grid_thw"],
                                       sample["video_grid_thw"], fps_seconds)
    np.testing.assert_array_equal(sample["position_ids"], expected.numpy()[:, 0])
    assert sample["position_ids"].max() < len(sample["input_ids"])  # MRoPE compresses the vision items


def test_image_resolution_is_honoured(tmp_path, processor):
    save_image(str(tmp_path / "big.png"), size=(448, 224))
    record = {"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "ok"}],
              "images": ["big.png"]}
    meta = write_dataset(str(tmp_path), [record])
    assert dataset(meta, processor, image_resolution=112)[0]["image_grid_thw"].tolist() == [[1, 4, 8]]
    assert dataset(meta, processor, image_resolution=448)[0]["image_grid_thw"].tolist() == [[1, 16, 32]]


def test_bad_records_are_skipped_counted_and_strict_raises(tmp_path, processor, caplog):
    save_image(str(tmp_path / "ok.png"))
    good = {"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "ok"}], "images": ["ok.png"]}
    missing = {"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "x"}], "images": ["nope.png"]}
    mismatch = {"messages": [{"role": "user", "content": "<image><image>?"}, {"role": "assistant", "content": "x"}], "images": ["ok.png"]}
    meta = write_dataset(str(tmp_path), [missing, mismatch, good])
    with open(os.path.join(tmp_path, "data.jsonl"), "a") as f:
        f.write("{not json\n")
    ds = dataset(meta, processor)
    assert len(ds) == 4
    with caplog.at_level("WARNING"):
        samples = [ds[i] for i in range(len(ds))]
    # each bad record is replaced by the next usable one
    for sample in samples:
        np.testing.assert_array_equal(sample["input_ids"], samples[2]["input_ids"])
    assert len(ds.stats.skipped) == 3
    assert "data[0]" in caplog.text and "nope.png" in caplog.text and "data[1]" in caplog.text
    assert "3 bad record(s) skipped" in ds.stats.summary()
    with pytest.raises(RecordError, match=r"data\[0\]"):
        dataset(meta, processor, strict=True)[0]


def test_over_long_samples_cut_text_only_or_dropped(tmp_path, processor):
    save_image(str(tmp_path / "a.png"))  # 56x84 -> 6 image tokens
    long_answer = " ".join(["word"] * 200)
    text_after = {"messages": [{"role": "user", "content": "<image>Talk."}, {"role": "assistant", "content": long_answer}],
                  "images": ["a.png"]}
    image_late = {"messages": [{"role": "user", "content": "x " * 300 + "<image>"}, {"role": "assistant", "content": "ok"}],
                  "images": ["a.png"]}
    ds = dataset(write_dataset(str(tmp_path), [text_after, image_late]), processor, max_seq_length=64)
    cut = ds[0]
    assert len(cut["input_ids"]) == 64 and len(cut["labels"]) == 64
    assert (cut["input_ids"] == processor.tokenizer.image_token_id).sum() == 6
    assert cut["position_ids"].shape == (3, 64)
    ds[1]  # dropped: replaced by record 0
    assert len(ds.stats.truncated) == 1 and len(ds.stats.too_long) == 1
    assert "1 too long and dropped, 1 truncated" in ds.stats.summary()


def test_meta_repeat_time_and_data_root(tmp_path):
    records = [{"conversations": [{"from": "human", "value": str(i)}, {"from": "gpt", "value": "ok"}]} for i in range(10)]
    meta = write_dataset(str(tmp_path / "ann"), records, repeat_time=2.5)
    spec, = load_meta(meta)
    assert spec.data_root == str(tmp_path / "ann") and spec.repeat_time == 2.5
    index = build_index([spec], seed=1)
    counts = np.bincount([r for _, r in index], minlength=10)
    assert counts.tolist() == [3] * 5 + [2] * 5  # twice, then the first half (PaddleMIX takes the first records)
    assert build_index([spec], seed=2) == index
    with open(meta) as f:
        content = json.load(f)
    content["data"].update(repeat_time=0.3, data_root="images")
    with open(meta, "w") as f:
        json.dump(content, f)
    spec, = load_meta(meta)
    assert spec.data_root == str(tmp_path / "ann" / "images") and build_index([spec]) == [(0, 0), (0, 1), (0, 2)]
