"""Tokens to text for one request: incremental deltas for streaming, and stop strings.

The full text is re-decoded from all tokens at each push (a token may change how the previous ones
decode, and a multi-byte character can span tokens), and only text that can no longer change is
released: never a trailing U+FFFD (half a character), and, when there are stop strings, never the
last len(longest stop) - 1 characters (they could be the start of a stop string). A stop string ends
the text just before it and is not included, as OpenAI does.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, tokens: list[int]) -> str:
        """Add new tokens; the text that is now final (possibly ""). Sets `stopped` at a stop string."""
        if self.stopped:
            return ""
        self.tokens += tokens
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if self.stops:
            start = max(0, self.sent - self.hold)
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text, self.stopped = self.text[: min(hits)], True
                return self._release(len(self.text))
        end = len(self.text) - self.hold
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1
        return self._release(end)

    def flush(self) -> str:
        """The rest of the text, once generation has ended."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : end], end
        return delta
