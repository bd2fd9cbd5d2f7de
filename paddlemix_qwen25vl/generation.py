"""Text generation: greedy search and sampling with a KV cache, for batches left-padded.

The prompt (with its pixels) runs once; every later step feeds one token per row, reusing
the cache and the prompt's rope deltas. Logits processing follows the Hugging Face order:
repetition penalty, min-new-tokens eos suppression, then (sampling) temperature, top-k,
top-p. Like PaddleMIX, :func:`generate` returns ``(new_token_ids [B, n], scores [B, 1])``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn.functional as F

from .cache import KVCache

__all__ = [
    "generate",
    "GenerationSettings",
    "process_logits",
    "apply_repetition_penalty",
    "choose_next_tokens",
    "last_position_logits",
    "check_inputs",
    "top_k_top_p_filter",
    "DECODE_STRATEGIES",
]

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


def _draw_on_host(weights: paddle.Tensor, generators: Sequence[np.random.Generator]) -> np.ndarray:
    """One token per row of unnormalised ``weights [B, vocab]``, row b drawn with ``generators[b]``."""
    rows = weights.numpy().astype(np.float64)
    if len(generators) != rows.shape[0]:
        raise ValueError(f"{len(generators)} generators for {rows.shape[0]} rows")
    tokens = []
    for row, generator in zip(rows, generators):
        cumulative = np.cumsum(row)
        tokens.append(min(int(np.searchsorted(cumulative, generator.random() * cumulative[-1], side="right")), row.size - 1))
    return np.asarray(tokens, dtype=np.int64)


def _greedy_on_host(logits: paddle.Tensor, log_probs: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Arg-max and its log-probability of ``logits [B, vocab]`` in numpy. After a decode step's
    weights have streamed through the caches each Paddle operator costs ~0.2 ms on CPU; one copy
    to the host replaces the eight a device-side arg-max and log-sum take (benchmarks/README.md)."""
    rows = logits.numpy()  # [B, vocab]
    tokens = rows.argmax(axis=-1)
    if not log_probs:
        return tokens, None
    best = rows[np.arange(rows.shape[0]), tokens][:, None]  # [B, 1], the row maximum
    log_sum = np.log(np.exp(rows - best).sum(axis=-1, keepdims=True, dtype=np.float64))  # shifted: <= 0, no overflow
    return tokens, (-log_sum).astype(rows.dtype)  # chosen - best = 0


def last_position_logits(logits: paddle.Tensor) -> paddle.Tensor:
    """``logits [B, L, vocab]`` -> the last position's ``[B, vocab]`` in float32 (cast only when
    not already: each Paddle call costs ~0.2 ms in a CPU decode step)."""
    last = logits[:, -1, :]
    return last if last.dtype == paddle.float32 else last.astype("float32")


def choose_next_tokens(logits: paddle.Tensor, sample: bool, generators: Optional[Sequence[np.random.Generator]] = None,
                       log_probs: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The next token of each row of processed ``logits [B, vocab]`` and its log-probability, on the host.

    Greedy takes the arg-max; sampling draws from softmax(logits), with Paddle's global
    generator or, given ``generators`` (one numpy Generator per row), on the host: a seeded
    row then draws the same tokens whatever batch it runs in. Returns numpy ``(tokens [B],
    log_probs [B, 1])`` (every caller reads them on the host: stop checks, streamers); the
    log-probability is the chosen logit minus the row's logsumexp, summed in float64 (None
    with ``log_probs=False``, which skips that vocabulary-wide sum).
    """
    if not sample:
        return _greedy_on_host(logits, log_probs)
    best = logits.max(axis=-1, keepdim=True)  # [B, 1]
    shifted = logits - best  # <= 0: exp cannot overflow
    weights = paddle.exp(shifted)  # softmax up to the normaliser
    if generators is not None:
        tokens = _draw_on_host(weights, generators)
    else:  # multinomial normalises the weights itself
        tokens = paddle.multinomial(weights, num_samples=1).squeeze(-1).numpy()
    if not log_probs:
        return tokens, None
    chosen = paddle.take_along_axis(shifted, paddle.to_tensor(tokens).unsqueeze(-1), axis=1)
    return tokens, (chosen - _log_sum(weights)).numpy()


def _as_list(value: Union[int, Sequence[int], None]) -> List[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


@dataclass(frozen=True)
class GenerationSettings:
    """Every knob of :func:`generate`, resolved once: the caller's value, else the checkpoint's
    ``generation_config.json``, else the Hugging Face default."""

    max_new_tokens: int = 20
    decode_strategy: str = "greedy_search"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    eos_token_ids: Tuple[int, ...] = ()
    pad_token_id: int = 0

    @classmethod
    def resolve(cls, defaults: Any, **requested: Any) -> "GenerationSettings":
        """Settings from the ``requested`` values that are not None, then ``defaults`` (a
        GenerationConfig, whose names differ for ``do_sample`` and ``eos_token_id``), then the
        class defaults; raises ValueError for impossible ones."""
        config = {
            "max_new_tokens": getattr(defaults, "max_new_tokens", None) or None,  # 0 in a config means unset
            "decode_strategy": "sampling" if getattr(defaults, "do_sample", False) else None,
            "eos_token_ids": getattr(defaults, "eos_token_id", None),
            **{name: getattr(defaults, name, None)
               for name in ("temperature", "top_k", "top_p", "repetition_penalty", "min_new_tokens", "pad_token_id")},
        }
        values = {}
        for field in fields(cls):
            value = requested.get(field.name)
            values[field.name] = value if value is not None else config.get(field.name)
        eos_ids = tuple(_as_list(values.pop("eos_token_ids")))
        pad = values.pop("pad_token_id")
        chosen = {name: value for name, value in values.items() if value is not None}
        settings = cls(**chosen, eos_token_ids=eos_ids, pad_token_id=pad if pad is not None else (eos_ids[0] if eos_ids else 0))
        settings.check()
        return settings

    @property
    def sample(self) -> bool:
        return self.decode_strategy == "sampling"

    def check(self) -> None:
        """Raise ValueError naming the first impossible setting."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.decode_strategy not in DECODE_STRATEGIES:
            raise ValueError(f"decode_strategy {self.decode_strategy!r} is not one of {', '.join(DECODE_STRATEGIES)}")
        if self.sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")


def process_logits(logits: paddle.Tensor, seen: paddle.Tensor, step: int, settings: GenerationSettings) -> paddle.Tensor:
    """The Hugging Face order on the last position's ``logits [B, vocab]``: repetition penalty
    over ``seen [B, L]``, eos suppressed before ``min_new_tokens``, then (sampling) temperature,
    top-k and top-p. The eos suppression writes into ``logits`` (one operator instead of
    building an index and copying the rows: each costs ~0.2 ms in a CPU decode step)."""
    logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
    if settings.eos_token_ids and step < settings.min_new_tokens:
        logits[:, list(settings.eos_token_ids)] = float("-inf")
    if settings.sample:
        logits = top_k_top_p_filter(logits / settings.temperature, settings.top_k, settings.top_p)
    return logits


def check_inputs(model: Any, input_ids: paddle.Tensor, attention_mask: paddle.Tensor, settings: GenerationSettings,
                 streamer: Any = None) -> None:
    """Raise ValueError when ``input_ids [B, L]`` cannot be generated from as ``settings`` ask."""
    batch, prompt_len = input_ids.shape
    limit = model.config.max_position_embeddings
    if prompt_len + settings.max_new_tokens > limit:
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens {settings.max_new_tokens} exceeds the model's maximum of {limit} positions"
        )
    if streamer is not None and batch != 1:
        raise ValueError("streaming supports one sequence at a time (batch size 1)")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {list(attention_mask.shape)} != input_ids shape {list(input_ids.shape)}")
    if batch > 1 and bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("batched generation needs left padding (processor padding_side='left'); the last column has padding")


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
    ``generation_config.json``), see :class:`GenerationSettings`. ``model_inputs`` are the
    processor's pixel and grid tensors (and ``second_per_grid_ts``); they are used at the first
    step only. Rows that emitted an eos token are padded with ``pad_token_id`` until every row is done.
    """
    settings = GenerationSettings.resolve(
        model.generation_config, max_new_tokens=max_new_tokens, decode_strategy=decode_strategy,
        temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
        min_new_tokens=min_new_tokens, eos_token_ids=eos_token_id, pad_token_id=pad_token_id,
    )
    if attention_mask is None:
        attention_mask = paddle.ones_like(input_ids)
    check_inputs(model, input_ids, attention_mask, settings, streamer)
    if streamer is not None:
        streamer.put(input_ids)
    decoder = _Decoder(model, input_ids, attention_mask, settings, use_cache, model_inputs)
    outputs = decoder.prefill()
    for step in range(settings.max_new_tokens):
        # 1. pick each row's next token from the last position's logits (on the host)
        next_tokens = decoder.choose(last_position_logits(outputs.logits), step)
        if streamer is not None:
            streamer.put(paddle.to_tensor(next_tokens, dtype=input_ids.dtype))
        # 2. stop once every row has emitted eos, or at the token limit
        if decoder.all_finished() or step == settings.max_new_tokens - 1:
            break
        # 3. feed the new tokens back, reusing the cache
        outputs = decoder.step(next_tokens, outputs)
    if streamer is not None:
        streamer.end()
    return paddle.to_tensor(np.stack(decoder.new_tokens, axis=1), dtype=input_ids.dtype), paddle.to_tensor(decoder.scores)


class _Decoder:
    """The state of one :func:`generate` call: the cache, the tokens so far, the scores, which rows are done.

    Shapes: B rows, L tokens so far (prompt included), V vocabulary. The tokens, scores and
    finished flags live on the host (numpy): the choice arrives there anyway, and a Paddle
    operator costs ~0.2 ms in a CPU decode step, numpy's bookkeeping microseconds.
    """

    def __init__(self, model: Any, input_ids: paddle.Tensor, attention_mask: paddle.Tensor,
                 settings: GenerationSettings, use_cache: bool, model_inputs: Dict[str, Any]) -> None:
        batch, prompt_len = input_ids.shape
        self.model, self.settings, self.use_cache, self.model_inputs = model, settings, use_cache, model_inputs
        self.input_ids, self.attention_mask = input_ids, attention_mask  # [B, L]
        # Without padding a decode step's one query sees every cached key: no mask to grow and
        # build per step. The ids seen so far matter only to the repetition penalty (and without
        # a cache, as the next input).
        self.padded = not bool((attention_mask == 1).all())
        self.track_seen = settings.repetition_penalty != 1.0 or not use_cache
        self.seen = input_ids  # [B, L]
        self.id_dtype = input_ids.dtype
        self.eos = np.asarray(settings.eos_token_ids, dtype=np.int64)
        self.new_tokens: List[np.ndarray] = []  # each [B]
        self.scores = np.zeros([batch, 1], dtype=np.float32)  # summed log-probabilities
        self.finished = np.zeros([batch], dtype=bool)
        # Allocated once for the prompt and every new token: decode steps write in place
        # instead of copying the whole cache.
        self.cache = KVCache(model.config.num_hidden_layers, capacity=prompt_len + settings.max_new_tokens) if use_cache else None

    def prefill(self) -> Any:
        """The prompt, with its pixels, through the model once."""
        return self.model(input_ids=self.input_ids, attention_mask=self.attention_mask, past_key_values=self.cache,
                          use_cache=self.use_cache, logits_to_keep=1, **self.model_inputs)

    def choose(self, logits: paddle.Tensor, step: int) -> np.ndarray:
        """Next tokens ``[B]`` from ``logits [B, V]``: finished rows get the pad token and add no score."""
        logits = process_logits(logits, self.seen, step, self.settings)
        next_tokens, chosen = choose_next_tokens(logits, sample=self.settings.sample)
        self.scores += np.where(self.finished[:, None], 0.0, chosen).astype(np.float32)
        next_tokens = np.where(self.finished, self.settings.pad_token_id, next_tokens).astype(np.int64)
        self.new_tokens.append(next_tokens)
        self.finished |= np.isin(next_tokens, self.eos)
        return next_tokens

    def all_finished(self) -> bool:
        return bool(self.finished.all())

    def step(self, next_tokens: np.ndarray, outputs: Any) -> Any:
        """One decode step on ``next_tokens [B]``: with the cache one token per row, without it the whole sequence."""
        batch = next_tokens.shape[0]
        next_ids = paddle.to_tensor(next_tokens[:, None], dtype=self.id_dtype)  # [B, 1]
        if self.track_seen:
            self.seen = paddle.concat([self.seen, next_ids], axis=1)
        if self.padded:
            ones = paddle.ones([batch, 1], dtype=self.attention_mask.dtype)
            self.attention_mask = paddle.concat([self.attention_mask, ones], axis=1)
        mask = self.attention_mask if self.padded else None
        if self.use_cache:
            return self.model(input_ids=next_ids, attention_mask=mask, past_key_values=outputs.past_key_values,
                              rope_deltas=outputs.rope_deltas, use_cache=True, logits_to_keep=1)
        return self.model(input_ids=self.seen, attention_mask=mask, use_cache=False, logits_to_keep=1, **self.model_inputs)
