"""The serving engine: continuous batching of requests on one model.

One scheduler thread owns the model. Requests wait in a bounded queue; each is prefilled alone
(batch 1, with its pixels) and joins the running batch at the next decode step, where up to
``max_batch_size`` sequences share one forward: a step reads the weights once for all rows.
A row leaves as soon as it finishes (eos or stop id, token budget, cancel, error) and the
others go on. A prefill is not split into chunks: the running rows wait for it. Pixels that an
earlier request sent too (a conversation's images, turn after turn) take their vision features
from the vision cache (:mod:`.vision_cache`) when the engine has one.

The rows live in one :class:`~paddlemix_qwen25vl.cache.BatchKVCache`; logits processing and
sampling are :mod:`paddlemix_qwen25vl.generation`'s, with one seeded numpy generator per
request, so a greedy answer equals ``model.generate`` on the request alone and a seeded one is
the same in any batch.

Dimensions:
    B: rows decoding together     L: prompt tokens of one request     V: vocabulary
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Tuple

import numpy as np
import paddle

from ..cache import BatchKVCache, KVCache
from ..generation import GenerationSettings, check_inputs, choose_next_tokens, last_position_logits, process_logits
from ..runtime import use_num_threads_in_this_thread
from .vision_cache import VisionFeatureCache

__all__ = ["SamplingParams", "QueueFull", "EngineRequest", "Engine"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks for: ``temperature`` 0 is greedy; ``seed`` makes sampling reproducible;
    generation stops at the model's eos ids, at ``stop_token_ids``, or after ``max_new_tokens``."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop_token_ids: Tuple[int, ...] = ()

    def check(self) -> None:
        """Raise ValueError naming the first impossible value."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class QueueFull(Exception):
    """The engine's queue of waiting requests is full (the API answers 429)."""


class EngineRequest:
    """One submitted request: its new token ids as they arrive, then how it finished. Thread-safe.

    The eos or stop id that ends an answer is not one of its tokens: it is ``stop_token_id``
    (``finish_reason`` "stop"); ``completion_tokens`` counts it.
    """

    def __init__(self, inputs: Dict[str, paddle.Tensor], params: SamplingParams) -> None:
        self.inputs, self.params = inputs, params
        self.prompt_tokens: int = int(inputs["input_ids"].shape[1])
        self.output_tokens: List[int] = []
        self.finish_reason: Optional[str] = None  # "stop" | "length" | "cancelled" | "error"
        self.error: Optional[BaseException] = None
        self.stop_token_id: Optional[int] = None
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._async_waiters: List[Tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far, the stop id included."""
        return len(self.output_tokens) + (self.stop_token_id is not None)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop generating (the client went away): the request leaves its batch at the next step."""
        self._cancel.set()

    # ---- called by the scheduler thread
    def _push(self, token: int) -> None:
        with self._cond:
            self.output_tokens.append(token)
            self._wake()

    def _finish(self, reason: str, error: Optional[BaseException] = None) -> None:
        with self._cond:
            if self.finish_reason is None:
                self.finish_reason, self.error = reason, error
            self._wake()

    def _wake(self) -> None:
        """Under ``_cond``: wake blocking readers and every event loop waiting in :meth:`atokens`."""
        self._cond.notify_all()
        for loop, event in self._async_waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass
        self._async_waiters.clear()

    # ---- called by consumers
    def tokens(self) -> Iterator[int]:
        """The new token ids, blocking until each arrives; ends when the request finishes."""
        seen = 0
        while True:
            with self._cond:
                while seen == len(self.output_tokens) and not self.done:
                    self._cond.wait()
                fresh = self.output_tokens[seen:]
                finished = self.done
            seen += len(fresh)
            yield from fresh
            if finished and seen == len(self.output_tokens):
                return

    async def atokens(self) -> AsyncIterator[int]:
        """:meth:`tokens` for asyncio: waits without blocking the event loop."""
        loop = asyncio.get_running_loop()
        seen = 0
        while True:
            event = asyncio.Event()
            with self._cond:
                fresh = self.output_tokens[seen:]
                finished = self.done
                if not fresh and not finished:
                    self._async_waiters.append((loop, event))
            if fresh:
                seen += len(fresh)
                for token in fresh:
                    yield token
            elif finished:
                return
            else:
                await event.wait()


class _Row:
    """One request in the running batch: its settings, sampling generator, rope delta and last token."""

    def __init__(self, request: EngineRequest, settings: GenerationSettings, rope_delta: int) -> None:
        self.request, self.settings, self.rope_delta = request, settings, rope_delta
        seed = request.params.seed
        self.generator = np.random.default_rng(seed) if settings.sample else None
        self.stop_ids = frozenset(settings.eos_token_ids)
        self.last_token = -1
        self.generated = 0

    def accept(self, token: int) -> Optional[str]:
        """Record the next token; returns the finish reason when it ends the request."""
        self.generated += 1
        self.last_token = token
        if token in self.stop_ids:
            self.request.stop_token_id = token
            return "stop"
        self.request._push(token)
        return "length" if self.generated == self.settings.max_new_tokens else None


class Engine:
    """Runs requests on ``model`` in a background scheduler thread (:meth:`start` / :meth:`stop`).

    :meth:`submit` queues a request (at most ``max_queue`` waiting, else :class:`QueueFull`);
    up to ``max_batch_size`` requests decode together. The model must not be used elsewhere
    while the engine runs. ``vision_cache``, attached to the model while the engine runs, keeps
    the vision features of recent requests: a conversation's images are encoded once, not at every turn.
    """

    def __init__(self, model: Any, max_batch_size: int = 8, max_queue: int = 64,
                 vision_cache: Optional[VisionFeatureCache] = None) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size} and {max_queue}")
        self.model, self.max_batch_size = model, max_batch_size
        self.vision_cache = vision_cache
        self.eos_token_ids = GenerationSettings.resolve(model.generation_config).eos_token_ids  # the checkpoint's
        self._waiting: "queue.Queue[EngineRequest]" = queue.Queue(maxsize=max_queue)
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._rows: List[_Row] = []  # row i is slot i of the cache
        self._cache = BatchKVCache(model.config.num_hidden_layers, max_batch_size)
        self._steps = 0
        self._finished = 0

    def start(self) -> None:
        """Start the scheduler thread (no-op when it runs); the vision cache is the model's until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.model.vision_feature_cache = self.vision_cache
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="paddlemix-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the scheduler thread; requests still waiting or running finish as "cancelled"."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.model.vision_feature_cache = None
        while True:
            try:
                self._waiting.get_nowait()._finish("cancelled")
            except queue.Empty:
                return

    def submit(self, inputs: Dict[str, Any], params: SamplingParams) -> EngineRequest:
        """Queue one conversation (the processor's output, batch 1). Raises QueueFull when the
        queue is full and ValueError for impossible inputs or parameters; errors found later
        (e.g. a prompt longer than the model takes) finish the request with "error"."""
        ids = inputs.get("input_ids")
        if ids is None or len(ids.shape) != 2 or ids.shape[0] != 1:
            shape = None if ids is None else list(ids.shape)
            raise ValueError(f"inputs must hold input_ids of shape [1, L] (one conversation), got {shape}")
        params.check()
        inputs = {name: value for name, value in inputs.items() if value is not None}
        mask = inputs.get("attention_mask")
        if mask is not None and not bool((mask == 1).all()):  # one conversation: padding carries nothing
            real = (mask[0] == 1).numpy()
            inputs["input_ids"] = paddle.to_tensor(ids.numpy()[:, real])
            inputs["attention_mask"] = paddle.ones_like(inputs["input_ids"])
        request = EngineRequest(inputs, params)
        try:
            self._waiting.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self._waiting.maxsize} requests are already waiting") from None
        return request

    def stats(self) -> Dict[str, Any]:
        """Counts for /health: running and waiting requests, decode steps and finished requests so
        far, and the vision cache's hits and misses when there is one."""
        stats: Dict[str, Any] = {"active": len(self._rows), "queued": self._waiting.qsize(),
                                 "max_batch_size": self.max_batch_size, "steps": self._steps, "finished": self._finished}
        if self.vision_cache is not None:
            stats["vision_cache"] = self.vision_cache.stats()
        return stats

    # ------------------------------------------------------- the scheduler thread
    def _loop(self) -> None:
        use_num_threads_in_this_thread()  # OpenMP's thread count is per thread
        with paddle.no_grad():
            while not self._stopping.is_set():
                self._admit()
                self._leave_cancelled()
                if self._rows:
                    self._step_or_fail()
            for slot in reversed(range(len(self._rows))):
                self._leave(slot, "cancelled")

    def _admit(self) -> None:
        """Prefill waiting requests (each alone) into free rows; waits briefly when nothing runs."""
        while len(self._rows) < self.max_batch_size:
            try:
                request = self._waiting.get(timeout=0.05) if not self._rows else self._waiting.get_nowait()
            except queue.Empty:
                return
            if request.cancelled:
                self._finish(request, "cancelled")
                continue
            try:
                self._prefill(request)
            except Exception as error:  # this request is broken, not the engine
                self._finish(request, "error", error)

    def _settings(self, params: SamplingParams) -> GenerationSettings:
        sample = params.temperature > 0
        settings = GenerationSettings(
            max_new_tokens=params.max_new_tokens, decode_strategy="sampling" if sample else "greedy_search",
            temperature=params.temperature if sample else 1.0, top_p=params.top_p,
            eos_token_ids=self.eos_token_ids + tuple(int(t) for t in params.stop_token_ids),
        )
        settings.check()
        return settings

    def _prefill(self, request: EngineRequest) -> None:
        """The prompt with its pixels through the model alone; its first token; then it joins the batch."""
        settings = self._settings(request.params)
        inputs = dict(request.inputs)
        ids = inputs.pop("input_ids")
        mask = inputs.pop("attention_mask", None)
        check_inputs(self.model, ids, mask if mask is not None else paddle.ones_like(ids), settings)
        cache = KVCache(self.model.config.num_hidden_layers, capacity=ids.shape[1])
        outputs = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                             logits_to_keep=1, **inputs)
        row = _Row(request, settings, int(outputs.rope_deltas.reshape([-1])[0]))
        reason = row.accept(self._choose([row], last_position_logits(outputs.logits))[0])
        if reason is not None:
            self._finish(request, reason)
            return
        self._cache.add_row(cache)
        self._rows.append(row)

    def _step_or_fail(self) -> None:
        try:
            self._step()
        except Exception as error:  # a failed batch step: its rows end with the error, the engine goes on
            logger.exception("decode step failed; its %d requests end with an error", len(self._rows))
            for slot in reversed(range(len(self._rows))):
                self._leave(slot, "error", error)

    def _step(self) -> None:
        """One decode step for every row: feed each row's last token, pick and deliver the next ones."""
        cache, rows = self._cache, self._rows
        cache.reserve(new_tokens=1)  # may drop shared padding: before the mask and positions read E and pads
        mask = cache.attention_mask(new_tokens=1)
        # Row b sits at E - pads[b] tokens of its own: its position there is E + (delta - pad).
        deltas = [[row.rope_delta - pad] for row, pad in zip(rows, cache.pads)]
        outputs = self.model(
            input_ids=paddle.to_tensor([[row.last_token] for row in rows], dtype="int64"),
            attention_mask=None if mask is None else paddle.to_tensor(mask),
            past_key_values=cache, rope_deltas=paddle.to_tensor(deltas, dtype="int64"),
            use_cache=True, logits_to_keep=1,
        )
        self._steps += 1
        tokens = self._choose(rows, last_position_logits(outputs.logits))
        reasons = [row.accept(token) for row, token in zip(rows, tokens)]
        for slot in reversed(range(len(rows))):  # descending: a leaving row's slot gets a row already seen
            if reasons[slot] is not None:
                self._leave(slot, reasons[slot])

    def _choose(self, rows: List[_Row], logits: paddle.Tensor) -> List[int]:
        """Each row's next token from ``logits [B, V]``: the greedy rows in one arg-max, the
        sampled rows one by one with their own settings and generator."""
        tokens = [0] * len(rows)
        greedy = [i for i, row in enumerate(rows) if not row.settings.sample]
        if greedy:
            part = logits if len(greedy) == len(rows) else paddle.gather(logits, paddle.to_tensor(greedy))
            # Greedy rows differ only in their stop ids, which logits processing does not read.
            processed = process_logits(part, None, 0, rows[greedy[0]].settings)
            chosen, _ = choose_next_tokens(processed, sample=False, log_probs=False)
            for i, token in zip(greedy, chosen.tolist()):
                tokens[i] = int(token)
        for i, row in enumerate(rows):
            if row.settings.sample:
                processed = process_logits(logits[i:i + 1], None, row.generated, row.settings)
                chosen, _ = choose_next_tokens(processed, sample=True, generators=[row.generator], log_probs=False)
                tokens[i] = int(chosen[0])
        return tokens

    def _leave_cancelled(self) -> None:
        for slot in reversed(range(len(self._rows))):
            if self._rows[slot].request.cancelled:
                self._leave(slot, "cancelled")

    def _leave(self, slot: int, reason: str, error: Optional[BaseException] = None) -> None:
        """Row ``slot`` leaves the batch (the last row takes its slot, as in the cache)."""
        row = self._rows[slot]
        self._cache.remove_row(slot)
        last = self._rows.pop()
        if slot < len(self._rows):
            self._rows[slot] = last
        self._finish(row.request, reason, error)

    def _finish(self, request: EngineRequest, reason: str, error: Optional[BaseException] = None) -> None:
        self._finished += 1
        request._finish(reason, error)
