"""Stop strings over streamed text: the text that may be sent now, and whether a stop string ended
it. Text that could be the start of a stop string is held back until the next tokens tell (as vLLM
does); the stop string itself and what follows it are never sent."""

from __future__ import annotations


class StopStrings:
    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = tuple(stops)
        self.held = ""
        self.matched = False

    def feed(self, text: str) -> str:
        """Add generated text; return what may be sent (after a match: nothing more, ever)."""
        if self.matched:
            return ""
        if not self.stops:
            return text
        pending = self.held + text
        found = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
        if found:
            self.matched, self.held = True, ""
            return pending[: min(found)]
        keep = self._held_from(pending)
        self.held = pending[keep:]
        return pending[:keep]

    def finish(self) -> str:
        """The held text, at the end of the generation (it was not the start of a stop string)."""
        held, self.held = self.held, ""
        return "" if self.matched else held

    def _held_from(self, text: str) -> int:
        """Where the longest end of `text` that begins some stop string starts (len(text): none)."""
        longest = max(len(s) for s in self.stops) - 1
        for i in range(max(0, len(text) - longest), len(text)):
            tail = text[i:]
            if any(s.startswith(tail) for s in self.stops):
                return i
        return len(text)
