"""Weight-only inference through the model: bfloat16 weights on CPU, int8 / int4 quantised while
loading, saved and loaded back as stored, generate, the demo model's answers, the scripts' flag.

Error bounds, stated (relative errors ||y_q - y|| / ||y|| over the whole output; measured in brackets):
- one Linear at the 3B's attention width (2048 -> 2048) with N(0, 0.02) weights: bfloat16 <= 0.5%
  (0.17%), int8 <= 1.5% (0.84%), int4 <= 13% (11.7%). Rounding to a step s leaves an error of
  std s / sqrt(12): the step is the row's max |w| / 127 (int8: ~3.8 sigma over 2048 inputs, ~0.9%)
  or its group's max / 7 (int4: ~2.6 sigma over 128 inputs, ~11%); bfloat16 keeps 8 significant
  bits (~0.15%).
- the tiny random model's logits on an image prompt: int8 <= 2%, int4 <= 25% (its 32-wide layers
  give int4 one group of 32 per row, and the layers' errors add up).
- the trained demo model answers its held-out questions at least as accurately as in float32.
"""

import inspect
import json
import os
import runpy
import shutil
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from paddlemix_qwen25vl import quantization
from paddlemix_qwen25vl.checkpoint_io import SafetensorsFile, write_safetensors
from paddlemix_qwen25vl.demo import SHIPPED_WEIGHTS
from paddlemix_qwen25vl.loading import PADDLE_METADATA, SAFE_SINGLE
from paddlemix_qwen25vl.quantization import WeightOnlyEmbedding, WeightOnlyLinear, WeightOnlyTiedHead, quantize_model
from paddlemix_qwen25vl.runtime import has_gpu
from paddlemix_qwen25vl.tools.make_synthetic_dataset import make_dataset
from paddlemix_qwen25vl.training.demo_model import evaluate

from helpers.checkpoints import copy_processor_files
from helpers.paths import REPO

KINDS = ("bfloat16", "weight_only_int8", "weight_only_int4")
QUANT_TYPES = ("weight_only_int8", "weight_only_int4")


def _relative_error(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _bf16_words(array):
    """bfloat16 words of a float32 array whose values are bfloat16 numbers (exact)."""
    return (np.ascontiguousarray(array, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


@pytest.fixture(scope="module")
def bf16_valued(tiny_checkpoint, tmp_path_factory):
    """The tiny model with every weight rounded to bfloat16, saved as float32 (``f32``) and as
    bfloat16 words (``bf16``, what the released checkpoints are)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint)
    for param in model.parameters():
        param.set_value(param.astype("bfloat16").astype("float32"))
    dirs = {name: str(tmp_path_factory.mktemp(name)) for name in ("f32", "bf16")}
    model.save_pretrained(dirs["f32"])
    reader = SafetensorsFile(os.path.join(dirs["f32"], SAFE_SINGLE))
    layout = {key: (reader.shape(key), "BF16") for key in reader.keys()}
    words = (_bf16_words(reader.raw(key)) for key in reader.keys())
    write_safetensors(os.path.join(dirs["bf16"], SAFE_SINGLE), layout, words, PADDLE_METADATA)
    for name in ("config.json", "generation_config.json"):
        shutil.copy2(os.path.join(dirs["f32"], name), os.path.join(dirs["bf16"], name))
    for path in dirs.values():
        copy_processor_files(path)
    return dirs


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint):
    """One image question through the processor (both towers run)."""
    processor = Qwen2_5_VLProcessor.from_pretrained(tiny_checkpoint)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    pixels = np.random.default_rng(0).integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
    return dict(processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pd"))


def _logits(model, inputs):
    with paddle.no_grad():
        return model(**inputs).logits.numpy()


@pytest.fixture(scope="module")
def float32_logits(tiny_checkpoint, inputs):
    return _logits(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint), inputs)


def _forbid_quantising(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("quantize_weight was called")

    monkeypatch.setattr(quantization, "quantize_weight", refuse)


def test_bfloat16_weights_give_the_float32_logits(bf16_valued, inputs, monkeypatch):
    """bfloat16 weights of a bfloat16-valued checkpoint are the float32 model's weights: the logits
    agree within float32 rounding. The checkpoint's words are kept as they are (never quantised)."""
    want = _logits(Qwen2_5_VLForConditionalGeneration.from_pretrained(bf16_valued["f32"]), inputs)
    with monkeypatch.context() as patch:
        _forbid_quantising(patch)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(bf16_valued["bf16"], dtype="bfloat16")
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, WeightOnlyLinear) and layer.qweight.dtype == paddle.bfloat16
    assert isinstance(model.model.embed_tokens, WeightOnlyEmbedding) and isinstance(model.lm_head, WeightOnlyTiedHead)
    # what stays float32: norms, biases, the patch-embed conv
    float_params = {name for name, p in model.named_parameters() if p.dtype == paddle.float32}
    assert all(name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight", "bias", "patch_embed.proj.weight"))
               for name in float_params), float_params
    got = _logits(model, inputs)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())
    from_f32 = Qwen2_5_VLForConditionalGeneration.from_pretrained(bf16_valued["f32"], dtype="bfloat16")
    np.testing.assert_array_equal(
        from_f32.model.layers[1].mlp.down_proj.qweight.view(paddle.uint16).numpy(),
        model.model.layers[1].mlp.down_proj.qweight.view(paddle.uint16).numpy(),
    )


@pytest.mark.parametrize("kind,bound", [("bfloat16", 0.005), ("weight_only_int8", 0.015), ("weight_only_int4", 0.13)])
def test_layer_output_error_bound(kind, bound):
    """The 3B's attention projection shape, 2048 -> 2048 (16 int4 groups per row)."""
    paddle.seed(0)
    in_features = out_features = 2048
    linear = paddle.nn.Linear(in_features, out_features)
    linear.weight.set_value(paddle.normal(0.0, 0.02, linear.weight.shape))
    layer = WeightOnlyLinear(linear, kind)
    layer.take_float(linear.weight.numpy(), "F32")
    x = paddle.randn([4, in_features])
    assert _relative_error(layer(x).numpy(), linear(x).numpy()) <= bound


def _vm_flags(address):
    """The VmFlags of this process's mapping that holds ``address`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields[0] == "VmFlags:" and inside:
                return fields[1:]
            if "-" in fields[0] and not fields[0].endswith(":"):
                low, high = (int(bound, 16) for bound in fields[0].split("-"))
                inside = low <= address < high
    return []


@pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/transparent_hugepage"),
                    reason="no transparent huge pages here (Linux with THP only)")
@pytest.mark.parametrize("kind", KINDS)
def test_decode_weights_ask_for_huge_pages(kind):
    """A weight-only layer's stored weight (int4: 4 MiB here) is advised MADV_HUGEPAGE before it
    is written, the "hg" flag of its mapping: the kernel backs it with 2 MiB pages where its THP
    mode allows (checkpoint_io.weight_tensor)."""
    linear = paddle.nn.Linear(2048, 4096)
    layer = WeightOnlyLinear(linear, kind)
    value = linear.weight.numpy()
    layer.take_float(*((_bf16_words(value), "BF16") if kind == "bfloat16" else (value, "F32")))
    first_huge_page = -(-layer.qweight.data_ptr() // (2 << 20)) * (2 << 20)
    assert "hg" in _vm_flags(first_huge_page)


@pytest.mark.parametrize("quant_type,bound", [("weight_only_int8", 0.02), ("weight_only_int4", 0.25)])
def test_quantised_logits_error_bound(tiny_checkpoint, inputs, float32_logits, quant_type, bound):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, quant_type=quant_type)
    assert model.model.layers[0].mlp.up_proj.kind == quant_type and model.visual.merger.mlp[2].kind == quant_type
    logits = _logits(model, inputs)
    assert _relative_error(logits, float32_logits) <= bound
    # quantising a loaded float model in memory is the same as quantising while loading
    in_memory = quantize_model(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint), quant_type)
    np.testing.assert_array_equal(_logits(in_memory, inputs), logits)


def test_gpu_path_calls_paddles_weight_only_kernels(tiny_checkpoint, inputs, float32_logits, monkeypatch, tmp_path):
    """The GPU path emulated on CPU: Paddle's kernels replaced by float stand-ins with the same
    parameters, which check what they are given (the [in, out] weight, int4's group of 128)."""
    calls = []

    def weight_quantize(x, algo="weight_only_int8", arch=None, group_size=-1):
        calls.append((algo, group_size, tuple(x.shape)))
        return x, paddle.ones([x.shape[1]])

    def weight_only_linear(x, weight, bias=None, weight_scale=None, weight_dtype="int8", arch=None, group_size=-1):
        assert (weight_dtype, group_size) == ("int4", 128) and list(weight_scale.shape) == [weight.shape[1]]
        return paddle.matmul(x, weight) + (0 if bias is None else bias)

    for fake in (weight_quantize, weight_only_linear):
        real = getattr(paddle.nn.quant, fake.__name__)
        assert list(inspect.signature(fake).parameters) == list(inspect.signature(real).parameters)
        monkeypatch.setattr(paddle.nn.quant, fake.__name__, fake)
    monkeypatch.setattr(quantization, "on_gpu", lambda: True)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, quant_type="weight_only_int4")
    assert ("weight_only_int4", 128, (32, 64)) in calls  # gate_proj: hidden 32 -> intermediate 64
    assert not isinstance(model.model.embed_tokens, WeightOnlyEmbedding)  # stays in the compute dtype there
    np.testing.assert_allclose(_logits(model, inputs), float32_logits, rtol=0, atol=1e-5 * np.abs(float32_logits).max())
    with pytest.raises(NotImplementedError, match="not saved"):
        model.save_pretrained(str(tmp_path))


@pytest.mark.skipif(not has_gpu(), reason="needs a GPU: Paddle's weight_quantize / weight_only_linear are GPU-only")
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_gpu_weight_only_layers(tiny_checkpoint, inputs, float32_logits, quant_type):
    paddle.set_device("gpu")
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, quant_type=quant_type, dtype="float16")
        assert model.model.layers[0].mlp.up_proj.gpu
        on_gpu = {name: paddle.to_tensor(value.numpy()) for name, value in inputs.items()}  # to the current device
        assert _relative_error(_logits(model, on_gpu).astype("float32"), float32_logits) <= 0.3
    finally:
        paddle.set_device("cpu")


def _buffers(model):
    return {name: tensor.numpy() for name, tensor in model.named_buffers() if name.endswith(("qweight", "scales"))}


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_saved_quantised_model_loads_without_requantising(tiny_checkpoint, inputs, tmp_path, monkeypatch, quant_type):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, quant_type=quant_type)
    model.save_pretrained(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["quantization_config"]["quant_type"] == quant_type
    _forbid_quantising(monkeypatch)
    loaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path))  # no quant_type: as saved
    want, got = _buffers(model), _buffers(loaded)
    assert sorted(got) == sorted(want) and len(want) > 20
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(_logits(loaded, inputs), _logits(model, inputs))
    other = QUANT_TYPES[1 - QUANT_TYPES.index(quant_type)]
    with pytest.raises(ValueError, match="already quantised"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path), quant_type=other)


def test_saved_bfloat16_model_is_a_plain_bfloat16_checkpoint(bf16_valued, tmp_path):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(bf16_valued["bf16"], dtype="bfloat16")
    model.save_pretrained(str(tmp_path))
    saved, stored = SafetensorsFile(str(tmp_path / SAFE_SINGLE)), SafetensorsFile(os.path.join(bf16_valued["bf16"], SAFE_SINGLE))
    key = "model.layers.0.mlp.gate_proj.weight"
    assert saved.dtype_name(key) == "BF16"
    np.testing.assert_array_equal(saved.raw(key), stored.raw(key))


@pytest.mark.parametrize("kind", KINDS)
def test_generate_works_for_each_kind(bf16_valued, inputs, kind):
    """Greedy generation runs unchanged; on the bfloat16-valued checkpoint bfloat16 weights give
    the float32 model's tokens."""
    options = {"dtype": "bfloat16"} if kind == "bfloat16" else {"quant_type": kind}
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(bf16_valued["bf16"], **options)
    tokens, _ = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    assert tokens.shape == [1, 3]
    if kind == "bfloat16":
        reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(bf16_valued["f32"])
        np.testing.assert_array_equal(tokens.numpy(), reference.generate(**inputs, max_new_tokens=3, min_new_tokens=3)[0].numpy())


def test_cpu_load_builds_the_kernels_or_warns(tiny_checkpoint, inputs, monkeypatch, caplog):
    """A bfloat16/int8/int4 load on CPU compiles the kernels when they are missing (not a silent
    fallback that dequantises every weight at every call); if that build fails it warns and the
    fallback runs."""
    from paddlemix_qwen25vl.ops import weight_only

    if has_gpu():
        pytest.skip("the CPU kernels are for CPU loads")
    built = []
    monkeypatch.setattr(weight_only, "weight_only_ops_available", lambda: bool(built))
    monkeypatch.setattr(weight_only, "build_ops", lambda: built.append(True))
    Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, quant_type="weight_only_int8")
    assert built == [True]

    def no_compiler():
        raise RuntimeError("g++: not found")

    built.clear()
    monkeypatch.setattr(weight_only, "build_ops", no_compiler)
    with caplog.at_level("WARNING"):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype="bfloat16")
    assert "could not be built (RuntimeError: g++: not found)" in caplog.text
    tokens, _ = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2)  # the fallback computes
    assert tokens.shape == [1, 2]


def test_bad_quant_type_and_tensor_parallel_are_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="unknown quant_type 'int3'.*weight_only_int8, weight_only_int4"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, quant_type="int3")
    with pytest.raises(ValueError, match="not supported with tensor parallelism"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, quant_type="weight_only_int8", mp_degree=2)


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory):
    if not os.path.isdir(SHIPPED_WEIGHTS):
        pytest.skip("no trained demo weights in examples/assets/demo_weights")
    root = tmp_path_factory.mktemp("demo")
    model_dir = root / "model"
    shutil.copytree(SHIPPED_WEIGHTS, model_dir)
    copy_processor_files(model_dir)
    make_dataset(str(root / "data"), num_samples=0, num_eval=8, seed=1234)  # images never seen in training
    return str(model_dir), str(root / "data" / "eval.jsonl")


def test_demo_model_answers_as_accurately_quantised(trained_demo):
    model_dir, annotation = trained_demo
    baseline, _ = evaluate(model_dir, annotation, dtype="float32")
    assert baseline >= 0.9
    for options in ({"dtype": "bfloat16"}, {"quant_type": "weight_only_int8"}, {"quant_type": "weight_only_int4"}):
        accuracy, results = evaluate(model_dir, annotation, **options)
        assert accuracy >= baseline, (options, results)


def test_quant_type_through_a_script(trained_demo, monkeypatch, capsys):
    """``--quant_type`` in an inference script: the demo image's shape, from int8 weights."""
    monkeypatch.setattr(sys, "argv", ["single_image_infer.py", "--model_path", trained_demo[0],
                                      "--quant_type", "weight_only_int8", "--max_new_tokens", "4"])
    runpy.run_path(os.path.join(REPO, "examples", "single_image_infer.py"), run_name="__main__")
    assert capsys.readouterr().out.split("output_text:")[1].strip() == "circle"
