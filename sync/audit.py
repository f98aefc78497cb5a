"""The audit trail as people read it: filtered, paged by keyset, exported as CSV.

Entries are written by the engine calls that act (`AuditEntry.record`) and never changed after:
no page, form, command or admin view edits or deletes one (sync/admin.py, `AuditEntry.save`).

Pages are **keyset** pages over (at, id), newest first: a page is "the 50 entries before this
(at, id)" (or after it, going back towards the newest), so page 4,000 costs what page 1 costs,
and an entry written while someone reads does not shift the pages they are on. The count shown
is bounded (`COUNT_LIMIT`): "more than 10,000" is all a reader needs to know to narrow a filter.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q

from nightingale import times
from sync.models import TARGET_PREFIX, AuditEntry, TargetHead
from sync.policy import shown_properties

PAGE_SIZE = 50
TARGET_HEAD = TARGET_PREFIX  # how much of a target the target index holds (audit_target_prefix)


COUNT_LIMIT = 10_000
# What each action records (the vocabulary of the filter; other actions are shown as they come).
ACTIONS = {
    "conflict.resolve": "an analyst resolved a conflict",
    "conflict.auto_resolve": "a rule resolved a conflict",
    "conflict.dismiss": "an analyst dismissed a conflict",
    "resync": "an entity or a label was queued for a fresh sync",
    "dead_letter.retry": "a dead letter went back to the queue",
    "dead_letter.discard": "a dead letter was dropped on purpose",
    "reconcile.start": "someone started a reconciliation",
    "alert.acknowledge": "an analyst acknowledged an alert",
    "user.create": "a user was created",
    "user.role": "a user's role (groups) changed",
    "user.flags": "a user became or stopped being a superuser, staff or active",
    "user.permissions": "a user's own permissions changed",
    "user.delete": "a user was deleted",
    "api_token.create": "an API token was issued",
    "api_token.revoke": "an API token was revoked",
    "ingest_token.create": "an ingest token was issued, bound to its sources and labels",
    "ingest_token.revoke": "an ingest token was revoked",
    "ingest_token.denied": "an ingest request claimed a source or label its token is not bound to",
    "access.denied": "a request was refused for want of a role",
    "task.refused": "the task cluster refused a task that is not one of the project's",
}
# The actions whose before/after hold a node's property values: people read those through the
# label's display allow-list (`shown_values`); the other actions record the engine's own words.
NODE_VALUE_ACTIONS = frozenset({"conflict.resolve", "conflict.auto_resolve"})
CSV_COLUMNS = ("id", "at", "user", "action", "target", "before", "after", "note")
# A spreadsheet reads a cell starting with one of these as a formula (CSV injection, OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class BadAuditFilter(ValueError):
    """An audit log filter or cursor that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class AuditFilter:
    user: str = ""  # the actor's name, exactly (users, or "command", "rules", "system")
    action: str = ""  # exactly, e.g. conflict.resolve; "conflict." for every conflict action
    target: str = ""  # the target starts with this: "ThreatActor:" or "ThreatActor:apt29"
    since: datetime | None = None
    until: datetime | None = None

    @property
    def active(self) -> bool:
        return bool(self.user or self.action or self.target or self.since or self.until)

    def entries(self):
        rows = AuditEntry.objects.all()
        if self.user:
            rows = rows.filter(actor_name=self.user)
        if self.action.endswith("."):
            rows = rows.filter(**_prefix("action", self.action))
        elif self.action:
            rows = rows.filter(action=self.action)
        if self.target and len(self.target) <= TARGET_HEAD:
            # On the indexed expression (sync.models.AuditEntry's audit_target_prefix).
            rows = rows.annotate(target_head=TargetHead("target")).filter(
                **_prefix("target_head", self.target))
        elif self.target:
            rows = rows.filter(**_prefix("target", self.target))
        if self.since:
            rows = rows.filter(at__gte=self.since)
        if self.until:
            rows = rows.filter(at__lte=self.until)
        return rows


def _prefix(field: str, value: str) -> dict:
    """`field` starts with `value`, case-sensitively, as a range an index can answer (a LIKE
    is case-insensitive on SQLite and cannot use the index)."""
    return {f"{field}__gte": value, f"{field}__lt": value + "\U0010ffff"}


@dataclass(frozen=True)
class Cursor:
    at: datetime
    id: int

    def __str__(self) -> str:
        return f"{self.at.isoformat(timespec='microseconds')}_{self.id}"

    @classmethod
    def parse(cls, value: str, name: str) -> Cursor | None:
        if not value:
            return None
        at, _, number = value.rpartition("_")
        try:
            when, row = times.parse_time(at, name), int(number)
        except ValueError:  # times.BadTime is one: the one reader of times, bounded
            when = row = None
        if when is None or row is None or not 0 <= row < 2**63:
            raise BadAuditFilter(f"{name} must be a page link from the audit page, got {value[:60]!r}")
        return cls(when, row)


@dataclass
class Page:
    entries: list[AuditEntry]
    older: Cursor | None  # the cursor of the next (older) page, if there is one
    newer: Cursor | None  # the cursor of the previous (newer) page, if this is not the first
    count: int  # entries matching the filter, up to COUNT_LIMIT
    count_capped: bool


def page(where: AuditFilter = AuditFilter(), *, before: Cursor | None = None, after: Cursor | None = None,
         size: int = PAGE_SIZE) -> Page:
    """One page of entries newest first: the `size` entries before `before` (older), or after
    `after` (newer), or the newest."""
    rows = where.entries().select_related(None)
    if after is not None:
        found = list(rows.filter(Q(at__gt=after.at) | Q(at=after.at, id__gt=after.id))
                     .order_by("at", "id")[:size + 1])
        more_newer = len(found) > size
        entries = found[:size][::-1]
        newer = _cursor(entries[0]) if more_newer and entries else None
        older = _cursor(entries[-1]) if entries else after
    else:
        if before is not None:
            rows = rows.filter(Q(at__lt=before.at) | Q(at=before.at, id__lt=before.id))
        found = list(rows.order_by("-at", "-id")[:size + 1])
        entries = found[:size]
        older = _cursor(entries[-1]) if len(found) > size else None
        newer = _cursor(entries[0]) if before is not None and entries else None
    count = where.entries().order_by()[:COUNT_LIMIT + 1].count()
    return Page(entries, older, newer, min(count, COUNT_LIMIT), count > COUNT_LIMIT)


def _cursor(entry: AuditEntry) -> Cursor:
    return Cursor(entry.at, entry.id)


def known_actions() -> list[str]:
    """The actions to offer in the filter: the vocabulary above (entries of other actions can
    still be filtered by typing their name)."""
    return sorted(ACTIONS)


def neutralise(value: str) -> str:
    """A cell a spreadsheet will show as text, never run as a formula."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return neutralise(str(value))


class _Echo:
    """A file-like object whose write returns the line, so csv.writer can feed a stream."""

    def write(self, value: str) -> str:
        return value


def csv_rows(where: AuditFilter, *, chunk: int = 2000) -> Iterator[str]:
    """Every entry matching the filter as CSV lines (header first), newest first, read in
    keyset chunks so the export never holds the whole trail in memory."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    fields = ("id", "at", "actor_name", "action", "target", "before", "after", "note")
    cursor = None
    while True:
        rows = where.entries()
        if cursor is not None:
            rows = rows.filter(Q(at__lt=cursor.at) | Q(at=cursor.at, id__lt=cursor.id))
        batch = list(rows.order_by("-at", "-id").values_list(*fields)[:chunk])
        for row in batch:
            at_id, at, user, action, target, before, after, note = row
            shown = (at_id, at, user, action, target, shown_values(action, target, before),
                     shown_values(action, target, after), note)
            yield writer.writerow([_cell(value) for value in shown])
        if len(batch) < chunk:
            return
        cursor = Cursor(batch[-1][1], batch[-1][0])


def export_name(where: AuditFilter, now: datetime) -> str:
    return f"audit-{now:%Y%m%d-%H%M%S}{'-filtered' if where.active else ''}.csv"


def shown_values(action: str, target: str, values):
    """An entry's before or after as people may read it (the page, the CSV export, the API, an
    entity's timeline): a node's values outside its label's display allow-list are withheld by
    policy (sync.policy.display), as on the entity page."""
    if action not in NODE_VALUE_ACTIONS or not isinstance(values, dict):
        return values
    return shown_properties(target.partition(":")[0], values)


def as_json(entry: AuditEntry) -> dict:
    return {"id": entry.id, "at": entry.at.isoformat(), "user": entry.actor_name, "action": entry.action,
            "target": entry.target, "before": shown_values(entry.action, entry.target, entry.before),
            "after": shown_values(entry.action, entry.target, entry.after), "note": entry.note}
