"""How an audit entry's before/after values read on the page: one line per field, long values
cut with the rest behind "show more" (the template escapes all of it)."""

from __future__ import annotations

import json

from django import template

from sync import audit

register = template.Library()
SHORT = 120


@register.filter
def side(entry, which: str):
    """An entry's `before` or `after` as people may read it: a node's values outside its label's
    display allow-list withheld by policy (sync.audit.shown_values)."""
    if which not in ("before", "after"):
        raise ValueError(f"an audit entry has a before and an after, not {which!r}")
    return audit.shown_values(entry.action, entry.target, getattr(entry, which))


@register.filter
def fields(value) -> list[tuple[str, str, str]]:
    """[(name, shown, rest)] for a dict; one unnamed row for anything else; [] for nothing."""
    if value in (None, "", {}, []):
        return []
    items = value.items() if isinstance(value, dict) else [("", value)]
    rows = []
    for name, item in items:
        text = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, sort_keys=True, default=str)
        rows.append((str(name), text[:SHORT], text[SHORT:]))
    return rows
