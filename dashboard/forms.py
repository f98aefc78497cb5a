"""Parsing what the pages send: bad input is a clear 400, never a guess."""

from __future__ import annotations

import re
from datetime import datetime

from django.utils import timezone

from sync.deadletters import Selection

GROUP = re.compile(r"^[0-9a-f]{12}$")
MAX_IDS = 10_000


class BadRequest(ValueError):
    """The request cannot be acted upon; the message says why, in the user's terms."""


def parse_time(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time, got {value[:40]!r}") from None
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, timezone.get_current_timezone())


def dead_letter_selection(data, *, for_action: bool = False) -> Selection:
    """A Selection from a query string or form: ids=… (repeatable or comma-separated), or the
    filter label / group / text with as_of. An action on no filter at all must say scope=all."""
    raw_ids = [part for value in data.getlist("ids") for part in value.split(",") if part.strip()]
    try:
        ids = tuple(sorted({int(part) for part in raw_ids}))
    except ValueError:
        raise BadRequest("ids must be event numbers") from None
    if len(ids) > MAX_IDS:
        raise BadRequest(f"at most {MAX_IDS} dead letters can be selected by id; use a filter instead")
    group = data.get("group", "").strip()
    if group and not GROUP.match(group):
        raise BadRequest("group must be a 12-character group key from the queue page")
    label = data.get("label", "").strip()[:64]
    text = data.get("text", "").strip()[:200]
    as_of = parse_time(data.get("as_of", "").strip(), "as_of")
    selection = Selection(ids=ids, label=label, group=group, text=text, as_of=as_of)
    if for_action:
        if ids and (group or label or text):
            raise BadRequest("choose dead letters either by id or by filter, not both")
        if not ids and not (group or label or text) and data.get("scope") != "all":
            raise BadRequest("nothing selected: pick dead letters, a group, a filter, or scope=all")
        if not ids and as_of is None:
            raise BadRequest("as_of is missing: the action applies to the dead letters shown at a time")
    return selection


def selection_params(selection: Selection, scope_all: bool = False) -> list[tuple[str, str]]:
    """The selection back as form fields (hidden inputs of a confirmation)."""
    params = [("ids", str(i)) for i in selection.ids]
    for name in ("label", "group", "text"):
        if getattr(selection, name):
            params.append((name, getattr(selection, name)))
    if selection.as_of:
        params.append(("as_of", selection.as_of.isoformat(timespec="microseconds")))
    if scope_all:
        params.append(("scope", "all"))
    return params


def audit_filter(data):
    """The audit page's filter from its query string (sync.audit.AuditFilter)."""
    from sync.audit import AuditFilter

    since = parse_time(data.get("since", "").strip(), "since")
    until = parse_time(data.get("until", "").strip(), "until")
    if since and until and since > until:
        raise BadRequest("since must be before until")
    return AuditFilter(user=data.get("user", "").strip()[:150], action=data.get("action", "").strip()[:64],
                       target=data.get("target", "").strip()[:1200], since=since, until=until)
