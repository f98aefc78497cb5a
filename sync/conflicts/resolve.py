"""Applying an analyst's (or a bulk action's) decision to an open conflict: `resolve` and
`dismiss`, the conflict page's per-field `Decision` turned into one `resolve` call (`decide`), and
bulk actions over a filtered snapshot that still resolve (and audit) each conflict one by one.

A resolution is written to Neo4j as a new version and reaches the vector store through the
normal path. It is idempotent (a resolved conflict is never applied again), refused when the
entity changed since the analyst saw it (the conflict is refreshed so the analyst sees the new
state), and audited — whole or not at all, whatever interrupts it (`resolve` says how).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from sync import ids
from sync.conflicts.records import STORE_KINDS, ConflictError, _jsonable, closed
from sync.conflicts.review import BULK_ACTIONS, MAX_BULK, SIDES, Filter, bulk_ids, check_edit, parse_edit
from sync.models import AuditEntry, Conflict
from sync.policy import policy_for
from sync.stores import graph_store, vector_store
from sync.stores.base import Entity, VersionConflict
from sync.writes import enqueue_entity, write_entity

log = logging.getLogger(__name__)

Status = Conflict.Status
CHOICES = ("graph", "other", "merged", "fields")


class StaleConflict(ConflictError):
    """The entity changed since the analyst looked; the conflict now shows the new state."""


@dataclass
class Resolution:
    conflict: Conflict
    changed: bool
    message: str
    version: int | None = None


def resolve(conflict_id: int, *, choice: str, actor, note: str = "",
            field_choices: dict[str, str] | None = None, edits: dict[str, Any] | None = None,
            seen_version: int | None = None) -> Resolution:
    """Apply an analyst's (or a rule's) decision to an open conflict.

    Whatever interrupts it, a decision is either whole — the graph written, the conflict
    resolved, the audit entry made — or not made at all (the conflict open, the graph as it
    was). The graph is written first, guarded by the version the analyst saw (a concurrent write,
    another resolution's included, makes this one stale); then the conflict is marked resolved
    and audited in one database transaction (`_record`). Until that transaction commits, any
    exception or interruption (SystemExit, KeyboardInterrupt) puts the node back as it was
    (`_undo`, the saga's compensation) before it goes on.
    """
    if choice not in CHOICES:
        raise ConflictError(f"choose one of {', '.join(CHOICES)}")
    conflict = Conflict.objects.get(pk=conflict_id)
    if conflict.kind in STORE_KINDS and choice != "graph":
        raise ConflictError("the graph is the source of truth for a store divergence: keep the graph "
                            "(the vector is rebuilt from it) or dismiss")
    if conflict.status != Status.OPEN:
        return _already(conflict)
    entity = graph_store().get_entities([(conflict.label, conflict.uid)]).get((conflict.label, conflict.uid))
    shown = seen_version if seen_version is not None else conflict.graph_version
    if entity is None or (shown is not None and entity.version != shown):
        _refresh(conflict, entity)
        now = f"now at version {entity.version}" if entity else "now deleted"
        raise StaleConflict(f"{conflict.label}:{conflict.uid} changed since it was shown "
                            f"(version {shown}, {now}); review the new state before resolving")
    values = _chosen_values(conflict, choice, field_choices or {}, edits or {})
    username = actor.get_username() if getattr(actor, "pk", None) else str(actor)
    changes = {k: v for k, v in values.items() if entity.properties.get(k) != v}
    source = f"analyst:{username}"
    version = entity.version
    try:
        if conflict.kind in STORE_KINDS:
            # The graph is the truth: drop the divergent vectors (the version guard would keep a
            # vector that is ahead) and let the normal path rebuild them.
            _drop_vectors(conflict.label, conflict.uid)
        if changes:
            written = write_entity(conflict.label, conflict.uid, changes, source=source,
                                   expected_version=entity.version, actor=username, apply_rules=False)
            version = written.entity.version
        elif conflict.kind in STORE_KINDS:
            enqueue_entity(entity, source="resolution")
        recorded = _record(conflict, choice=choice, values=values, actor=actor, note=note)
    except BaseException as exc:
        if changes:
            _undo(entity, source)
        if isinstance(exc, Exception):  # not for an interruption: it asked to stop
            _refresh(conflict, graph_store().get_entities([(conflict.label, conflict.uid)]).get(
                (conflict.label, conflict.uid)))
        if isinstance(exc, VersionConflict):
            raise StaleConflict(f"{conflict.label}:{conflict.uid} changed while resolving ({exc}); "
                                "review the new state") from exc
        raise
    if not recorded:  # closed by someone else while the graph was written: theirs stands
        if changes:
            _undo(entity, source)
        conflict.refresh_from_db()
        return _already(conflict)
    conflict.refresh_from_db()
    return Resolution(conflict, True, f"resolved: {choice}" + (f", now version {version}" if changes else ""),
                      version)


def _already(conflict: Conflict) -> Resolution:
    who = conflict.resolver.get_username() if conflict.resolver else "a rule"
    return Resolution(conflict, False, f"already {conflict.status.replace('_', ' ')} by {who}")


def _record(conflict: Conflict, *, choice: str, values: dict[str, Any], actor, note: str) -> bool:
    """The decision made: the conflict marked resolved and the audit entry, in one transaction
    (both or neither). False when the conflict was no longer open."""
    with transaction.atomic():
        claimed = Conflict.objects.filter(pk=conflict.pk, status=Status.OPEN).update(
            status=Status.RESOLVED, resolution=choice, resolved_values=_jsonable(values),
            resolver=actor if getattr(actor, "pk", None) else None, note=note, resolved_at=timezone.now())
        if not claimed:
            return False
        closed(conflict.label, conflict.uid)
        AuditEntry.record(actor, "conflict.resolve", f"{conflict.label}:{conflict.uid}",
                          before={k: conflict.graph_side.get(k) for k in values} or conflict.graph_side,
                          after=_jsonable(values), note=note or f"chose {choice}")
    return True


def _undo(before: Entity, source: str) -> None:
    """Put the node back as it was before this resolution wrote it — if that write reached the
    graph (an interruption may come before or after Neo4j commits) and is still its latest change
    (else there is nothing of ours to undo). The vector follows through the queue."""
    graph = graph_store()
    try:
        now = graph.get_entities([before.key]).get(before.key)
        if now is None or now.version != before.version + 1 or now.properties.get("source") != source:
            return
        restored = graph.restore_entity(before, label=before.label, uid=before.uid, expected_version=now.version)
        if restored is not None and policy_for(before.label).synced:
            enqueue_entity(restored, source="compensation")
    except Exception as exc:  # noqa: BLE001 — what interrupted the resolution is what the caller sees
        log.critical("a resolution of %s:%s was interrupted after writing the graph, and putting the node "
                     "back failed (%s): the graph holds an unaudited version by %s", before.label, before.uid,
                     exc, source)


def dismiss(conflict_id: int, *, actor, note: str = "") -> Resolution:
    with transaction.atomic():  # dismissed and audited, or neither
        updated = Conflict.objects.filter(pk=conflict_id, status=Status.OPEN).update(
            status=Status.DISMISSED, resolver=actor if getattr(actor, "pk", None) else None, note=note,
            resolved_at=timezone.now())
        conflict = Conflict.objects.get(pk=conflict_id)
        if updated:
            closed(conflict.label, conflict.uid)
            AuditEntry.record(actor, "conflict.dismiss", f"{conflict.label}:{conflict.uid}", note=note)
    return Resolution(conflict, bool(updated), "dismissed" if updated else f"already {conflict.status}")


def _chosen_values(conflict: Conflict, choice: str, field_choices: dict[str, str],
                   edits: dict[str, Any]) -> dict[str, Any]:
    if choice == "graph":
        values = dict(conflict.graph_side)
    elif choice == "other":
        values = dict(conflict.other_side)
    elif choice == "merged":
        if not conflict.proposal:
            raise ConflictError("this conflict has no proposal to accept")
        values = dict(conflict.proposal)
    else:
        unknown = set(field_choices) - set(conflict.fields)
        if unknown or set(field_choices.values()) - {"graph", "other"}:
            raise ConflictError("choose graph or other for fields of this conflict only")
        missing = set(conflict.fields) - set(field_choices) - set(edits)
        if missing:
            raise ConflictError(f"choose a side for: {', '.join(sorted(missing))}")
        values = {name: (conflict.graph_side if side == "graph" else conflict.other_side).get(name)
                  for name, side in field_choices.items()}
    unknown_edits = set(edits) - set(conflict.fields)
    if unknown_edits:
        raise ConflictError(f"only this conflict's fields can be edited, not "
                            f"{', '.join(sorted(name[:64] for name in unknown_edits))}")
    values.update({name: check_edit(name, value, conflict.graph_side.get(name), conflict.other_side.get(name))
                   for name, value in edits.items()})
    return values


def _refresh(conflict: Conflict, entity: Entity | None) -> None:
    conflict.graph_version = entity.version if entity else None
    conflict.graph_side = _jsonable({k: entity.properties.get(k) for k in conflict.fields}) if entity else {}
    conflict.save(update_fields=["graph_version", "graph_side", "updated_at"])


def _drop_vectors(label: str, uid: str) -> int:
    store = vector_store()
    prefix = ids.entity_prefix(label, uid)
    doomed = [vid for vid in store.list_ids(prefix) if ids.belongs_to_entity(vid, label, uid)]
    return store.delete(doomed) if doomed else 0


# -- an analyst's per-field decision, as the conflict page sends it --------------------------------

@dataclass(frozen=True)
class Decision:
    """An analyst's decision on one conflict, as the conflict page sends it."""

    choices: dict[str, str]  # field -> left / right / proposal / edit
    edits: dict[str, str]
    version: int | None
    note: str
    seen: dict[str, Any] | None = None


def decide(conflict: Conflict, decision: Decision, actor) -> Resolution:
    """Turn per-field choices into one engine call: left/right are the engine's field choices,
    a proposal or an edit its edits. Refused (StaleConflict) when the entity moved."""
    if not decision.note.strip():
        raise ConflictError("a note is required: say why, for the audit trail")
    if conflict.kind in STORE_KINDS:
        return resolve(conflict.pk, choice="graph", actor=actor, note=decision.note,
                                  seen_version=decision.version)
    unknown = set(decision.choices) - set(conflict.fields)
    if unknown:
        raise ConflictError(f"{', '.join(sorted(unknown))}: not a field of this conflict")
    missing = set(conflict.fields) - set(decision.choices)
    if missing:
        raise ConflictError(f"choose left, right, proposal or edit for: {', '.join(sorted(missing))}")
    field_choices, edits = {}, {}
    for name, side in decision.choices.items():
        if side not in SIDES:
            raise ConflictError(f"{name}: choose left, right, proposal or edit")
        if side in ("left", "right"):
            field_choices[name] = "graph" if side == "left" else "other"
            continue
        if side == "proposal" and name not in (conflict.proposal or {}):
            raise ConflictError(f"the rule proposed nothing for {name}: choose left, right or edit")
        like = conflict.graph_side.get(name, conflict.other_side.get(name))
        edits[name] = conflict.proposal[name] if side == "proposal" else parse_edit(
            name, decision.edits.get(name, ""), like)
    return resolve(conflict.pk, choice="fields", actor=actor, note=decision.note,
                              field_choices=field_choices, edits=edits, seen_version=decision.version)


# -- bulk ----------------------------------------------------------------------------------------

@dataclass
class BulkOutcome:
    action: str
    asked: int
    done: int = 0
    stale: list[str] = field(default_factory=list)  # entity keys that changed: skipped, not forced
    refused: list[str] = field(default_factory=list)  # "key: why" (no proposal, a store divergence…)
    already: int = 0  # closed by someone else meanwhile

    def words(self) -> str:
        verb = "Dismissed" if self.action == "dismiss" else "Resolved"
        parts = [f"{verb} {self.done} of {self.asked} conflict{'s' if self.asked != 1 else ''}"]
        if self.stale:
            parts.append(f"skipped {len(self.stale)} whose entity changed since (review them one by one: "
                         + ", ".join(self.stale[:5]) + ("…" if len(self.stale) > 5 else "") + ")")
        if self.refused:
            parts.append(f"refused {len(self.refused)}: " + "; ".join(self.refused[:3])
                         + ("…" if len(self.refused) > 3 else ""))
        if self.already:
            parts.append(f"{self.already} were already closed by someone else")
        return "; ".join(parts)


def bulk(selection: Filter, action: str, actor, note: str) -> BulkOutcome:
    """Resolve or dismiss the open conflicts of a snapshot one by one, through the same engine
    calls as the conflict page: a stale one is skipped and reported, never forced."""
    if action not in BULK_ACTIONS:
        raise ConflictError(f"action must be one of {', '.join(BULK_ACTIONS)}")
    if not note.strip():
        raise ConflictError("a note is required: say why, for the audit trail")
    if selection.as_of is None:
        raise ConflictError("as_of is missing: a bulk action applies to the conflicts shown at a time")
    ids = bulk_ids(selection)
    if len(ids) > MAX_BULK:
        raise ConflictError(f"more than {MAX_BULK} conflicts match: narrow the filter (each one is a graph write)")
    outcome = BulkOutcome(action, len(ids))
    choice = BULK_ACTIONS[action][0]
    for pk in ids:
        if action == "dismiss":
            done = dismiss(pk, actor=actor, note=note)
        else:
            try:
                done = resolve(pk, choice=choice, actor=actor, note=note)
            except StaleConflict:
                conflict = Conflict.objects.only("label", "uid").get(pk=pk)
                outcome.stale.append(f"{conflict.label}:{conflict.uid}")
                continue
            except ConflictError as exc:
                conflict = Conflict.objects.only("label", "uid").get(pk=pk)
                outcome.refused.append(f"{conflict.label}:{conflict.uid}: {exc}")
                continue
        if done.changed:
            outcome.done += 1
        else:
            outcome.already += 1
    return outcome
