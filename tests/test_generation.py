"""Generation: greedy tokens equal transformers' generate; sampling and logits processing behave."""

import numpy as np
import paddle
import pytest
import torch

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration
from paddlemix_qwen25vl.generation import apply_repetition_penalty, choose_next_tokens, top_k_top_p_filter
from helpers.reference import TOKENS, make_inputs

pytestmark = pytest.mark.usefixtures("custom_ops")  # these tests run the compiled operators

NEW_TOKENS = 32
CASES = [
    ("single_image", [([("image", (1, 8, 10))], [4, 5], [])]),
    ("two_images", [([("image", (1, 4, 6)), ("image", (1, 6, 8))], [3, 2, 4], [])]),
    ("video", [([("video", (4, 4, 6))], [3, 4], [1.031])]),
    ("image_and_video", [([("image", (1, 6, 6)), ("video", (2, 4, 4))], [3, 2, 4], [0.5])]),
    ("text_only", [([], [11], [])]),
    ("batch_of_two", [([("image", (1, 4, 6))], [3, 4], []), ([("image", (1, 8, 8))], [6, 9], [])]),
]
STOP = dict(eos_token_id=TOKENS["eos_token_id"], pad_token_id=TOKENS["pad_token_id"])


def gen_inputs(rows, seed=11):
    inputs = make_inputs(rows, seed=seed)
    inputs.pop("labels")
    return inputs


def split_row(inputs, i):
    """Row ``i`` of a left-padded image batch on its own: padding dropped, its own pixels and grids."""
    real = inputs["attention_mask"][i] == 1
    ids = inputs["input_ids"][i][real][None]
    if "image_grid_thw" not in inputs:
        return dict(input_ids=ids, attention_mask=np.ones_like(ids))
    grids = inputs["image_grid_thw"]
    counts = [int((inputs["input_ids"][r] == TOKENS["vision_start_token_id"]).sum()) for r in range(len(inputs["input_ids"]))]
    first = sum(counts[:i])
    patches = grids.prod(-1)
    start = int(patches[:first].sum())
    stop = start + int(patches[first:first + counts[i]].sum())
    return dict(input_ids=ids, attention_mask=np.ones_like(ids), pixel_values=inputs["pixel_values"][start:stop],
                image_grid_thw=grids[first:first + counts[i]])


def ours(model, inputs, **kwargs):
    tokens, scores = model.generate(**{k: paddle.to_tensor(v) for k, v in inputs.items()}, **kwargs)
    return tokens.numpy(), scores.numpy()


@pytest.fixture(scope="module")
def models(reference_checkpoint):
    ref_model, path = reference_checkpoint
    return ref_model, Qwen2_5_VLForConditionalGeneration.from_pretrained(path)


@pytest.mark.parametrize("name,rows", CASES, ids=[c[0] for c in CASES])
def test_greedy_matches_transformers(models, name, rows, portable_cpu):
    ref_model, model = models
    inputs = gen_inputs(rows)
    with torch.no_grad():
        out = ref_model.generate(
            **{k: torch.from_numpy(v) for k, v in inputs.items()},
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            **STOP,
        )
    ref = out.sequences[:, inputs["input_ids"].shape[1]:].numpy()
    # The reference's processed logits per step -> the summed log-probability of each chosen token.
    step_logits = torch.stack(out.scores, dim=1).double()  # [B, new, vocab]
    ref_scores = torch.log_softmax(step_logits, dim=-1).gather(-1, torch.from_numpy(ref)[..., None]).sum(1).numpy()
    tokens, scores = ours(model, inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                          decode_strategy="greedy_search", **STOP)
    np.testing.assert_array_equal(tokens, ref)
    # Summed over 32 steps the scores differ by <= 2e-5 (measured over these cases); 1e-4 leaves
    # room for platform rounding. The sum over a real 152k vocabulary: test_choose_next_tokens_*.
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-4)
    for i in range(len(rows) if len(rows) > 1 else 0):  # every batch row equals the row generated alone
        alone, _ = ours(model, split_row(inputs, i), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                        decode_strategy="greedy_search", **STOP)
        np.testing.assert_array_equal(tokens[i], alone[0])


@pytest.mark.parametrize("case", [CASES[0], CASES[5]], ids=["single_image", "batch_of_two"])
def test_flash_attention_generation_equals_sdpa(models, reference_checkpoint, case, portable_cpu):
    """flash_attention_2: the prompt through the operator, one-token steps dense on the CPU."""
    _, model = models
    flash = Qwen2_5_VLForConditionalGeneration.from_pretrained(reference_checkpoint[1], attn_implementation="flash_attention_2")
    inputs = gen_inputs(case[1])
    options = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, decode_strategy="greedy_search", **STOP)
    tokens, scores = ours(flash, inputs, **options)
    expected, expected_scores = ours(model, inputs, **options)
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_greedy_without_cache_equals_with_cache(models):
    _, model = models
    inputs = gen_inputs(CASES[3][1])
    cached, _ = ours(model, inputs, max_new_tokens=12, decode_strategy="greedy_search", **STOP)
    uncached, _ = ours(model, inputs, max_new_tokens=12, decode_strategy="greedy_search", use_cache=False, **STOP)
    np.testing.assert_array_equal(cached, uncached)


def test_sampling_seeded_and_top_k_one(models):
    _, model = models
    inputs = gen_inputs(CASES[0][1])
    runs = []
    for _ in range(2):
        paddle.seed(1234)
        runs.append(ours(model, inputs, max_new_tokens=16, decode_strategy="sampling", temperature=1.5, top_p=0.9, **STOP)[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    greedy, _ = ours(model, inputs, max_new_tokens=16, decode_strategy="greedy_search", **STOP)
    top1, _ = ours(model, inputs, max_new_tokens=16, decode_strategy="sampling", top_k=1, temperature=0.7, **STOP)
    np.testing.assert_array_equal(top1, greedy)


def test_eos_stops_and_pads(models):
    _, model = models
    inputs = gen_inputs(CASES[5][1])
    greedy, _ = ours(model, inputs, max_new_tokens=6, decode_strategy="greedy_search", **STOP)
    eos = int(greedy[0, 2])  # pretend the third token of row 0 is the end of sequence
    tokens, _ = ours(model, inputs, max_new_tokens=6, decode_strategy="greedy_search", eos_token_id=eos, pad_token_id=0)
    first = int(np.nonzero(tokens[0] == eos)[0][0])
    assert (tokens[0, first + 1:] == 0).all()


def test_logits_processors_match_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50)).astype(np.float32)
    seen = rng.integers(0, 50, (3, 7))
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.from_numpy(seen), torch.from_numpy(logits.copy())).numpy()
    got = apply_repetition_penalty(paddle.to_tensor(logits), paddle.to_tensor(seen), 1.3).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    for top_k, top_p in [(5, 1.0), (0, 0.7), (10, 0.5), (0, 0.001)]:
        t = torch.from_numpy(logits.copy())
        if top_k:
            t = TopKLogitsWarper(top_k)(None, t)
        if top_p < 1.0:
            t = TopPLogitsWarper(top_p)(None, t)
        got = top_k_top_p_filter(paddle.to_tensor(logits), top_k, top_p).numpy()
        np.testing.assert_array_equal(np.isinf(got), np.isinf(t.numpy()))


def test_generation_errors(models):
    _, model = models
    inputs = gen_inputs(CASES[0][1])
    with pytest.raises(ValueError, match="exceeds the model's maximum of 4096 positions"):
        ours(model, inputs, max_new_tokens=5000)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        ours(model, inputs, max_new_tokens=0)
    with pytest.raises(ValueError, match="decode_strategy 'beam_search' is not one of"):
        ours(model, inputs, decode_strategy="beam_search")
    batch = gen_inputs(CASES[5][1])
    right = {**batch, "attention_mask": batch["attention_mask"][:, ::-1].copy()}
    with pytest.raises(ValueError, match="left padding"):
        ours(model, right)


def test_choose_next_tokens_log_probabilities():
    """Greedy and sampled choices carry log_softmax(logits)[token], also for wide, large and -inf logits."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, size=(3, 151936)).astype(np.float32)
    logits[1] *= 1000.0  # exp would overflow without the shift
    logits[2, :5] = -np.inf  # suppressed tokens (min_new_tokens, top-k/top-p)
    reference = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True)).sum(
        -1, keepdims=True)) - logits.max(-1, keepdims=True)
    tokens, log_probs = choose_next_tokens(paddle.to_tensor(logits), sample=False)
    np.testing.assert_array_equal(tokens, logits.argmax(-1))
    np.testing.assert_allclose(log_probs[:, 0], reference[np.arange(3), logits.argmax(-1)], rtol=1e-6, atol=1e-6)
    paddle.seed(0)
    tokens, log_probs = choose_next_tokens(paddle.to_tensor(logits), sample=True)
    assert np.isfinite(reference[np.arange(3), tokens]).all()  # never a suppressed token
    np.testing.assert_allclose(log_probs[:, 0], reference[np.arange(3), tokens], rtol=1e-6, atol=1e-5)


def test_decode_rotary_tables_equal_per_step_positions(models, monkeypatch):
    """generate's decode steps take their rotary tables from the ones built at the first step
    (DecodeRotaryTable): bitwise the tokens and scores of per-step positions and tables, on a
    padded batch whose MRoPE deltas differ per row."""
    _, model = models
    inputs = gen_inputs(CASES[5][1])
    options = dict(max_new_tokens=12, min_new_tokens=12, decode_strategy="greedy_search", **STOP)
    built = []
    original = Qwen2_5_VLForConditionalGeneration._decode_rotary

    def recording(self, cache, *args):
        rows = original(self, cache, *args)
        built.append(id(cache.rotary))
        return rows

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "_decode_rotary", recording)
    tokens, scores = ours(model, inputs, **options)
    assert len(built) == 11 and len(set(built)) == 1, "one table, built at the first of the 11 decode steps"
    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "_decode_rotary", lambda self, *args: None)
    expected, expected_scores = ours(model, inputs, **options)
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_array_equal(scores, expected_scores)
