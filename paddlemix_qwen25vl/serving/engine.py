"""The serving engine: one scheduler thread owns the model and answers requests from a bounded queue.

Serial for now (one request at a time through :func:`~paddlemix_qwen25vl.generation.generate`);
the interface is the continuous-batching one.

Dimensions:
    L: prompt tokens of one request
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Tuple

import paddle

__all__ = ["SamplingParams", "QueueFull", "EngineRequest", "Engine"]


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


class _Cancelled(Exception):
    """Raised inside the scheduler to abandon a cancelled request."""


class EngineRequest:
    """One submitted request: its new token ids as they arrive, then how it finished. Thread-safe."""

    def __init__(self, inputs: Dict[str, paddle.Tensor], params: SamplingParams) -> None:
        self.inputs, self.params = inputs, params
        self.prompt_tokens: int = int(inputs["input_ids"].shape[1])
        self.output_tokens: List[int] = []
        self.finish_reason: Optional[str] = None  # "stop" | "length" | "cancelled" | "error"
        self.error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._async_waiters: List[Tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

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


class Engine:
    """Runs requests on ``model`` in a background thread (:meth:`start` / :meth:`stop`).

    :meth:`submit` queues a request (at most ``max_queue`` waiting, else :class:`QueueFull`);
    up to ``max_batch_size`` requests decode together.
    """

    def __init__(self, model: Any, max_batch_size: int = 8, max_queue: int = 64) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size} and {max_queue}")
        self.model, self.max_batch_size = model, max_batch_size
        self._waiting: "queue.Queue[EngineRequest]" = queue.Queue(maxsize=max_queue)
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._active = 0
        self._steps = 0
        self._finished = 0

    def start(self) -> None:
        """Start the scheduler thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="paddlemix-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the scheduler thread; requests still waiting or running finish as "cancelled"."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        while True:
            try:
                self._waiting.get_nowait()._finish("cancelled")
            except queue.Empty:
                return

    def submit(self, inputs: Dict[str, paddle.Tensor], params: SamplingParams) -> EngineRequest:
        """Queue one conversation (the processor's output, batch 1); raises QueueFull when the queue is full
        and ValueError for impossible inputs or parameters."""
        ids = inputs.get("input_ids")
        if ids is None or len(ids.shape) != 2 or ids.shape[0] != 1:
            shape = None if ids is None else list(ids.shape)
            raise ValueError(f"inputs must hold input_ids of shape [1, L] (one conversation), got {shape}")
        params.check()
        request = EngineRequest(inputs, params)
        try:
            self._waiting.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self._waiting.maxsize} requests are already waiting") from None
        return request

    def stats(self) -> Dict[str, int]:
        """Counts for /health: running and waiting requests, decode steps and finished requests so far."""
        return {"active": self._active, "queued": self._waiting.qsize(), "max_batch_size": self.max_batch_size,
                "steps": self._steps, "finished": self._finished}

    # ---- the scheduler thread
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                request = self._waiting.get(timeout=0.05)
            except queue.Empty:
                continue
            self._active = 1
            try:
                self._run_alone(request)
            except _Cancelled:
                request._finish("cancelled")
            except Exception as error:  # one bad request must not stop the engine
                request._finish("error", error)
            finally:
                self._active = 0
                self._finished += 1

    def _run_alone(self, request: EngineRequest) -> None:
        from ..generation import generate

        params = request.params
        eos = [int(t) for t in _as_list(self.model.generation_config.eos_token_id)]
        stop_ids = eos + [int(t) for t in params.stop_token_ids]
        if request.cancelled:
            raise _Cancelled()
        if params.seed is not None:
            paddle.seed(params.seed)
        engine = self

        class _Streamer:
            first = True

            def put(self, value: paddle.Tensor) -> None:
                if self.first:  # the prompt
                    self.first = False
                    return
                if request.cancelled or engine._stopping.is_set():
                    raise _Cancelled()
                engine._steps += 1
                request._push(int(value.reshape([-1])[0]))

            def end(self) -> None:
                pass

        sample = params.temperature > 0
        inputs = {k: v for k, v in request.inputs.items() if v is not None}
        generate(self.model, streamer=_Streamer(), max_new_tokens=params.max_new_tokens,
                 decode_strategy="sampling" if sample else "greedy_search",
                 temperature=params.temperature if sample else None, top_p=params.top_p, top_k=0,
                 repetition_penalty=1.0, min_new_tokens=0, eos_token_id=stop_ids, **inputs)
        last = request.output_tokens[-1] if request.output_tokens else None
        request._finish("stop" if last in stop_ids else "length")


def _as_list(value: Any) -> List[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
