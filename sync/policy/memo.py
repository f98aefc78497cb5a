"""A memory of recent results of a pure function over text, bounded by the characters it holds.

Building an unchanged entity's document again (a metadata-only update, a resync, a
reconciliation) repeats work whose inputs have not changed: cleaning and redacting its text,
hashing it. `TextMemo` keeps such results for keys made of the inputs themselves (never of an
entity's identity, so a changed input can only miss), counts the characters of keys and results,
and forgets everything at once when full: no per-entry bookkeeping on the hot path, and the
memory a process spends on it is bounded by `max_chars`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TextMemo(Generic[V]):
    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self._items: dict[Hashable, V] = {}
        self._chars = 0

    def get(self, key: Hashable) -> V | None:
        return self._items.get(key)

    def put(self, key: Hashable, value: V, chars: int) -> None:
        """Remember `value` for `key`; `chars` is what both take (a value over an eighth of the
        memo is not kept: it would crowd out the rest)."""
        if chars > self.max_chars // 8:
            return
        if self._chars + chars > self.max_chars:
            self.clear()
        self._items[key] = value
        self._chars += chars

    def clear(self) -> None:
        self._items = {}
        self._chars = 0

    def __len__(self) -> int:
        return len(self._items)
