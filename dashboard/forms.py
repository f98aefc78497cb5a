"""Parsing what the pages send: bad input is a clear 400, never a guess."""

from __future__ import annotations

from datetime import datetime

from nightingale import times
from sync import deadletters
from sync.deadletters import Selection

DEAD_LETTER_WORDING = deadletters.Wording(
    both="choose dead letters either by id or by filter, not both",
    nothing="nothing selected: pick dead letters, a group, a filter, or scope=all")


class BadRequest(ValueError):
    """The request cannot be acted upon; the message says why, in the user's terms."""


def parse_time(value: str, name: str) -> datetime | None:
    """nightingale.times.parse_time, refused as a BadRequest."""
    try:
        return times.parse_time(value, name)
    except times.BadTime as exc:
        raise BadRequest(str(exc)) from None


def dead_letter_selection(data, *, for_action: bool = False) -> Selection:
    """A Selection from a query string or form: ids=… (repeatable or comma-separated), or the
    filter label / group / text with as_of (sync.deadletters.select checks them). An action on
    no filter at all must say scope=all."""
    raw_ids = [part for value in data.getlist("ids") for part in value.split(",") if part.strip()]
    try:
        ids = [int(part) for part in raw_ids]
    except ValueError:
        raise BadRequest("ids must be event numbers") from None
    try:
        return deadletters.select(ids, label=data.get("label", ""), group=data.get("group", ""),
                                  text=data.get("text", ""), as_of=parse_time(data.get("as_of", "").strip(), "as_of"),
                                  everything=data.get("scope") == "all", action=for_action,
                                  wording=DEAD_LETTER_WORDING)
    except deadletters.BadSelection as exc:
        raise BadRequest(str(exc)) from None


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


def conflict_filter(data, *, for_action: bool = False):
    """A conflict Filter from a query string or form; unknown values are a 400, not ignored."""
    from sync.conflicts.review import AGES, SORTS, Filter
    from sync.models import Conflict

    kind = data.get("kind", "").strip()
    if kind and kind not in Conflict.Kind.values:
        raise BadRequest(f"kind must be one of {', '.join(Conflict.Kind.values)}")
    status = data.get("status", "").strip() or Conflict.Status.OPEN
    if status != "all" and status not in Conflict.Status.values:
        raise BadRequest(f"status must be all or one of {', '.join(Conflict.Status.values)}")
    age = data.get("age", "").strip()
    if age and age not in AGES:
        raise BadRequest(f"age must be one of {', '.join(AGES)}")
    sort = data.get("sort", "").strip() or "oldest"
    if sort not in SORTS:
        raise BadRequest(f"sort must be one of {', '.join(SORTS)}")
    selection = Filter(kind=kind, status="" if status == "all" else status, label=data.get("label", "").strip()[:64],
                       rule=data.get("rule", "").strip()[:64], age=age, field=data.get("field", "").strip()[:64],
                       graph_source=data.get("graph_source", "").strip()[:200],
                       other_source=data.get("other_source", "").strip()[:200],
                       as_of=parse_time(data.get("as_of", "").strip(), "as_of"), sort=sort)
    if for_action and selection.as_of is None:
        raise BadRequest("as_of is missing: a bulk action applies to the conflicts shown at a time")
    return selection


def conflict_decision(data, conflict):
    """The conflict page's form: choice-<field> (left/right/proposal/edit), edit-<field>, the
    version the analyst saw, the graph values seen (JSON) and the note. A field the conflict does
    not have, a choice that is not one of the four or a missing version is a 400."""
    import json

    from sync.conflicts.resolve import Decision
    from sync.conflicts.review import SIDES

    fields = set(conflict.fields)
    choices, edits = {}, {}
    for key in data:
        for prefix, into in (("choice-", choices), ("edit-", edits)):
            if key.startswith(prefix):
                name = key[len(prefix):]
                if name not in fields:
                    raise BadRequest(f"{name[:64]!r} is not a field of this conflict "
                                     f"(its fields: {', '.join(sorted(fields))})")
                into[name] = data.get(key, "")
    bad = sorted(name for name, side in choices.items() if side not in SIDES)
    if bad:
        raise BadRequest(f"{', '.join(bad)}: choose left, right, proposal or edit")
    raw_version = data.get("version", "").strip()
    try:
        version = int(raw_version) if raw_version not in ("", "none") else None
    except ValueError:
        raise BadRequest("version must be the entity version shown on the page") from None
    if raw_version == "":
        raise BadRequest("version is missing: resolve from the conflict page, which says which version it shows")
    try:
        seen = json.loads(data.get("seen") or "null")
    except ValueError:
        raise BadRequest("seen must be the JSON the conflict page sent") from None
    return Decision(choices, edits, version, data.get("note", "").strip()[:2000],
                    seen if isinstance(seen, dict) else None)

def audit_filter(data):
    """The audit page's filter from its query string (sync.audit.AuditFilter)."""
    from sync.audit import AuditFilter

    since = parse_time(data.get("since", "").strip(), "since")
    until = parse_time(data.get("until", "").strip(), "until")
    if since and until and since > until:
        raise BadRequest("since must be before until")
    return AuditFilter(user=data.get("user", "").strip()[:150], action=data.get("action", "").strip()[:64],
                       target=data.get("target", "").strip()[:1200], since=since, until=until)
