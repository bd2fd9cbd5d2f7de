"""OpenAI chat-completions wire format: request parsing and validation, response and error bodies.

A request body becomes a :class:`ChatCompletionRequest` (pydantic, strict types) or an
:class:`APIError` whose message names the offending field. Only what this server does is
accepted: ``n=1``, text / ``image_url`` / ``video_url`` content parts, no tools or logprobs.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import Annotated

__all__ = [
    "APIError",
    "ChatCompletionRequest",
    "parse_chat_request",
    "completion_body",
    "chunk_body",
    "usage_body",
    "models_body",
    "new_completion_id",
]

MAX_STOP_STRINGS = 4  # OpenAI's limit

# OpenAI's error types by status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error answered as OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> Dict[str, Any]:
        """The JSON error body."""
        kind = _ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    # strict: "5" is not an int and 1 is not a bool; unknown keys inside a part are errors
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Optional[Literal["auto", "low", "high"]] = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Strict):
    url: str


class VideoPart(_Strict):
    """A video as vLLM accepts it: ``{"type": "video_url", "video_url": {"url": ...}}``."""

    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]


class Message(_Strict):
    # "developer" is OpenAI's newer name for the system role
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[ContentPart], None] = None
    name: Optional[str] = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of ``POST /v1/chat/completions`` this server reads; other OpenAI fields are
    ignored unless they ask for something it cannot do (see :func:`_check_unsupported`)."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str
    messages: List[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    seed: Optional[int] = Field(default=None, ge=0)
    stop: Union[str, List[str], None] = None
    n: Optional[int] = 1
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None

    @property
    def stop_strings(self) -> List[str]:
        """``stop`` as a list (a single string is one stop string)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def requested_tokens(self) -> Optional[int]:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _field_path(loc: tuple) -> str:
    """pydantic's error location as a path: ("messages", 0, "content", <union label>, 0, "text",
    "text") -> "messages[0].content[0].text" (union labels dropped, a tag followed by its field merged)."""
    path, last = "", None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("str", "none") and "[" not in part and part != last:
            path += ("." if path else "") + part
        last = part
    return path


def _validation_message(err: ValidationError) -> tuple:
    """(path, message) of the most specific error: the deepest location, its messages joined."""
    errors = [(_field_path(e["loc"]), e) for e in err.errors()]
    deepest = max(errors, key=lambda pe: pe[0].count(".") + pe[0].count("["))[0]
    found = [e for path, e in errors if path == deepest]
    messages = " or ".join(dict.fromkeys(e["msg"] for e in found))
    return deepest, f"{deepest or 'body'}: {messages} (got {found[0].get('input')!r:.80})"


def _check_unsupported(extra: Dict[str, Any]) -> None:
    """Refuse OpenAI options whose request cannot be honoured (rather than silently ignoring them)."""
    refused = {
        "tools": lambda v: bool(v),
        "functions": lambda v: bool(v),
        "logprobs": lambda v: v is True,
        "top_logprobs": lambda v: v is not None,
        "presence_penalty": lambda v: v not in (None, 0, 0.0),
        "frequency_penalty": lambda v: v not in (None, 0, 0.0),
        "logit_bias": lambda v: bool(v),
        "response_format": lambda v: isinstance(v, dict) and v.get("type") not in (None, "text"),
        "modalities": lambda v: v not in (None, ["text"]),
        "audio": lambda v: v is not None,
    }
    for name, is_refused in refused.items():
        if name in extra and is_refused(extra[name]):
            raise APIError(400, f"'{name}' is not supported by this server (got {extra[name]!r:.80})", param=name,
                           code="unsupported_parameter")


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse and validate a chat-completions request body; raises APIError(400) naming the problem."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as err:
        path, message = _validation_message(err)
        raise APIError(400, message, param=path or None, code="invalid_value") from None
    _check_unsupported(request.model_extra or {})
    if request.n != 1:
        raise APIError(400, f"only n=1 is supported, got n={request.n}", param="n", code="unsupported_parameter")
    stops = request.stop_strings
    if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
        raise APIError(400, f"stop takes up to {MAX_STOP_STRINGS} non-empty strings, got {stops!r:.80}", param="stop",
                       code="invalid_value")
    return request


def new_completion_id() -> str:
    """An id in OpenAI's style: ``chatcmpl-`` and 24 hex digits."""
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_body(prompt_tokens: int, completion_tokens: int) -> Dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(completion_id: str, model: str, text: str, finish_reason: str, usage: Dict[str, int]) -> Dict[str, Any]:
    """A non-streamed ``chat.completion`` response."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish_reason}],
        "usage": usage,
        "system_fingerprint": None,
    }


def chunk_body(completion_id: str, model: str, delta: Optional[Dict[str, str]], finish_reason: Optional[str] = None,
               usage: Optional[Dict[str, int]] = None, with_usage: bool = False) -> Dict[str, Any]:
    """One ``chat.completion.chunk``: a choice carrying ``delta`` (or no choice when ``delta`` is
    None: the final usage chunk). ``with_usage`` adds the ``usage`` key (null except in that chunk),
    as OpenAI does when ``stream_options.include_usage`` is set."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": choices, "system_fingerprint": None}
    if with_usage:
        chunk["usage"] = usage
    return chunk


def models_body(model: str, created: int) -> Dict[str, Any]:
    """``GET /v1/models``: the one served model."""
    return {"object": "list", "data": [model_card(model, created)]}


def model_card(model: str, created: int) -> Dict[str, Any]:
    """One entry of ``/v1/models`` (also ``GET /v1/models/{model}``)."""
    return {"id": model, "object": "model", "created": created, "owned_by": "paddlemix_qwen25vl"}
