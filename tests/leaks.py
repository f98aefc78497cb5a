"""Looking for a leaked value in what the engine or the dashboard wrote.

A value counts when it appears whole: "125000" leaked, not the ".125000" of a timestamp's
microseconds, and "7946" not a run of digits inside a content hash or a CSRF token. Matching a
fragment made these checks fail by chance (CI saw "7700" in a node's updated_at)."""

from __future__ import annotations

import re


def shows(text: str, value: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(value)}(?!\w)", text) is not None


def shown(text: str, values) -> list[str]:
    """The values `text` shows, each whole (an empty list when none leaked)."""
    return [value for value in values if shows(text, value)]
