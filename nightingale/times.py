"""The one reader of a time a person typed (a query string, a JSON body, a command's flag).
Imports Django only, so the engine's commands and the UI both may use it."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone


class BadTime(ValueError):
    """The value is not an ISO 8601 time; the message names the input and shows the value."""


def parse_time(value: str, name: str) -> datetime | None:
    """`value` as an aware datetime (a naive one is taken in the current time zone), None when
    empty; `name` is what the caller's user calls the input (`as_of`, `--before`)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadTime(f"{name} must be an ISO 8601 time, got {value[:40]!r}") from None
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, timezone.get_current_timezone())
