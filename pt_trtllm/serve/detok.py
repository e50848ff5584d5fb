"""Incremental detokenization for streaming: the text each new token adds.

Decoding a token alone is wrong for byte-level BPE and SentencePiece (a character may span tokens,
a leading space depends on the previous token). As text-generation servers do, decode a short
window of the previous tokens with and without the new ones and emit the difference, holding text
back while it ends in an incomplete character (U+FFFD). The deltas add up to the full decode."""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.emitted = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def add(self, ids: list[int]) -> str:
        """Append tokens; the text they complete (may be empty)."""
        self.ids.extend(ids)
        prefix = self._decode(self.ids[self.prefix_offset: self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            delta = text[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.emitted += delta
            return delta
        return ""

    def finish(self) -> str:
        """The text still held back at the end (so that all deltas equal the full decode)."""
        full = self._decode(self.ids)
        rest = full[len(self.emitted):] if full.startswith(self.emitted) else ""
        self.emitted += rest
        return rest
