"""OpenAI chat messages -> the model inputs of one conversation.

The messages become the library's conversation format (text items, PIL images, video files),
rendered by the processor's chat template and preprocessed by ``process_vision_info`` and
the processor exactly as the inference scripts do, so that an API answer equals the script's.

Dimensions:
    L: prompt tokens (image and video placeholders expanded)
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import paddle

from ..processing import Qwen2_5_VLProcessor, process_vision_info
from .media import MediaLimits, open_image, video_file
from .protocol import APIError, ChatCompletionRequest, Message

__all__ = ["build_inputs"]

_ROLES = {"developer": "system"}  # OpenAI's newer name for the system role


def _check_counts(request: ChatCompletionRequest, limits: MediaLimits) -> None:
    """Too many images or videos is a 413, before any is fetched."""
    parts = [p for m in request.messages if isinstance(m.content, list) for p in m.content]
    for kind, limit in (("image_url", limits.max_images), ("video_url", limits.max_videos)):
        count = sum(p.type == kind for p in parts)
        if count > limit:
            raise APIError(413, f"too many {kind.split('_')[0]}s: {count}, at most {limit} per request",
                           param="messages", code="too_many_media")


def _content(message: Message, index: int, limits: MediaLimits, temporary: List[str]) -> Any:
    """One message's content in the library's format; images are fetched and decoded here."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    items = []
    for j, part in enumerate(message.content):
        param = f"messages[{index}].content[{j}]"
        if part.type == "text":
            items.append({"type": "text", "text": part.text})
        elif part.type == "image_url":
            items.append({"type": "image", "image": open_image(part.image_url.url, limits, param + ".image_url.url")})
        else:
            path, is_temporary = video_file(part.video_url.url, limits, param + ".video_url.url")
            if is_temporary:
                temporary.append(path)
            items.append({"type": "video", "video": path, "max_frames": limits.max_video_frames})
    return items


def _preprocess(processor: Qwen2_5_VLProcessor, conversation: List[Dict[str, Any]]) -> Dict[str, paddle.Tensor]:
    """Chat template, process_vision_info and the processor; media they refuse (a broken video,
    an aspect ratio over 200) is a 400."""
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    try:
        images, videos, video_kwargs = process_vision_info(conversation, return_video_kwargs=True)
        return processor(text=[text], images=images, videos=videos, fps=video_kwargs.get("fps"), return_tensors="pd")
    except ValueError as err:
        raise APIError(400, f"cannot use the media of this request: {err}", code="invalid_media") from None


def build_inputs(request: ChatCompletionRequest, processor: Qwen2_5_VLProcessor, limits: MediaLimits,
                 max_prompt_tokens: int) -> Dict[str, paddle.Tensor]:
    """The processor's output for the request's conversation (input_ids [1, L], media tensors).

    Raises APIError: 400/413 for media (see :mod:`.media`), 400 for a prompt over ``max_prompt_tokens``.
    """
    _check_counts(request, limits)
    temporary: List[str] = []
    try:
        conversation = [{"role": _ROLES.get(m.role, m.role), "content": _content(m, i, limits, temporary)}
                        for i, m in enumerate(request.messages)]
        inputs = _preprocess(processor, conversation)
    finally:
        for path in temporary:
            os.unlink(path)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    if prompt_tokens > max_prompt_tokens:
        raise APIError(400, f"the prompt is {prompt_tokens} tokens (images and videos included), over this "
                       f"server's limit of {max_prompt_tokens}", param="messages", code="context_length_exceeded")
    return inputs
