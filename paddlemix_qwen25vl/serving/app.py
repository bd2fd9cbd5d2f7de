"""The HTTP API: OpenAI's ``/v1/chat/completions`` (plain and SSE-streamed), ``/v1/models``,
``/health`` and the chat page at ``/``, on FastAPI.

The model loads in a background thread when the app starts (``/health`` and the API answer
503 until it is ready). Each chat request is parsed (:mod:`.protocol`), turned into model
inputs off the event loop (:mod:`.prompt`), submitted to the engine, and its tokens are
detokenised as they arrive (:mod:`.detokenize`). A request whose client goes away is cancelled
in the engine (streamed: at its next event; plain: within DISCONNECT_POLL_SECONDS).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .detokenize import IncrementalDetokenizer
from .engine import Engine, EngineRequest, QueueFull, SamplingParams
from .media import MediaLimits
from .prompt import build_inputs
from .protocol import (
    APIError,
    ChatCompletionRequest,
    chunk_body,
    completion_body,
    model_card,
    models_body,
    new_completion_id,
    parse_chat_request,
    usage_body,
)

__all__ = ["ServerSettings", "ServedModel", "create_app"]

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"  # package data: ships in the wheel
DISCONNECT_POLL_SECONDS = 0.25  # how often a non-streamed request checks that its client is still there
PAGE_PREFIXES = ("/static/",)  # with an API key, these and "/" answer a 401 with a Basic challenge


@dataclass(frozen=True)
class ServerSettings:
    """What the server is told at start: the served model name, the key, the limits."""

    model_name: str
    api_key: Optional[str] = None
    media: MediaLimits = field(default_factory=MediaLimits)
    max_prompt_tokens: int = 16384
    max_completion_tokens: int = 2048  # also the default when a request gives no max_tokens
    max_request_bytes: int = 64 * 1024 * 1024


@dataclass
class ServedModel:
    """A loaded model: the processor that builds its inputs and the running engine."""

    processor: Any
    engine: Engine
    context_length: int  # prompt plus new tokens, from the model's config


class _State:
    """Loading state shared by the loader thread and the handlers."""

    def __init__(self) -> None:
        self.served: Optional[ServedModel] = None
        self.load_error: Optional[str] = None
        self.created = int(time.time())

    def ready(self) -> ServedModel:
        if self.served is None:
            message = f"the model failed to load: {self.load_error}" if self.load_error else "the model is still loading"
            raise APIError(503, message, code="model_loading" if self.load_error is None else "model_load_failed")
        return self.served


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes, over the limit of {limit}", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes", code="request_too_large")
    return bytes(body)


def _sampling(chat: ChatCompletionRequest, prompt_tokens: int, served: ServedModel,
              settings: ServerSettings) -> SamplingParams:
    """SamplingParams of a request; max_tokens over the cap or past the context is a 400."""
    cap = settings.max_completion_tokens
    room = served.context_length - prompt_tokens
    wanted = chat.requested_tokens
    if wanted is not None and wanted > cap:
        raise APIError(400, f"max_tokens is {wanted}, over this server's limit of {cap}", param="max_tokens",
                       code="invalid_value")
    new_tokens = min(wanted or cap, room)
    if new_tokens < 1 or (wanted is not None and wanted > room):
        raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({wanted or cap}) exceeds the "
                       f"model's context of {served.context_length} tokens", param="messages",
                       code="context_length_exceeded")
    # OpenAI's defaults: temperature 1, top_p 1; temperature 0 is greedy
    temperature = 1.0 if chat.temperature is None else chat.temperature
    return SamplingParams(max_new_tokens=new_tokens, temperature=temperature,
                          top_p=1.0 if chat.top_p is None else chat.top_p, seed=chat.seed)


class _Answer:
    """One engine request read as text: pieces as they become final, then finish reason and token
    count (up to the stop string when one ended the answer)."""

    def __init__(self, engine_request: EngineRequest, detokenizer: IncrementalDetokenizer) -> None:
        self.request, self.detokenizer = engine_request, detokenizer
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None

    async def pieces(self) -> AsyncIterator[str]:
        """Text pieces; raises APIError(500) when generation failed. Leaving early cancels the request."""
        try:
            async for token in self.request.atokens():
                self.completion_tokens += 1
                piece = self.detokenizer.push(token)
                if piece:
                    yield piece
                if self.detokenizer.stopped:  # a stop string: the rest is not wanted
                    self.finish_reason = "stop"
                    break
            tail = self.detokenizer.finish()
            if tail:
                yield tail
            if self.finish_reason is None:
                if self.request.finish_reason == "error":
                    logger.error("generation failed: %r", self.request.error)
                    raise APIError(500, f"generation failed: {self.request.error}", code="generation_failed")
                self.finish_reason = self.request.finish_reason
                self.completion_tokens = self.request.completion_tokens  # the eos id included, as generate's output
        finally:
            if not self.request.done:  # stop string, client gone, or an error above
                self.request.cancel()


async def _collect(answer: _Answer, request: Request) -> str:
    """The whole text of a non-streamed answer; the engine request is cancelled if the client goes away."""
    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
        answer.request.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return "".join([piece async for piece in answer.pieces()])
    finally:
        watcher.cancel()


def _sse(data: Dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(answer: _Answer, completion_id: str, model: str, prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    """The SSE events of a streamed answer: role, content pieces, finish reason, usage, [DONE]."""
    chunk = lambda delta, **kw: _sse(chunk_body(completion_id, model, delta, with_usage=include_usage, **kw))  # noqa: E731
    yield chunk({"role": "assistant", "content": ""})
    try:
        async for piece in answer.pieces():
            yield chunk({"content": piece})
        yield chunk({}, finish_reason=answer.finish_reason)
        if include_usage:
            yield chunk(None, usage=usage_body(prompt_tokens, answer.completion_tokens))
    except APIError as err:  # headers are sent: the error travels as an event, as OpenAI's does
        yield _sse(err.body())
    yield "data: [DONE]\n\n"


def _routes(app: FastAPI, settings: ServerSettings, state: _State) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        served = state.ready()
        return JSONResponse({"status": "ok", "model": settings.model_name, "engine": served.engine.stats()})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        state.ready()
        return JSONResponse(models_body(settings.model_name, state.created))

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> JSONResponse:
        state.ready()
        if model != settings.model_name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
        return JSONResponse(model_card(settings.model_name, state.created))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        served = state.ready()
        chat = parse_chat_request(await _read_body(request, settings.max_request_bytes))
        if chat.model != settings.model_name:
            raise APIError(404, f"the model {chat.model!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
        inputs = await run_in_threadpool(build_inputs, chat, served.processor, settings.media, settings.max_prompt_tokens)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        params = _sampling(chat, prompt_tokens, served, settings)
        try:
            engine_request = served.engine.submit(inputs, params)
        except QueueFull as err:
            raise APIError(429, f"the server is busy ({err}); retry later", code="queue_full") from None
        except ValueError as err:  # inputs or settings the engine cannot run
            raise APIError(400, str(err), code="invalid_value") from None
        answer = _Answer(engine_request, IncrementalDetokenizer(served.processor.tokenizer, chat.stop_strings))
        completion_id = new_completion_id()
        if chat.stream:
            events = _stream(answer, completion_id, settings.model_name, prompt_tokens, chat.include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text = await _collect(answer, request)
        usage = usage_body(prompt_tokens, answer.completion_tokens)
        return JSONResponse(completion_body(completion_id, settings.model_name, text, answer.finish_reason, usage))

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


class _KeyCheck:
    """ASGI middleware: with an API key set, every path but ``/health`` needs it, as
    ``Authorization: Bearer KEY`` (API clients) or HTTP Basic with KEY as the password (a
    browser asks for it when it opens the page, then sends it with the page's own API calls).
    Plain ASGI, so streamed responses pass untouched."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.api_key = app, api_key.encode()

    def _authorized(self, header: bytes) -> bool:
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() == b"bearer":
            return hmac.compare_digest(credentials, self.api_key)
        if scheme.lower() == b"basic":
            try:  # base64("user:password"); any user name is accepted
                password = base64.b64decode(credentials, validate=True).partition(b":")[2]
            except ValueError:
                return False
            return hmac.compare_digest(password, self.api_key)
        return False

    async def __call__(self, scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path != "/health":
            if not self._authorized(dict(scope["headers"]).get(b"authorization", b"")):
                error = APIError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'", code="invalid_api_key")
                response = _error_response(error)
                if path == "/" or path.startswith(PAGE_PREFIXES):
                    response.headers["WWW-Authenticate"] = 'Basic realm="paddlemix_qwen25vl", charset="UTF-8"'
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _handlers(app: FastAPI, settings: ServerSettings) -> None:
    if settings.api_key is not None:
        app.add_middleware(_KeyCheck, api_key=settings.api_key)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:  # unknown route, wrong method
        return _error_response(APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error in %s %s", request.method, request.url.path)
        return _error_response(APIError(500, f"internal error: {type(err).__name__}: {err}", code="internal_error"))


def create_app(settings: ServerSettings, load: Callable[[], ServedModel],
               on_load_error: Optional[Callable[[BaseException], None]] = None) -> FastAPI:
    """The FastAPI app; ``load()`` runs in a thread at start-up (the API answers 503 until it
    returns), ``on_load_error`` is told when it raises. The engine stops at shutdown."""
    state = _State()

    def load_in_background() -> None:
        try:
            state.served = load()
        except (Exception, SystemExit) as err:  # the server stays up to say why (503); the CLI exits instead
            state.load_error = f"{type(err).__name__}: {err}"
            logger.error("loading the model failed: %s", state.load_error)
            if on_load_error is not None:
                on_load_error(err)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=load_in_background, name="paddlemix-load", daemon=True)
        loader.start()
        yield
        await asyncio.to_thread(loader.join)
        if state.served is not None:
            await asyncio.to_thread(state.served.engine.stop)

    app = FastAPI(title="paddlemix_qwen25vl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    _handlers(app, settings)
    _routes(app, settings, state)
    return app
