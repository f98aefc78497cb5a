"""Conflict values as text: lists comma-separated, None as an em dash (escaped by the template)."""

from django import template

from sync.conflicts.review import text
from sync.policy import is_withheld

register = template.Library()


@register.filter
def plain(value) -> str:
    shown = text(value)
    return shown if shown != "" else "—"


@register.filter
def field_of(row, side: str):
    """The row's JSON-encoded value for one side (for the preview script's data attributes)."""
    return row.json[side]


@register.filter
def editable(value) -> str:
    """The value an edit box starts with: the side's value as text, empty for none or for a
    value withheld by policy (typing over it would write the words into the graph)."""
    return "" if is_withheld(value) else text(value)
