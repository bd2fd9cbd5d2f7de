"""Gradients equal the reference's, with and without recompute (gradient checkpointing)."""

import numpy as np
import paddle
import pytest
import torch

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration
from helpers.reference import make_inputs

pytestmark = pytest.mark.usefixtures("custom_ops")  # these tests run the compiled operators

ROWS = [
    ([("image", (1, 8, 10)), ("video", (2, 4, 4))], [3, 2, 4], [0.5]),
    ([("image", (1, 4, 6))], [4, 3], []),
]
# (our parameter, reference parameter, transposed)
CHECKED = [
    ("visual.patch_embed.proj.weight", "visual.patch_embed.proj.weight", False),
    ("visual.blocks.0.attn.qkv.weight", "visual.blocks.0.attn.qkv.weight", True),
    ("visual.blocks.1.mlp.down_proj.bias", "visual.blocks.1.mlp.down_proj.bias", False),
    ("visual.merger.mlp.0.weight", "visual.merger.mlp.0.weight", True),
    ("model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.k_proj.weight", True),
    ("model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight", True),
    ("model.embed_tokens.weight", "model.embed_tokens.weight", False),
]


def reference_grads(ref_model, inputs):
    ref_model.zero_grad()
    out = ref_model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, use_cache=False)
    out.loss.backward()
    params = dict(ref_model.named_parameters())
    return out.loss.item(), {ours: params[theirs].grad.numpy() for ours, theirs, _ in CHECKED}


@pytest.mark.parametrize(
    "recompute,implementation",
    [(False, "sdpa"), (True, "sdpa"), (False, "flash_attention_2"), (True, "flash_attention_2")],
    ids=["plain", "recompute", "flash_op", "flash_op_recompute"],
)
def test_gradients_match_reference(reference_checkpoint, recompute, implementation):
    ref_model, path = reference_checkpoint
    inputs = make_inputs(ROWS, seed=5)
    ref_loss, ref_grads = reference_grads(ref_model, inputs)

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation=implementation)
    model.train()
    model.set_recompute(vision=recompute, decoder=recompute)
    out = model(**{k: paddle.to_tensor(v) for k, v in inputs.items()}, use_cache=False)
    out.loss.backward()
    assert abs(out.loss.item() - ref_loss) <= 1e-5
    params = dict(model.named_parameters())
    for name, _, transposed in CHECKED:
        grad = params[name].grad.numpy()
        expected = ref_grads[name].T if transposed else ref_grads[name]
        bad = np.nonzero(np.abs(grad - expected).max(-1) > 1e-5)[0] if grad.ndim == 2 else []
        np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-5, err_msg=f"{name} rows {bad}")


def test_loss_without_logits_equals_full_loss(reference_checkpoint):
    """return_logits=False projects only supervised rows: same loss and gradients as the full logits."""
    _, path = reference_checkpoint
    inputs = make_inputs(ROWS, seed=7)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    model.train()
    results = []
    for return_logits in (True, False):
        model.clear_gradients()
        out = model(**{k: paddle.to_tensor(v) for k, v in inputs.items()}, use_cache=False, return_logits=return_logits)
        out.loss.backward()
        assert (out.logits is None) == (not return_logits)
        results.append((out.loss.item(), model.model.layers[0].mlp.up_proj.weight.grad.numpy().copy()))
    assert abs(results[0][0] - results[1][0]) <= 1e-6
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="only makes sense with labels"):
        model(input_ids=paddle.to_tensor(inputs["input_ids"]), return_logits=False)
