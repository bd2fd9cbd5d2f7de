"""Annotation records -> chat turns -> token ids with supervision labels.

Two record formats are accepted (both may omit media, i.e. text-only):

- messages: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}],
  "images": [...], "videos": [...]}``
- conversations: ``{"image" | "video": str or list, "conversations":
  [{"from": "system"|"human"|"gpt", "value": str}]}``

Media are placed where the ``<image>`` / ``<video>`` tags stand, one tag per file, in order;
a record with files but no tag of their kind gets the tags put at the start of its first
user turn (as PaddleMIX does for images), one line each.
Only assistant replies, their ``<|im_end|>`` and the newline after it are supervised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from ..processing.chat_template import DEFAULT_SYSTEM_PROMPT

__all__ = ["RecordError", "Turn", "Conversation", "parse_record", "encode_conversation", "IGNORE_INDEX"]

IGNORE_INDEX = -100
IMAGE_TAG, VIDEO_TAG = "<image>", "<video>"
_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class RecordError(ValueError):
    """An annotation record that cannot become a training sample (the message says why)."""


@dataclass
class Turn:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass
class Conversation:
    """One normalised record: chat turns plus the media files its tags refer to, in order."""

    turns: List[Turn]
    images: List[str] = field(default_factory=list)
    videos: List[str] = field(default_factory=list)


def _as_list(value: Any) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def parse_record(record: Dict[str, Any]) -> Conversation:
    """Normalise a raw annotation record of either format; raises :class:`RecordError` when it is unusable."""
    if not isinstance(record, dict):
        raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        pairs = [(m.get("role"), m.get("content")) for m in record["messages"]]
        images, videos = _as_list(record.get("images")), _as_list(record.get("videos"))
    elif "conversations" in record:
        pairs = [(m.get("from"), m.get("value")) for m in record["conversations"]]
        images, videos = _as_list(record.get("image", record.get("images"))), _as_list(record.get("video", record.get("videos")))
    else:
        raise RecordError(f"no 'messages' or 'conversations' key (keys: {sorted(record)})")
    turns = []
    for role, content in pairs:
        if role not in _ROLES:
            raise RecordError(f"unknown role {role!r}")
        if not isinstance(content, str):
            raise RecordError(f"{role} content must be a string, got {type(content).__name__}")
        turns.append(Turn(_ROLES[role], content))
    if not any(t.role == "assistant" for t in turns):
        raise RecordError("no assistant reply to learn from")
    for tag, files in ((IMAGE_TAG, images), (VIDEO_TAG, videos)):
        tags = sum(t.content.count(tag) for t in turns)
        if tags == 0 and files:
            _prepend_tags(turns, tag, len(files))
            tags = len(files)
        if tags != len(files):
            raise RecordError(f"{tags} {tag} tag(s) but {len(files)} {tag[1:-1]} file(s)")
    return Conversation(turns, images, videos)


def _prepend_tags(turns: List[Turn], tag: str, count: int) -> None:
    """Put ``count`` media tags at the start of the first user turn."""
    for turn in turns:
        if turn.role == "user":
            turn.content = f"{tag}\n" * count + turn.content
            return
    raise RecordError(f"{count} {tag[1:-1]} file(s) but no user turn to put them in")


def encode_conversation(
    conversation: Conversation,
    tokenizer: Any,
    image_tokens: Sequence[int] = (),
    video_tokens: Sequence[int] = (),
) -> Tuple[List[int], List[int]]:
    """Token ids and labels of a conversation rendered with the Qwen2.5-VL chat template.

    ``image_tokens[i]`` / ``video_tokens[i]`` is how many ``<|image_pad|>`` / ``<|video_pad|>``
    tokens the i-th item expands to (t*h*w / merge**2). A default system prompt is added when
    the conversation has none, as the template does at inference.
    """
    turns = list(conversation.turns)
    if turns[0].role != "system":
        turns.insert(0, Turn("system", DEFAULT_SYSTEM_PROMPT))
    image_id, video_id = tokenizer.image_token_id, tokenizer.video_token_id
    counts = {image_id: iter(image_tokens), video_id: iter(video_tokens)}

    def encode(text: str) -> List[int]:
        text = text.replace(IMAGE_TAG, "<|vision_start|><|image_pad|><|vision_end|>")
        text = text.replace(VIDEO_TAG, "<|vision_start|><|video_pad|><|vision_end|>")
        ids: List[int] = []
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            if token in counts:
                copies = next(counts[token], None)
                if copies is None:  # a literal <|image_pad|> typed in the text
                    raise RecordError("more vision pad tokens in the text than media files")
                ids.extend([token] * copies)
            else:
                ids.append(token)
        return ids

    input_ids: List[int] = []
    labels: List[int] = []
    for turn in turns:
        # Every piece starts or ends at a special token, so encoding piece by piece gives the
        # same ids as encoding the whole rendered conversation.
        if turn.role == "assistant":
            # The reply is encoded apart from its header, exactly as the model generates it
            # after the "<|im_start|>assistant\n" prompt.
            header = encode("<|im_start|>assistant\n")
            reply = encode(turn.content + "<|im_end|>\n")
            input_ids += header + reply
            labels += [IGNORE_INDEX] * len(header) + reply
        else:
            ids = encode(f"<|im_start|>{turn.role}\n{turn.content}<|im_end|>\n")
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
    return input_ids, labels
