"""Every checkpoint path gives the same logits; bad checkpoints and inputs give clear errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest
import torch
from safetensors.torch import load_file, save_file

from paddlemix_qwen25vl import CheckpointError, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, config_preset
from paddlemix_qwen25vl.checkpoint_io import SafetensorsFile, drop_mapped_pages
from paddlemix_qwen25vl.convert import convert_hf_to_paddle
from paddlemix_qwen25vl.loading import is_linear_weight, resolve_model_path
from paddlemix_qwen25vl.runtime import default_num_threads, resolve_precision

from helpers.paths import REPO
from helpers.reference import build_sample, pixels_for

GRIDS = [(1, 4, 6), (1, 8, 10)]


def sample_inputs():
    rng = np.random.default_rng(3)
    ids = build_sample(rng, [("image", g) for g in GRIDS], [3, 2, 4])
    return dict(
        input_ids=np.array([ids], dtype=np.int64),
        pixel_values=pixels_for(rng, GRIDS),
        image_grid_thw=np.array(GRIDS, dtype=np.int64),
    )


def paddle_logits(path, **kwargs):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kwargs)
    with paddle.no_grad():
        return model(**{k: paddle.to_tensor(v) for k, v in sample_inputs().items()}, use_cache=False).logits.numpy()


@pytest.fixture(scope="module")
def baseline(reference_checkpoint):
    ref_model, path = reference_checkpoint
    with torch.no_grad():
        ref = ref_model(**{k: torch.from_numpy(v) for k, v in sample_inputs().items()}).logits.numpy()
    ours = paddle_logits(path)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
    return ours


def copy_config(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))


def test_sharded_hf(reference_checkpoint, baseline, tmp_path):
    ref_model, _ = reference_checkpoint
    ref_model.save_pretrained(str(tmp_path), max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    np.testing.assert_array_equal(paddle_logits(str(tmp_path)), baseline)


def test_transformers_452_layout(reference_checkpoint, baseline, tmp_path):
    _, path = reference_checkpoint
    state = load_file(os.path.join(path, "model.safetensors"))
    renamed = {}
    for key, value in state.items():
        if key.startswith("visual."):
            renamed["model." + key] = value
        elif key.startswith("model."):
            renamed["model.language_model." + key[len("model."):]] = value
        else:
            renamed[key] = value
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    # The newer config nests the decoder settings under text_config.
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    text_keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                 "vocab_size", "rope_scaling", "rms_norm_eps", "rope_theta", "max_position_embeddings")
    config["text_config"] = {k: config.pop(k) for k in text_keys}
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    np.testing.assert_array_equal(paddle_logits(str(tmp_path)), baseline)


def test_paddle_formats_and_round_trip(reference_checkpoint, baseline, tmp_path):
    _, path = reference_checkpoint
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    saved = tmp_path / "saved"
    model.save_pretrained(str(saved))
    assert SafetensorsFile(str(saved / "model.safetensors")).metadata == {"format": "np"}
    np.testing.assert_array_equal(paddle_logits(str(saved)), baseline)

    sharded = tmp_path / "saved_sharded"
    model.save_pretrained(str(sharded), max_shard_size=200_000)
    assert (sharded / "model.safetensors.index.json").exists()
    np.testing.assert_array_equal(paddle_logits(str(sharded)), baseline)

    pdparams = tmp_path / "pdparams"
    copy_config(path, str(pdparams))
    paddle.save(model.state_dict(), str(pdparams / "model_state.pdparams"))
    np.testing.assert_array_equal(paddle_logits(str(pdparams)), baseline)

    # Paddle layout without metadata: recognised from a non-square Linear weight's shape.
    bare = tmp_path / "bare"
    copy_config(path, str(bare))
    state = {k: torch.from_numpy(v.numpy().copy()) for k, v in model.state_dict().items()}
    save_file(state, str(bare / "model.safetensors"))
    np.testing.assert_array_equal(paddle_logits(str(bare)), baseline)


def test_converter_script(reference_checkpoint, baseline, tmp_path):
    ref_model, _ = reference_checkpoint
    src = tmp_path / "hf"
    ref_model.save_pretrained(str(src), max_shard_size="150KB")
    (src / "tokenizer_config.json").write_text("{}")
    dest = tmp_path / "paddle"
    subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "torch2paddle_weight_tran.py"), "--src_dir", str(src), "--dest_dir", str(dest)],
        check=True,
        capture_output=True,
    )
    assert (dest / "tokenizer_config.json").exists() and (dest / "model.safetensors.index.json").exists()
    for shard in dest.glob("model-*.safetensors"):
        assert SafetensorsFile(str(shard)).metadata == {"format": "np"}
    np.testing.assert_array_equal(paddle_logits(str(dest)), baseline)
    with pytest.raises(CheckpointError, match="already in Paddle layout"):
        convert_hf_to_paddle(str(dest), str(tmp_path / "again"))


def test_converter_refuses_wrong_size(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "torch2paddle_weight_tran.py"), "--src_dir", path,
         "--dest_dir", str(tmp_path / "out"), "--model_size", "72B"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "hidden_size=64, expected 8192" in result.stderr


def test_linear_table_matches_model(reference_checkpoint):
    _, path = reference_checkpoint
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    linears = {f"{n}.weight" for n, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)}
    params = {n for n, _ in model.named_parameters()}
    assert {n for n in params if is_linear_weight(n)} == linears


@pytest.mark.parametrize("size,hidden,tied,vision_out", [("3B", 2048, True, 2048), ("7B", 3584, False, 3584), ("72B", 8192, False, 8192)])
def test_shipped_configs(size, hidden, tied, vision_out):
    config = config_preset(size)
    assert (config.hidden_size, config.tie_word_embeddings, config.vision_config.out_hidden_size) == (hidden, tied, vision_out)
    assert config.vision_config.tokens_per_second == 2 and config.vision_config.hidden_size == 1280
    assert config.mrope_section == [16, 24, 24] and config.rms_norm_eps == 1e-6 and config.head_dim == 128
    assert config.image_token_id == 151655 and config.eos_token_id == 151645


# ----------------------------------------------------------------------------- errors
def corrupt_copy(path, dst, edit):
    copy_config(path, dst)
    state = load_file(os.path.join(path, "model.safetensors"))
    edit(state)
    save_file(state, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_extra_misshaped_keys(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    missing = corrupt_copy(path, str(tmp_path / "missing"), lambda s: s.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): model.norm.weight"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(missing)
    extra = corrupt_copy(path, str(tmp_path / "extra"), lambda s: s.update({"model.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): model.extra.weight"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(extra)
    shaped = corrupt_copy(
        path, str(tmp_path / "shaped"), lambda s: s.update({"model.norm.weight": torch.zeros(63)})
    )
    with pytest.raises(CheckpointError, match=r"mis-shaped keys \(1.*model.norm.weight \[63\]"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(shaped)


def test_truncated_and_empty_checkpoints(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    truncated = tmp_path / "truncated"
    copy_config(path, str(truncated))
    data = open(os.path.join(path, "model.safetensors"), "rb").read()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated file"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(str(truncated))
    (truncated / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(str(truncated))
    empty = tmp_path / "empty"
    copy_config(path, str(empty))
    with pytest.raises(CheckpointError, match="no weights in"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(str(empty))


def test_bad_forward_inputs(reference_checkpoint):
    _, path = reference_checkpoint
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    inputs = {k: paddle.to_tensor(v) for k, v in sample_inputs().items()}
    with pytest.raises(ValueError, match="image features and image tokens do not match: the prompt has 23 .* give 26 features"):
        model(**{**inputs, "input_ids": inputs["input_ids"][:, :-8]})
    with pytest.raises(ValueError, match=r"pixel_values must be \[num_patches, 1176\].*\[104, 1000\]"):
        model(**{**inputs, "pixel_values": inputs["pixel_values"][:, :1000]})
    with pytest.raises(ValueError, match=r"describes 104 patches but pixel_values has 100 rows"):
        model(**{**inputs, "pixel_values": inputs["pixel_values"][:100]})
    out = model(**inputs, use_cache=True)
    with pytest.raises(ValueError, match="needs rope_deltas"):
        model(input_ids=paddle.to_tensor([[5]]), past_key_values=out.past_key_values)


def test_hub_ids(reference_checkpoint, tmp_path, monkeypatch):
    _, path = reference_checkpoint
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"Qwen/Qwen2.5-VL-3B-Instruct.*Hugging Face cache.*HF_HUB_OFFLINE"):
        resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct")
    # A snapshot in the standard cache layout resolves without any network access.
    repo = cache / "models--Qwen--Qwen2.5-VL-3B-Instruct"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(path, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct") == str(snapshot)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nowhere"))


def test_dtype_and_threads(monkeypatch, caplog):
    assert resolve_precision(None) == ("float32", None)
    # the one policy, for the API and the scripts alike: bfloat16 weights, float32 compute on CPU
    assert resolve_precision("bf16") == ("float32", "bfloat16")
    with caplog.at_level("WARNING", logger="paddlemix_qwen25vl.runtime"):
        assert resolve_precision("fp16") == ("float32", None)
    assert "float16 has no CPU matmul kernels" in caplog.text
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_precision("float8")
    monkeypatch.setenv("PADDLEMIX_NUM_THREADS", "3")
    assert default_num_threads() == 3
    monkeypatch.delenv("PADDLEMIX_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_num_threads() == len(os.sched_getaffinity(0))


def test_config_reads_released_file_unchanged():
    config = Qwen2_5_VLConfig.from_pretrained(os.path.join(REPO, "configs", "qwen2_5_vl_7b"))
    assert config.vision_config.in_channels == 3 and config.dtype == "bfloat16"
    assert config.rope_scaling == {"type": "mrope", "mrope_section": [16, 24, 24]}
    with pytest.raises(ValueError, match="must sum to head_dim / 2 = 64"):
        Qwen2_5_VLConfig(rope_scaling={"type": "mrope", "mrope_section": [16, 24, 16]})


def _rss_file_mib() -> float:
    status = open("/proc/self/status").read()
    return int(status.split("RssFile:")[1].split()[0]) / 1024


def test_drop_mapped_pages_releases_a_read_slice(tmp_path):
    """After a slice of a mapped tensor is read, its file pages stop counting towards the RSS
    (quantisation by chunks relies on it); arrays not backed by the map are left alone."""
    path = str(tmp_path / "big.safetensors")
    save_file({"w": torch.ones(64, 1 << 18)}, path)  # 64 MiB of float32
    reader = SafetensorsFile(path)
    view = reader.raw("w")
    before = _rss_file_mib()
    assert float(view[32:].sum()) == 32 * (1 << 18)  # touches the second half's pages
    touched = _rss_file_mib()
    drop_mapped_pages(view[32:])
    dropped = _rss_file_mib()
    assert touched - before >= 28 and touched - dropped >= 28, (before, touched, dropped)
    assert float(view[32:].sum()) == 32 * (1 << 18), "the data reads back from the page cache"
    drop_mapped_pages(view[:, :8])  # strided: not a whole page range, left alone
    drop_mapped_pages(np.ones(1 << 20, np.float32))  # not a map
    reader.close()
