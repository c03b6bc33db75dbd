"""Tokens to text for one request: incremental deltas for streaming, and stop strings.

Detokenising is incremental, O(new tokens) per push (vLLM's scheme): each new token is decoded with
the few tokens before it (from `prefix_offset`), and the text it adds is the difference between
decoding [prefix_offset:] and [prefix_offset:read_offset], so a token whose text depends on the one
before it (a leading space, a byte of a multi-byte character) comes out right. While the text of the
newest tokens ends in U+FFFD (half a character) nothing is added; `flush` adds whatever is left.

Text is released once it can no longer change: with stop strings, never the last len(longest stop) - 1
characters (they could be the start of a stop string). A stop string ends the text just before it
and is not included, as OpenAI does. `tokens` holds the tokens the text was made from: up to and
including the one that completed a stop string, none after it (what `usage` and `token_ids` report).
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.tokens: list[int] = []
        self.stopped = False
        self._released: list[str] = []  # text sent, in pieces (joined once, in `text`)
        self._pending = ""  # text made but not sent: at most `hold` characters, where a stop may begin
        self._prefix_offset = self._read_offset = 0

    @property
    def text(self) -> str:
        """All the text so far (sent or not), without a stop string."""
        return "".join(self._released) + self._pending

    def push(self, tokens: list[int]) -> str:
        """Add new tokens; the text that is now final (possibly ""). Sets `stopped` at a stop string,
        and then ignores the tokens after the one that completed it."""
        for token in tokens:
            if self.stopped:
                break
            self.tokens.append(token)
            self._add(self._decode_new(final=False))
        return self._release()

    def flush(self) -> str:
        """The rest of the text, once generation has ended."""
        if not self.stopped:
            self._add(self._decode_new(final=True))
        out, self._pending = self._pending, ""
        if out:
            self._released.append(out)
        return out

    def _decode_new(self, final: bool) -> str:
        """The text the tokens after `read_offset` add (""while it ends in half a character, unless `final`)."""
        decode = self.tokenizer.decode
        before = decode(self.tokens[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        after = decode(self.tokens[self._prefix_offset :], skip_special_tokens=True)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.tokens)
        return after[len(before) :]

    def _add(self, new: str) -> None:
        if not new:
            return
        start = max(0, len(self._pending) - self.hold)  # a stop can only begin in the held-back tail
        self._pending += new
        hits = [i for i in (self._pending.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self._pending, self.stopped = self._pending[: min(hits)], True

    def _release(self) -> str:
        keep = 0 if self.stopped else self.hold
        end = len(self._pending) - keep
        if end <= 0:
            return ""
        out, self._pending = self._pending[:end], self._pending[end:]
        self._released.append(out)
        return out
