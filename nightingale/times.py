"""The one reader of a time a person typed (a query string, a JSON body, a command's flag).
Imports Django only, so the engine's commands and the UI both may use it."""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils import timezone

# The times a person may name: wide enough for any record, narrow enough that converting one to
# UTC (as every database does) and a day either side stay inside what datetime can hold.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class BadTime(ValueError):
    """The value is not an ISO 8601 time; the message names the input and shows the value."""


def parse_time(value: str, name: str) -> datetime | None:
    """`value` as an aware datetime (a naive one is taken in the current time zone), None when
    empty; `name` is what the caller's user calls the input (`as_of`, `--before`). A time before
    EARLIEST or after LATEST is refused: at the edges of what datetime holds (9999-12-31T23:59
    at -14:00), the database's conversion to UTC overflows."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if not timezone.is_aware(parsed):
            parsed = timezone.make_aware(parsed, timezone.get_current_timezone())
        in_utc = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadTime(f"{name} must be an ISO 8601 time, got {value[:40]!r}") from None
    if not EARLIEST <= in_utc <= LATEST:
        raise BadTime(f"{name} must be a time between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}, "
                      f"got {value[:40]!r}")
    return parsed
