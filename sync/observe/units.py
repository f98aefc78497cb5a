"""Numbers in words, with their units (the same on pages, in alert summaries and notifications)."""

from __future__ import annotations


def duration(value: float | None) -> str:
    """12.3 s, 45 s, 12 min, 3.5 h, 2.0 d."""
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def split_duration(value: float | None) -> tuple[str, str]:
    """("12", "min"): a KPI card's number and unit apart."""
    if value is None:
        return "—", ""
    number, _, unit = duration(value).partition(" ")
    return number, unit


def rate(count: float, seconds: float) -> float | None:
    """Per minute."""
    return None if seconds <= 0 else count * 60.0 / seconds


def per_minute(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def age(value: float) -> str:
    """How long ago, to the minute: a live region showing it changes at most once a minute, so a
    poll in between finds nothing changed (204)."""
    if value < 60:
        return "under a minute"
    if value < 7200:
        return f"{value // 60:.0f} min"
    if value < 172800:
        return f"{value // 3600:.0f} h"
    return f"{value // 86400:.0f} d"
