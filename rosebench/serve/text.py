"""A request's output as text, streamed: whole UTF-8 characters only, and cut at its stop strings."""

from __future__ import annotations

import tiktoken

from rosebench.engine.tokenizer import HFTokenizer, StreamDetokenizer


class TextStream:
    """Token ids in, text out. A stop string may span chunks, so the last ``len(longest stop) - 1``
    characters are held back until the next chunk shows whether a stop string starts there; the text
    never includes the stop string (OpenAI's behaviour). Characters split across tokens by GPT-2's
    byte-level BPE are held back by ``StreamDetokenizer`` until complete."""

    def __init__(self, tokenizer: tiktoken.Encoding | HFTokenizer, stop: list[str]) -> None:
        self._detokenizer = StreamDetokenizer(tokenizer)
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._pending = ""
        self.stopped = False  # a stop string was reached: the request is over

    def push(self, token_ids: list[int]) -> str:
        """The text these tokens complete that is safe to send now."""
        if self.stopped:
            return ""
        self._pending += "".join(self._detokenizer.push(t) for t in token_ids)
        if self._cut_at_stop():
            return self._take(len(self._pending))
        return self._take(len(self._pending) - self._hold)

    def finish(self) -> str:
        """The rest of the text, at the end of the request."""
        if not self.stopped:
            self._pending += self._detokenizer.flush()
            self._cut_at_stop()
        return self._take(len(self._pending))

    def _cut_at_stop(self) -> bool:
        found = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        if found:
            self._pending = self._pending[: min(found)]
            self.stopped = True
        return self.stopped

    def _take(self, count: int) -> str:
        count = max(0, count)
        text, self._pending = self._pending[:count], self._pending[count:]
        return text
