"""JSON text taken apart without recursion, for bodies nested deeper than any JSON reader here goes.

msgspec, simdjson and the standard library each stop at a depth of about a thousand. One event
nested that deep must not cost the valid events beside it, nor be worded as "not JSON": the
careful path (``service.decoding.parsing``) cuts the ``events`` array into one slice per event,
reads each alone, and names the deepest member of an event no reader can read.

:class:`Scanned` finds the brackets and commas outside strings (a ``"`` escaped by an odd run of
backslashes does not end one) and the depth after each, in a few numpy passes: a Python loop over
the brackets of an 8 MiB body of them took 6 s here, these passes 0.07 s. It checks that strings
close and that the brackets it splits at match; the rest of the grammar is left to the readers of
the slices (a slice too deep for them is refused anyway).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_CLOSING = {ord("["): ord("]"), ord("{"): ord("}")}
_STEP = np.zeros(256, dtype=np.int8)
"""How a structural byte changes the depth: +1 opens, -1 closes, 0 for a comma (any other byte is not one)."""
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[[ord("["), ord("{"), ord("]"), ord("}"), _COMMA]] = True
_KEY = re.compile(rb'\s*("[^"\\]*(?:\\.[^"\\]*)*")\s*:\s*', re.S)


@dataclass(frozen=True, slots=True)
class Item:
    """An item of a JSON array or object (an object's as ``"key": value`` text) at ``text[start:end]``."""

    start: int
    end: int
    depth: int
    """How many arrays or objects deep it goes: 0 for a number or a string."""


class NotJson(ValueError):
    """A string that does not close, or brackets that do not match."""


class Scanned:
    """A JSON text's brackets and commas outside strings, with the depth after each. Raises ``NotJson``."""

    def __init__(self, text: bytes) -> None:
        self.text = text
        plain = np.frombuffer(text, dtype=np.uint8)
        quotes = _string_quotes(plain)
        if len(quotes) % 2:
            raise NotJson("a string does not close")
        structural = _STRUCTURAL[plain]
        if len(quotes):  # not inside a string: an even count of quotes up to there
            toggles = np.zeros(len(plain), dtype=np.uint8)
            toggles[quotes] = 1
            structural &= (np.cumsum(toggles, dtype=np.uint8) & 1) == 0
        self._positions = np.flatnonzero(structural)
        self._bytes = plain[self._positions]
        self._depth = np.cumsum(_STEP[self._bytes], dtype=np.int32)

    def end_of(self, start: int) -> int:
        """The offset just past the array or object whose bracket is at ``start``."""
        return int(self._positions[self._span(start)[1]]) + 1

    def count(self, start: int) -> int:
        """How many items the array or object whose bracket is at ``start`` holds."""
        at, close = self._span(start)
        commas = self._commas(at, close)
        return len(commas) + 1 if len(commas) or self._holds_one(at, close) else 0

    def items(self, start: int) -> list[Item]:
        """The items of the array or object whose bracket is at ``start`` (a loop per item: count them first)."""
        at, close = self._span(start)
        commas = self._commas(at, close).tolist()
        if not commas and not self._holds_one(at, close):
            return []
        level = int(self._depth[at])
        items = []
        for first, stop in zip([at, *commas], [*commas, close], strict=True):
            deepest = int(self._depth[first + 1 : stop].max()) - level if stop > first + 1 else 0
            items.append(Item(int(self._positions[first]) + 1, int(self._positions[stop]), deepest))
        return items

    def _span(self, start: int) -> tuple[int, int]:
        """Where the bracket at ``start`` and the one closing it are among the structural bytes."""
        at = int(np.searchsorted(self._positions, start))
        if at == len(self._positions) or self._positions[at] != start or self.text[start] not in _CLOSING:
            raise NotJson(f"expected '[' or '{{' at byte {start}")
        below = self._depth[at:] < self._depth[at]
        close = at + int(np.argmax(below))
        end = int(self._positions[close])
        if not below[close - at]:
            raise NotJson(f"the bracket at byte {start} does not close")
        if self.text[end] != _CLOSING[self.text[start]]:
            raise NotJson(f"the bracket at byte {start} is closed by {chr(self.text[end])!r} at byte {end}")
        return at, close

    def _commas(self, at: int, close: int) -> npt.NDArray[np.intp]:
        inner = slice(at + 1, close)
        return np.flatnonzero((self._bytes[inner] == _COMMA) & (self._depth[inner] == self._depth[at])) + at + 1

    def _holds_one(self, at: int, close: int) -> bool:
        """Whether a container without commas holds an item ("[]" holds none)."""
        begin, end = int(self._positions[at]) + 1, int(self._positions[close])
        return close > at + 1 or bool(self.text[begin:end].strip())


def _string_quotes(plain: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    """Where the ``"`` opening or closing a string are: every one but those after an odd run of backslashes."""
    quotes = np.flatnonzero(plain == _QUOTE)
    escaped = (quotes > 0) & (plain[quotes - 1] == _BACKSLASH)
    if not escaped.any():
        return quotes
    after_backslash = quotes[escaped]
    backslash = plain == _BACKSLASH
    run_starts = np.flatnonzero(backslash & ~np.concatenate(([False], backslash[:-1])))
    run_start = run_starts[np.searchsorted(run_starts, after_backslash - 1, side="right") - 1]
    escaped[escaped] = (after_backslash - run_start) % 2 == 1
    delimiting: npt.NDArray[np.intp] = quotes[~escaped]
    return delimiting


def key_of(text: bytes, member: Item) -> tuple[str, int] | None:
    """The key of an object's ``member`` and where its value starts; ``None`` when it has no string key."""
    found = _KEY.match(text, member.start, member.end)
    if found is None:
        return None
    try:
        key: str = json.loads(found.group(1))
    except ValueError:  # an invalid escape, or text that is not UTF-8
        return None
    return key, found.end()


def depth_of(value: object) -> int:
    """How many lists or dicts deep a decoded ``value`` goes (0 for a scalar), level by level: no recursion."""
    depth, level = 0, [value]
    while level := [item for item in level if isinstance(item, (list, dict))]:
        depth += 1
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)]
    return depth
