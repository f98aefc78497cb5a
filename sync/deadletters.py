"""Dead letters grouped by what went wrong, so one fix is followed by one retry of that group.

An error's **fingerprint** is its text with the parts that differ from one entity to the next
taken out: entity and vector ids (`ThreatActor:apt29#0`), uuids, hex digests, timestamps,
versions and other numbers. Dead letters are grouped by fingerprint × label.

Every bulk action works on a **snapshot**: a `Selection` names either explicit event ids or a
filter (label, group, text in the error) together with the time the analyst looked (`as_of`);
a dead letter that died after that time is never part of it, though it matches the filter.
`select` builds one from what a caller was sent, by the rules the Queue page, the JSON API and
`manage.py dead_letters` share (each caller parses its own input and words its own errors).
Retrying and discarding go through `sync.queue.retry_dead` / `discard_dead`, which audit each
event. With SYNC_TRANSPORT=kafka the dead letters are the dead-letter topic's messages (each has
its row, which says where the message lies): a retry publishes them to their change topic again,
a discard drops them from this list (the topic keeps them until its retention ends).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache

from django.conf import settings
from django.db.models import Count, Max, Min
from django.utils import timezone

from sync import queue
from sync.models import SyncEvent
from sync.stores.base import StoreError

DEAD = SyncEvent.Status.DEAD
FINGERPRINT_LENGTH = 240
MAX_IDS = 10_000  # dead letters one action may name by id; more are chosen by a filter
MAX_EVENT_NUMBER = 2**63 - 1  # the largest row number the database holds
GROUP_KEY = re.compile(r"^[0-9a-f]{12}$")  # as group_key() makes them
_PATTERNS = [
    # Entity keys and vector ids: Label:uid, Label:uid#3 (uids are percent-encoded in vector ids).
    (re.compile(r"\b[A-Z][A-Za-z0-9_]*:[^\s,;'\"()<>\[\]{}]+"), "<entity>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"), "<time>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{12,}\b"), "<hex>"),
    (re.compile(r"\bv\d+\b"), "v<n>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
]


@lru_cache(maxsize=20_000)
def fingerprint(error: str) -> str:
    """The error's first line with ids, numbers and versions normalised out."""
    line = next((part.strip() for part in (error or "").splitlines() if part.strip()), "")
    if not line:
        return "(no error recorded)"
    for pattern, replacement in _PATTERNS:
        line = pattern.sub(replacement, line)
    return line.strip()[:FINGERPRINT_LENGTH]


@lru_cache(maxsize=4096)
def group_key(label: str, print_: str) -> str:
    """A short stable name for one fingerprint × label group (for URLs and commands)."""
    return hashlib.sha256(f"{label}\0{print_}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Selection:
    """Which dead letters an action applies to: `ids`, or those matching the filter (label,
    group, text within the error) that were already dead at `as_of`."""

    ids: tuple[int, ...] = ()
    label: str = ""
    group: str = ""
    text: str = ""
    as_of: datetime | None = None

    @property
    def by_ids(self) -> bool:
        return bool(self.ids)

    def frozen(self) -> Selection:
        """The same filter, bounded to what is dead now (a snapshot)."""
        return self if self.ids or self.as_of else replace(self, as_of=timezone.now())

    def as_command(self, action: str) -> str:
        """The equivalent `manage.py dead_letters` command line."""
        parts = ["manage.py", "dead_letters", action]
        if self.ids:
            parts += ["--ids", ",".join(str(i) for i in self.ids)]
        else:
            if self.group:
                parts += ["--group", self.group]
            if self.label:
                parts += ["--label", _quote(self.label)]
            if self.text:
                parts += ["--text", _quote(self.text)]
            if not (self.group or self.label or self.text):
                parts.append("--all")
            if self.as_of:
                parts += ["--before", self.as_of.isoformat(timespec="microseconds")]
        return " ".join(parts)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


class BadSelection(ValueError):
    """No action can take this selection; the message says why and `field` names the input at
    fault (None: inputs that cannot go together)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Wording:
    """What a caller tells its user to send, in the terms of its input (form fields, JSON, flags)."""

    both: str  # ids and a filter, given together
    nothing: str  # neither, and not all either


def select(ids: Iterable[int] = (), *, label: str = "", group: str = "", text: str = "",
           as_of: datetime | None = None, everything: bool = False, action: bool = False,
           now_by_default: bool = False, wording: Wording) -> Selection:
    """The Selection a caller's input names, by the rules the Queue page, the API and the command
    share: ids sorted, each once, at most MAX_IDS; a group is a key as group_key() makes it; label
    and text trimmed. For an action: ids or a filter, not both, and no filter at all only when the
    user said all (`everything`). `as_of` bounds a filter: with `now_by_default` (the API, the
    command) a filter without one is bounded by now and ids carry none; otherwise (the Queue page,
    whose actions apply to what it showed) it is kept as sent and an action on a filter needs it.
    Raises BadSelection."""
    ids = tuple(sorted(set(ids)))
    if len(ids) > MAX_IDS:
        raise BadSelection(f"at most {MAX_IDS} dead letters can be selected by id; use a filter instead", "ids")
    if ids and not 0 < ids[0] <= ids[-1] <= MAX_EVENT_NUMBER:
        raise BadSelection(f"ids are event numbers, from 1 to {MAX_EVENT_NUMBER}", "ids")
    group = group.strip()
    if group and not GROUP_KEY.match(group):
        raise BadSelection("group must be a 12-character group key from the queue page", "group")
    label, text = label.strip()[:64], text.strip()[:200]
    filtered = bool(group or label or text)
    if action and ids and filtered:
        raise BadSelection(wording.both)
    if action and not ids and not filtered and not everything:
        raise BadSelection(wording.nothing)
    if now_by_default:
        as_of = None if ids else as_of or timezone.now()
    elif action and not ids and as_of is None:
        raise BadSelection("as_of is missing: the action applies to the dead letters shown at a time", "as_of")
    return Selection(ids=ids, label=label, group=group, text=text, as_of=as_of)


@dataclass
class Group:
    key: str
    label: str
    fingerprint: str
    count: int = 0
    first_failure: datetime | None = None
    last_failure: datetime | None = None
    example: str = ""  # one full error text of the group
    errors: list[str] = field(default_factory=list, repr=False)


def _dead(selection: Selection):
    rows = SyncEvent.objects.filter(status=DEAD)
    if selection.label:
        rows = rows.filter(label=selection.label)
    if selection.text:
        rows = rows.filter(last_error__icontains=selection.text)
    if selection.as_of:
        rows = rows.filter(finished_at__lte=selection.as_of)
    return rows


def groups(selection: Selection = Selection()) -> list[Group]:
    """Dead letters by fingerprint × label, the largest group first.

    The database groups identical (label, error) pairs; only the distinct error texts are
    fingerprinted here (cached), so repeated errors cost one row each.
    """
    found: dict[str, Group] = {}
    rows = (_dead(selection).values("label", "last_error")
            .annotate(n=Count("id"), first=Min("finished_at"), last=Max("finished_at")).order_by())
    for row in rows.iterator(chunk_size=2000):
        print_ = fingerprint(row["last_error"])
        key = group_key(row["label"], print_)
        if selection.group and key != selection.group:
            continue
        group = found.get(key)
        if group is None:
            group = found[key] = Group(key, row["label"], print_, example=row["last_error"])
        group.count += row["n"]
        group.first_failure = _earliest(group.first_failure, row["first"])
        group.last_failure = _latest(group.last_failure, row["last"])
        group.errors.append(row["last_error"])
    return sorted(found.values(), key=lambda g: (-g.count, g.label, g.fingerprint))


def _earliest(a, b):
    return b if a is None or (b is not None and b < a) else a


def _latest(a, b):
    return b if a is None or (b is not None and b > a) else a


def matching_ids(selection: Selection) -> list[int]:
    """The ids of the dead letters the selection means, oldest death first."""
    if selection.by_ids:
        return list(SyncEvent.objects.filter(status=DEAD, id__in=list(selection.ids))
                    .order_by("finished_at", "id").values_list("id", flat=True))
    if selection.group:
        return group_scan(selection)[1]
    return list(_dead(selection).order_by("finished_at", "id").values_list("id", flat=True))


def group_scan(selection: Selection) -> tuple[Group | None, list[int]]:
    """A group's dead letters in one pass: the group (None when it has none) and their ids, oldest
    death first. The fingerprint is not stored, so the group's rows are found by reading every dead
    letter's error once (fingerprints and keys are cached per distinct text)."""
    rows = _dead(selection).order_by("finished_at", "id").values_list("id", "label", "last_error")
    group, ids = None, []
    for i, label, error in rows.iterator(chunk_size=5000):
        print_ = fingerprint(error)
        if group_key(label, print_) != selection.group:
            continue
        if group is None:
            group = Group(selection.group, label, print_, example=error)
        ids.append(i)
    if group is None:
        return None, []
    group.count = len(ids)
    times = dict(SyncEvent.objects.filter(id__in={ids[0], ids[-1]}).values_list("id", "finished_at"))
    group.first_failure, group.last_failure = times[ids[0]], times[ids[-1]]
    return group, ids


def count(selection: Selection) -> int:
    if selection.by_ids or selection.group:
        return len(matching_ids(selection))
    return _dead(selection).count()


def members(selection: Selection, limit: int = 100, ids: list[int] | None = None) -> tuple[list[SyncEvent], int]:
    """Up to `limit` dead letters of the selection (newest death first), and how many there are
    (`ids`: the selection's ids when the caller has them already)."""
    ids = matching_ids(selection) if ids is None else ids
    shown = ids[::-1][:limit]
    events = list(SyncEvent.objects.filter(id__in=shown).only(
        "id", "label", "uid", "priority", "attempts", "last_error", "created_at", "finished_at", "source"))
    events.sort(key=lambda e: (e.finished_at or e.created_at, e.id), reverse=True)
    return events, len(ids)


def describe(selection: Selection, n: int, group: Group | None = None) -> str:
    """In words, for a confirmation: '37 dead letters from ThreatActor with error "timeout <n>"'
    (`group`: the selection's group when the caller has it already)."""
    what = f"{n} dead letter{'s' if n != 1 else ''}"
    if selection.by_ids:
        return what + (" you selected" if n != 1 else "")
    if selection.group:
        group = group or group_scan(selection)[0]
        if group:
            return f"{what} from {group.label} with the error “{group.fingerprint}”"
    if selection.label:
        what += f" from {selection.label}"
    if selection.text:
        what += f" whose error contains “{selection.text}”"
    if not (selection.label or selection.text or selection.group):
        what = "all " + what
    return what


@dataclass(frozen=True)
class Outcome:
    action: str
    asked: int
    done: int

    @property
    def skipped(self) -> int:
        """Dead letters of the snapshot someone else retried or discarded meanwhile."""
        return self.asked - self.done


def _chunks(ids: list[int], size: int = 500) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def retried_to() -> str:
    """Where retried dead letters went, in words."""
    return "re-published to their Kafka topic" if settings.SYNC_TRANSPORT == "kafka" else "queued again"


class NotRetried(Exception):
    """The transport did not take the retried dead letters (Kafka unreachable); `done` of them
    had been retried before it failed, the rest are still dead letters."""

    def __init__(self, message: str, done: int):
        super().__init__(message)
        self.done = done


def retry(selection: Selection, actor) -> Outcome:
    """Put the selection's dead letters back in the queue, or publish them to Kafka again (each
    audited by queue.retry_dead). Raises NotRetried when Kafka does not acknowledge them."""
    ids = matching_ids(selection.frozen())
    done = 0
    for chunk in _chunks(ids):
        try:
            done += queue.retry_dead(chunk, actor)
        except StoreError as exc:
            raise NotRetried(f"{done} of {len(ids)} dead letters were retried, then: {exc}; the rest are still "
                             "dead letters, retry them once the broker answers", done) from exc
    return Outcome("retry", len(ids), done)


def discard(selection: Selection, actor, note: str = "") -> Outcome:
    """Drop the selection's dead letters on purpose (each audited by queue.discard_dead)."""
    ids = matching_ids(selection.frozen())
    done = sum(queue.discard_dead(chunk, actor, note=note) for chunk in _chunks(ids))
    return Outcome("discard", len(ids), done)
