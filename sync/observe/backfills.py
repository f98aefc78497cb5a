"""What the pages say about backfills (sync.backfill), without HTML: one panel per backfill —
"Initial sync: 1,234 of 5,400 entities, about 12 minutes left" — and one line on their lag,
shown beside the streaming figures and never mixed into them. The overview and the Queue page
both show them."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from django.conf import settings

from sync.backfill import RATE_WINDOW, Progress
from sync.observe.readings import LagStats
from sync.observe.units import age, duration, per_minute

OK, INFO, WARNING = "ok", "info", "warning"


@dataclass(frozen=True)
class Panel:
    key: str
    headline: str  # "Initial sync: 1,234 of 5,400 entities, about 12 minutes left"
    state: str  # ok | info | warning: colour, icon and word on the page
    state_word: str
    detail: str  # its rate, and who started it and why
    done: int
    total: int
    failed: int


def time_left(seconds: float | None) -> str:
    """About how long until done, in words a glance takes in."""
    if seconds is None:
        return "no estimate until its first entities are synced"
    if seconds < 60:
        return "less than a minute left"
    minutes = math.ceil(seconds / 60)
    if minutes < 120:
        return f"about {minutes} minute{'s' if minutes != 1 else ''} left"
    return f"about {seconds / 3600:.1f} hours left"


def panel(p: Progress) -> Panel:
    b = p.backfill
    if p.finished:
        state, word = (WARNING, "done, with dead letters") if p.failed else (OK, "done")
        headline = f"{p.title}: {p.done:,} of {p.total:,} entities, done"
    else:
        state, word = ((WARNING, "stalled") if p.stalled else
                       (INFO, "queueing") if p.loading and not b.enqueued else (INFO, "syncing"))
        headline = f"{p.title}: {p.done:,} of {p.total:,} entities, {time_left(p.eta)}"
    parts = []
    if p.finished and b.finished_at is not None:
        parts.append(f"finished {age((p.at - b.finished_at).total_seconds())} ago")
    elif p.rate:
        parts.append(f"{per_minute(p.rate * 60)} entities/min over the last {duration(RATE_WINDOW.total_seconds())}")
    elif not p.finished:
        parts.append(f"nothing finished for {duration(p.idle)}" if p.idle >= 60 else "its first entities are on their way")
    if p.loading:
        parts.append(f"still being queued ({b.enqueued:,} so far)")
    if p.failed:
        parts.append(f"{p.failed:,} dead letter{'s' if p.failed != 1 else ''} (retry them on the Queue page)")
    parts.append(f"{b.scope or 'entities'}, started {age((p.at - b.started_at).total_seconds())} ago by "
                 f"{b.actor_name or 'system'}" + (f": {b.reason}" if b.reason else ""))
    return Panel(f"backfill-{b.pk}", headline, state, word, " · ".join(parts), p.done, p.total, p.failed)


def panels(found: list[Progress]) -> list[Panel]:
    return [panel(p) for p in found]


def lag_line(stats: LagStats) -> str:
    """The backfills' lag, in words, or "" when none of their entities was synced in the window."""
    if not stats.n:
        return ""
    return (f"Backfill lag over the last {duration(settings.FRESHNESS_WINDOW)}: p50 {duration(stats.p50)} · "
            f"p95 {duration(stats.p95)} over {stats.n:,} entities — how long after loading they reached "
            "search; reported apart from the streaming lag and the freshness targets.")


def version(found: list[Panel], lag: str) -> str:
    """Changes when what the panels show does (for the live regions' 204s)."""
    return hashlib.blake2b(repr(([tuple(vars(p).values()) for p in found], lag)).encode(), digest_size=8).hexdigest()
