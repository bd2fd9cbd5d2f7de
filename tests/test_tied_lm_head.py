"""The tied lm_head's transposed inference copy: same logits, and never stale."""

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration
from paddlemix_qwen25vl.distributed.layers import TiedLMHead, VocabParallelEmbedding
from paddlemix_qwen25vl.loading import load_weights
from reference import build_reference_model


def make_head(vocab: int = 300, hidden: int = 32):
    paddle.seed(0)
    embedding = VocabParallelEmbedding(vocab, hidden)
    head = TiedLMHead(embedding)
    head.eval()
    return embedding, head


def reference_logits(embedding, hidden_states):
    """x @ W^T in float64: what the head must return whichever layout it reads."""
    return hidden_states.numpy().astype(np.float64) @ embedding.weight.numpy().astype(np.float64).T


def test_inference_copy_gives_the_same_logits():
    embedding, head = make_head()
    x = paddle.randn([2, 3, 32])  # 6 rows <= DECODE_ROWS
    with paddle.no_grad():
        logits = head(x)
    assert head._decode_weight is not None, "an eval/no-grad call with few rows should use the copy"
    np.testing.assert_allclose(logits.numpy(), reference_logits(embedding, x), rtol=0, atol=1e-5)
    with paddle.no_grad():
        head(x)
    assert head._decode_weight[2] is head._transposed_weight(), "the copy is made once, not per call"


def test_no_copy_for_training_gradients_or_large_products():
    embedding, head = make_head()
    x = paddle.randn([1, 1, 32])
    with paddle.no_grad():
        head(x)
    logits = head(x)  # gradients on: the weight may change from here, the copy goes
    assert head._decode_weight is None
    logits.sum().backward()
    assert embedding.weight.grad is not None, "the tied weight must still receive the gradient"
    with paddle.no_grad():
        head(paddle.randn([1, TiedLMHead.DECODE_ROWS + 1, 32]))
    assert head._decode_weight is None, "a compute-bound product reads the weight as it is"
    head.train()
    with paddle.no_grad():
        head(x)
    assert head._decode_weight is None


def test_copy_follows_in_place_ops_and_replaced_weights():
    embedding, head = make_head()
    x = paddle.randn([1, 1, 32])
    with paddle.no_grad():
        head(x)
        embedding.weight[5] = 3.0  # an in-place paddle op bumps the version
        np.testing.assert_allclose(head(x).numpy(), reference_logits(embedding, x), rtol=0, atol=1e-5)
    embedding.weight = embedding.create_parameter(embedding.weight.shape)  # a new parameter object
    with paddle.no_grad():
        np.testing.assert_allclose(head(x).numpy(), reference_logits(embedding, x), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tied_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tied_head")
    build_reference_model(tie_word_embeddings=True).save_pretrained(str(path))
    return str(path)


def test_set_state_dict_and_load_weights_drop_the_copy(tied_checkpoint):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tied_checkpoint)
    model.eval()
    hidden = paddle.randn([1, 1, model.config.hidden_size])
    with paddle.no_grad():
        before = model.lm_head(hidden).numpy()
    weight = model.model.embed_tokens.weight
    # set_value writes in place without a version bump: only the explicit release catches it.
    model.set_state_dict({"model.embed_tokens.weight": weight.numpy() * 2})
    with paddle.no_grad():
        np.testing.assert_allclose(model.lm_head(hidden).numpy(), before * 2, rtol=1e-5, atol=1e-5)
    load_weights(model, tied_checkpoint, ignore_keys=("lm_head.weight",))
    with paddle.no_grad():
        np.testing.assert_allclose(model.lm_head(hidden).numpy(), before, rtol=1e-5, atol=1e-5)
