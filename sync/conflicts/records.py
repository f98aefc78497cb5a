"""Conflicts: how they are stored when the write path or reconciliation raises them.

Applying an analyst's decision is `sync.conflicts.resolve`'s work: this module only records.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from sync.conflicts.rules import Proposal, Side
from sync.models import AuditEntry, Conflict, ReconcileRun, SyncRecord
from sync.stores.base import Entity

log = logging.getLogger(__name__)

Status = Conflict.Status
STORE_KINDS = (Conflict.Kind.VECTOR_AHEAD,)


class ConflictError(ValueError):
    """The resolution asked for is not possible as given (or the conflict cannot be stored)."""


def open_conflict(kind: str, label: str, uid: str, *, graph_version: int | None, graph_side: dict,
                  other_side: dict, graph_meta: Side | None = None, other_meta: Side | None = None,
                  proposal: Proposal | None = None, run: ReconcileRun | None = None,
                  explanation: str = "", with_created: bool = False):
    """Open a conflict, or refresh the one already open for this entity and kind. Returns the
    conflict (with `with_created`, a (conflict, created) pair). The entity's sync record says
    `conflict` while one is open."""
    fields = {
        "graph_version": graph_version,
        "graph_side": _jsonable(graph_side),
        "other_side": _jsonable(other_side),
        "sources": {"graph": graph_meta.describe() if graph_meta else {},
                    "other": other_meta.describe() if other_meta else {}},
        "proposal": _jsonable(proposal.values) if proposal else {},
        "rule": proposal.rule if proposal else "",
        "explanation": explanation or (
            proposal.explanation + ("; ask an analyst: " + "; ".join(proposal.reasons)
                                    if proposal.reasons else "") if proposal else ""),
        "reconcile_run": run,
    }
    for _ in range(3):
        try:
            with transaction.atomic():
                existing = (Conflict.objects.select_for_update()
                            .filter(label=label, uid=uid, kind=kind, status=Status.OPEN).first())
                if existing:
                    for name, value in fields.items():
                        setattr(existing, name, value)
                    existing.save()
                    return (existing, False) if with_created else existing
                conflict = Conflict.objects.create(kind=kind, label=label, uid=uid, **fields)
                SyncRecord.objects.filter(label=label, uid=uid, status=SyncRecord.Status.IN_SYNC).update(
                    status=SyncRecord.Status.CONFLICT)
                return (conflict, True) if with_created else conflict
        except IntegrityError:
            continue  # opened concurrently: the next round refreshes that one
    raise ConflictError(f"could not open a {kind} conflict on {label}:{uid}")


def withdraw(opened: list[Conflict]) -> None:
    """Conflicts opened for a write that did not happen after all: nothing is held back."""
    if opened:
        Conflict.objects.filter(pk__in=[c.pk for c in opened], status=Status.OPEN).delete()
        for conflict in opened:
            closed(conflict.label, conflict.uid)


def move_to_version(opened: list[Conflict], version: int) -> None:
    """The write that held these values back is in the graph: its version is the one shown. (The
    held-back fields kept their values, so the graph side stands as recorded.)"""
    if opened:
        Conflict.objects.filter(pk__in=[c.pk for c in opened], status=Status.OPEN).update(graph_version=version)


def closed(label: str, uid: str) -> None:
    """A conflict on the entity closed: its record says in_sync again once none is open."""
    if not Conflict.objects.filter(label=label, uid=uid, status=Status.OPEN).exists():
        SyncRecord.objects.filter(label=label, uid=uid, status=SyncRecord.Status.CONFLICT).update(
            status=SyncRecord.Status.IN_SYNC)


def record_auto_resolved(kind: str, entity: Entity, graph: Side, incoming: Side,
                         proposal: Proposal) -> Conflict:
    conflict = Conflict.objects.create(
        kind=kind, label=entity.label, uid=entity.uid, status=Status.AUTO_RESOLVED,
        graph_version=entity.version, graph_side=_jsonable(dict(graph.values)),
        other_side=_jsonable(dict(incoming.values)),
        sources={"graph": graph.describe(), "other": incoming.describe()},
        proposal=_jsonable(proposal.values), rule=proposal.rule, explanation=proposal.explanation,
        resolution="merged", resolved_values=_jsonable(proposal.values), resolved_at=timezone.now(),
    )
    AuditEntry.record("rules", "conflict.auto_resolve", f"{entity.label}:{entity.uid}",
                      before=conflict.graph_side, after=conflict.resolved_values,
                      note=f"{proposal.rule}: {proposal.explanation}")
    return conflict


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
