"""Incremental detokenisation for streamed answers, with OpenAI stop strings.

Byte-level BPE tokens can end inside a multi-byte UTF-8 character; decoding such a prefix
gives U+FFFD. New text is therefore taken only once a short window of the latest tokens
decodes without a trailing U+FFFD (vLLM's prefix/read offsets), so a character is never
split across chunks and the streamed pieces join to the text of the whole answer. Text that
could still become the start of a stop string is held back until it cannot.
"""

from __future__ import annotations

from typing import Any, List, Sequence

__all__ = ["IncrementalDetokenizer"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Token ids in (:meth:`push`), safe text out; :meth:`finish` flushes what is held back.

    ``stopped`` turns True when a stop string appears: the text is cut before it and nothing
    more is returned.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.ids: List[int] = []
        self.text = ""  # all text decoded so far (cut at a stop string)
        self.stopped = False
        self._prefix = self._read = 0  # token window: ids[_prefix:_read] is already in `text`
        self._sent = 0  # characters of `text` already returned
        self._hold = max((len(s) for s in self.stop), default=1) - 1

    def _decode(self, ids: List[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the text that became final (possibly "")."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text (an incomplete character at the very end included, as U+FFFD)."""
        if not self.stopped:
            tail = self._decode(self.ids[self._prefix:])[len(self._decode(self.ids[self._prefix:self._read])):]
            self.text += tail
            self._prefix = self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if not self.stopped and self.stop:
            start = max(0, self._sent - self._hold)  # a stop string may straddle sent and new text
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text, self.stopped, final = self.text[:min(hits)], True, True
        end = len(self.text) if final else max(self._sent, len(self.text) - self._hold)
        piece, self._sent = self.text[self._sent:end], end
        return piece
