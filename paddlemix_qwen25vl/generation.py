"""Text generation: greedy search and sampling with a KV cache, for batches left-padded.

The prompt (with its pixels) runs once; every later step feeds one token per row, reusing
the cache and the prompt's rope deltas. Logits processing follows the Hugging Face order:
repetition penalty, min-new-tokens eos suppression, then (sampling) temperature, top-k,
top-p. Like PaddleMIX, :func:`generate` returns ``(new_token_ids [B, n], scores [B, 1])``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import paddle
import paddle.nn.functional as F

from .cache import KVCache

__all__ = ["generate", "apply_repetition_penalty", "choose_next_tokens", "top_k_top_p_filter", "DECODE_STRATEGIES"]

DECODE_STRATEGIES = ("greedy_search", "sampling")


def apply_repetition_penalty(logits: paddle.Tensor, seen_ids: paddle.Tensor, penalty: float) -> paddle.Tensor:
    """For every token id in ``seen_ids [B, L]``: negative logits are multiplied by ``penalty``, others divided."""
    if penalty == 1.0:
        return logits
    picked = paddle.take_along_axis(logits, seen_ids, axis=1)
    picked = paddle.where(picked < 0, picked * penalty, picked / penalty)
    return paddle.put_along_axis(logits, seen_ids, picked, axis=1)


def top_k_top_p_filter(logits: paddle.Tensor, top_k: int, top_p: float) -> paddle.Tensor:
    """Set to -inf every logit outside the ``top_k`` best and outside the smallest set whose
    probability reaches ``top_p`` (always keeping the best token)."""
    minus_inf = paddle.full_like(logits, float("-inf"))
    if 0 < top_k < logits.shape[-1]:
        kth = paddle.topk(logits, top_k, axis=-1)[0][:, -1:]
        logits = paddle.where(logits < kth, minus_inf, logits)
    if top_p < 1.0:
        sorted_logits = paddle.sort(logits, axis=-1, descending=False)
        cumulative = paddle.cumsum(F.softmax(sorted_logits, axis=-1), axis=-1)
        # Ascending order: drop the low tail whose total mass is <= 1 - top_p, never the best token.
        drop = cumulative <= (1.0 - top_p)
        drop[:, -1] = False
        kept = paddle.where(drop, paddle.full_like(sorted_logits, float("inf")), sorted_logits)
        threshold = kept.min(axis=-1, keepdim=True)
        logits = paddle.where(logits < threshold, minus_inf, logits)
    return logits


def _log_sum(weights: paddle.Tensor) -> paddle.Tensor:
    """``log(sum(weights))`` over the vocabulary, ``[B, 1]``, summed in float64.

    Paddle's CPU float32 sum (and its logsumexp) accumulates serially: 2e-4 off on a
    152k-wide row, where torch's pairwise sum is 5e-7 off; in float64 it is 1e-8.
    (Paddle's CPU log_softmax is no alternative: seconds per row.)
    """
    return paddle.log(weights.astype("float64").sum(axis=-1, keepdim=True)).astype(weights.dtype)


def choose_next_tokens(logits: paddle.Tensor, sample: bool) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """The next token of each row of processed ``logits [B, vocab]`` and its log-probability.

    Greedy takes the arg-max; sampling draws from softmax(logits). Returns ``(tokens [B],
    log_probs [B, 1])``; the log-probability is the chosen logit minus the row's logsumexp.
    """
    if sample:
        best = logits.max(axis=-1, keepdim=True)  # [B, 1]
    else:
        tokens = paddle.argmax(logits, axis=-1)
        best = paddle.take_along_axis(logits, tokens.unsqueeze(-1), axis=1)  # the row maximum
    shifted = logits - best  # <= 0: exp cannot overflow
    weights = paddle.exp(shifted)  # softmax up to the normaliser
    if sample:  # multinomial normalises the weights itself
        tokens = paddle.multinomial(weights, num_samples=1).squeeze(-1)
    chosen = paddle.take_along_axis(shifted, tokens.unsqueeze(-1), axis=1)
    return tokens, chosen - _log_sum(weights)


def _as_list(value: Union[int, Sequence[int], None]) -> List[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


@paddle.no_grad()
def generate(
    model: Any,
    input_ids: paddle.Tensor,
    attention_mask: Optional[paddle.Tensor] = None,
    max_new_tokens: Optional[int] = None,
    decode_strategy: Optional[str] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    repetition_penalty: Optional[float] = None,
    min_new_tokens: Optional[int] = None,
    eos_token_id: Union[int, Sequence[int], None] = None,
    pad_token_id: Optional[int] = None,
    use_cache: bool = True,
    streamer: Any = None,
    **model_inputs: Any,
) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """Generate up to ``max_new_tokens`` per row of ``input_ids [B, L]`` (left-padded).

    Unset arguments come from ``model.generation_config`` (the checkpoint's
    ``generation_config.json``). ``model_inputs`` are the processor's pixel and grid tensors
    (and ``second_per_grid_ts``); they are used at the first step only. Rows that emitted an
    eos token are padded with ``pad_token_id`` until every row is done.
    """
    defaults = model.generation_config
    max_new_tokens = max_new_tokens if max_new_tokens is not None else (getattr(defaults, "max_new_tokens", None) or 20)
    if decode_strategy is None:
        decode_strategy = "sampling" if getattr(defaults, "do_sample", False) else "greedy_search"
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if decode_strategy not in DECODE_STRATEGIES:
        raise ValueError(f"decode_strategy {decode_strategy!r} is not one of {', '.join(DECODE_STRATEGIES)}")
    temperature = temperature if temperature is not None else getattr(defaults, "temperature", 1.0)
    top_k = top_k if top_k is not None else getattr(defaults, "top_k", 0)
    top_p = top_p if top_p is not None else getattr(defaults, "top_p", 1.0)
    repetition_penalty = repetition_penalty if repetition_penalty is not None else getattr(defaults, "repetition_penalty", 1.0)
    min_new_tokens = min_new_tokens if min_new_tokens is not None else getattr(defaults, "min_new_tokens", 0)
    eos_ids = _as_list(eos_token_id if eos_token_id is not None else getattr(defaults, "eos_token_id", None))
    pad_token_id = pad_token_id if pad_token_id is not None else getattr(defaults, "pad_token_id", None)
    if pad_token_id is None:
        pad_token_id = eos_ids[0] if eos_ids else 0
    if decode_strategy == "sampling" and temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")

    batch, prompt_len = input_ids.shape
    limit = model.config.max_position_embeddings
    if prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} exceeds the model's maximum of {limit} positions"
        )
    if streamer is not None:
        if batch != 1:
            raise ValueError("streaming supports one sequence at a time (batch size 1)")
        streamer.put(input_ids)
    if attention_mask is None:
        attention_mask = paddle.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {list(attention_mask.shape)} != input_ids shape {list(input_ids.shape)}")
    if batch > 1 and bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("batched generation needs left padding (processor padding_side='left'); the last column has padding")

    # Without padding a decode step's one query sees every cached key: no mask to grow and
    # build per step. The ids seen so far matter only to the repetition penalty (and without
    # a cache, as the next input).
    padded = not bool((attention_mask == 1).all())
    track_seen = repetition_penalty != 1.0 or not use_cache
    eos = paddle.to_tensor(eos_ids, dtype=input_ids.dtype) if eos_ids else None
    seen = input_ids
    new_tokens: List[paddle.Tensor] = []
    scores = paddle.zeros([batch, 1], dtype="float32")
    finished = paddle.zeros([batch], dtype="bool")
    # Allocated once for the prompt and every new token: decode steps write in place
    # instead of copying the whole cache.
    cache = KVCache(model.config.num_hidden_layers, capacity=prompt_len + max_new_tokens) if use_cache else None
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        past_key_values=cache,
        use_cache=use_cache,
        logits_to_keep=1,
        **model_inputs,
    )
    for step in range(max_new_tokens):
        logits = outputs.logits[:, -1, :].astype("float32")  # [B, vocab]
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        if eos is not None and step < min_new_tokens:
            logits = paddle.put_along_axis(logits, eos.unsqueeze(0).expand([batch, eos.shape[0]]), float("-inf"), axis=1)
        if decode_strategy == "sampling":
            logits = top_k_top_p_filter(logits / temperature, top_k, top_p)
        next_tokens, chosen = choose_next_tokens(logits, sample=decode_strategy == "sampling")
        next_tokens = next_tokens.astype(input_ids.dtype)
        scores = scores + paddle.where(finished.unsqueeze(-1), paddle.zeros_like(chosen), chosen)
        next_tokens = paddle.where(finished, paddle.full_like(next_tokens, pad_token_id), next_tokens)
        new_tokens.append(next_tokens)
        if streamer is not None:
            streamer.put(next_tokens)
        if eos is not None:
            finished = paddle.logical_or(finished, (next_tokens.unsqueeze(-1) == eos.unsqueeze(0)).any(-1))
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        if track_seen:
            seen = paddle.concat([seen, next_tokens.unsqueeze(-1)], axis=1)
        if padded:
            attention_mask = paddle.concat([attention_mask, paddle.ones([batch, 1], dtype=attention_mask.dtype)], axis=1)
        if use_cache:
            outputs = model(
                input_ids=next_tokens.unsqueeze(-1),
                attention_mask=attention_mask if padded else None,
                past_key_values=outputs.past_key_values,
                rope_deltas=outputs.rope_deltas,
                use_cache=True,
                logits_to_keep=1,
            )
        else:
            outputs = model(
                input_ids=seen,
                attention_mask=attention_mask if padded else None,
                use_cache=False,
                logits_to_keep=1,
                **model_inputs,
            )
    if streamer is not None:
        streamer.end()
    return paddle.stack(new_tokens, axis=1), scores
