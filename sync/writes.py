"""Write paths into the graph (ingest API, importers, conflict resolutions).

Every write commits to Neo4j first, in one transaction (version + 1, server `updated_at`,
source, confidence). Then, per the label's policy:

- async write-through (the default): enqueue a sync event and return; the caller waits only for
  Neo4j, and a worker is kicked to apply the event soon.
- sync dual-write (critical types such as CISA KEV): embed and upsert in the same call, as a saga.
  If the vector write fails, the compensation puts the node back as it was (or deletes a node the
  write created) and the call raises — or, where the policy says `queue`, the graph write is kept
  and the vector is left to the queue. Every saga's steps and outcome are in `SagaLog`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from sync import conflicts, queue, rules
from sync.apply import apply_now
from sync.models import SagaLog
from sync.observe.metrics import SAGAS, SYNC_ERRORS
from sync.policy import WriteMode, policy_for
from sync.stores import graph_store
from sync.stores.base import Entity, StoreError, VersionConflict

log = logging.getLogger(__name__)


class SyncWriteError(Exception):
    """The write did not happen: the graph is as it was before the call."""

    def __init__(self, message: str, saga: SagaLog | None = None):
        super().__init__(message)
        self.saga = saga


class CompensationFailed(SyncWriteError):
    """Alert-worthy: the vector write failed AND the graph could not be put back.

    The graph holds the new version while the vector store does not; the saga log names the
    entity, and reconciliation (or a manual resync) will repair the vector side.
    """


@dataclass
class WriteOutcome:
    entity: Entity
    previous: Entity | None
    mode: str  # dual_write | write_through | graph_only
    saga: SagaLog | None = None
    vector_outcome: str = ""  # dual-write: upserted, metadata_only, ...; write-through: queued

    @property
    def created(self) -> bool:
        return self.previous is None


def write_entity(label: str, uid: str, properties: dict[str, Any], *, source: str,
                 confidence: float | None = None, expected_version: int | None = None,
                 actor: str = "system", apply_rules: bool = True) -> WriteOutcome:
    """Write one entity per its policy, settling disagreements on rule-governed fields first.

    A dispute a rule settles is written as the rule decided (and recorded as an auto-resolved
    conflict); one that needs an analyst keeps the graph's value and opens a conflict with the
    rule's proposal. `apply_rules=False` is for writes that are themselves resolutions.
    """
    for attempt in range(3):
        settled, pending, guard = dict(properties), [], expected_version
        if apply_rules and rules.GOVERNED.get(label):
            current = graph_store().get_entities([(label, uid)]).get((label, uid))
            if current is not None:
                settled, pending = _settle(current, settled, source, confidence)
                # Rules decided against this version: a concurrent write must not slip in between.
                guard = current.version if expected_version is None else expected_version
        for name in rules.GOVERNED.get(label, {}):
            if name in settled:  # whoever writes a governed value owns it, unless a rule said otherwise
                settled.setdefault(rules.provenance_key(name), source)
        try:
            outcome = _write(label, uid, settled, source=source, confidence=confidence,
                             expected_version=guard, actor=actor)
        except VersionConflict:
            if expected_version is not None or guard is None or attempt == 2:
                raise
            continue  # our own guard lost a race: read again and re-apply the rules
        for record in pending:
            record(outcome.entity)
        return outcome
    raise AssertionError("unreachable")


def _settle(current: Entity, incoming: dict[str, Any], source: str, confidence: float | None):
    """Apply the rule table to each disputed kind; returns the values to write and the conflicts
    to record once the write has its version."""
    pending = []
    props = current.properties
    governed = rules.GOVERNED.get(current.label, {})
    # Who sets each governed value this write carries: the caller, unless a rule decides below.
    origin = {name: source for name in incoming if name in governed}
    for kind, fields in rules.disputes(current.label, props, incoming, source).items():
        graph_side = rules.Side({f: props.get(f) for f in fields}, rules.provenance(props, fields[0]),
                                props.get("confidence"), current.updated_at)
        other = rules.Side({f: incoming[f] for f in fields}, source, confidence, None)
        proposal = rules.propose(kind, current.label, graph_side, other)
        if proposal.ask_analyst:
            for name in fields:
                incoming.pop(name)  # the graph keeps its value until an analyst decides
                origin.pop(name)
            pending.append(lambda entity, k=kind, g=graph_side, o=other, p=proposal: conflicts.open_conflict(
                k, entity.label, entity.uid, graph_version=entity.version, graph_side=dict(g.values),
                other_side=dict(o.values), graph_meta=g, other_meta=o, proposal=p))
            continue
        for name in fields:
            value = proposal.values.get(name)
            if value == props.get(name):
                incoming.pop(name)  # the graph's value stands, and so does its provenance
                origin.pop(name)
            else:
                incoming[name] = value
                origin[name] = source if value == other.values[name] else f"rule:{proposal.rule}"
        pending.append(lambda entity, k=kind, g=graph_side, o=other, p=proposal:
                       conflicts.record_auto_resolved(k, entity, g, o, p))
    incoming.update({rules.provenance_key(name): who for name, who in origin.items()})
    return incoming, pending


def _write(label, uid, properties, *, source, confidence, expected_version, actor) -> WriteOutcome:
    policy = policy_for(label)
    if policy.synced and policy.write_mode == WriteMode.DUAL_WRITE:
        return _dual_write(label, uid, properties, source=source, confidence=confidence,
                           expected_version=expected_version, actor=actor)
    previous, entity = graph_store().write_entity(
        label, uid, properties, expected_version=expected_version, source=source, confidence=confidence)
    if not policy.synced:
        return WriteOutcome(entity, previous, "graph_only")
    enqueue_entity(entity, source="write")
    return WriteOutcome(entity, previous, WriteMode.WRITE_THROUGH.value, vector_outcome="queued")


def enqueue_entity(entity: Entity, *, source: str) -> None:
    queue.enqueue(queue.Work(
        label=entity.label, uid=entity.uid, version=entity.version,
        priority=queue.priority_of(entity.label), changed_at=entity.updated_at, source=source,
    ))
    from sync.tasks import kick_drain

    kick_drain()


def _dual_write(label, uid, properties, *, source, confidence, expected_version, actor) -> WriteOutcome:
    graph = graph_store()
    saga = SagaLog.objects.create(label=label, uid=uid, actor=actor[:150])
    try:
        previous, entity = graph.write_entity(
            label, uid, properties, expected_version=expected_version, source=source, confidence=confidence)
    except Exception as exc:
        # Nothing was written, so there is nothing to undo; the saga records why it stopped.
        saga.step("graph_write", False, str(exc))
        _finish(saga, SagaLog.Status.ABORTED, error=f"graph write refused: {exc}")
        raise
    saga.previous_version = previous.version if previous else None
    saga.new_version = entity.version
    saga.step("graph_write", True, f"v{saga.previous_version or 0} -> v{entity.version}")
    try:
        outcome = apply_now(entity)
    except (StoreError, ValueError, OSError) as exc:
        saga.step("vector_write", False, f"{type(exc).__name__}: {exc}")
        SYNC_ERRORS.labels("dual_write").inc()
        return _after_vector_failure(saga, previous, entity, exc)
    saga.step("vector_write", True, outcome)
    _finish(saga, SagaLog.Status.COMMITTED)
    return WriteOutcome(entity, previous, WriteMode.DUAL_WRITE.value, saga, outcome)


def _after_vector_failure(saga: SagaLog, previous: Entity | None, entity: Entity, exc: Exception):
    if policy_for(entity.label).on_vector_failure == "queue":
        enqueue_entity(entity, source="write")
        saga.step("enqueue", True, "vector write left to the queue")
        _finish(saga, SagaLog.Status.DEFERRED, error=str(exc))
        return WriteOutcome(entity, previous, WriteMode.DUAL_WRITE.value, saga, "queued")
    try:
        graph_store().restore_entity(previous, label=entity.label, uid=entity.uid,
                                     expected_version=entity.version)
    except Exception as undo_error:  # noqa: BLE001 — every failure here must reach the saga log
        saga.step("compensate", False, f"{type(undo_error).__name__}: {undo_error}")
        _finish(saga, SagaLog.Status.COMPENSATION_FAILED,
                error=f"vector write failed ({exc}); restoring the graph failed too ({undo_error})")
        log.critical("dual-write of %s:%s left the graph at v%s without its vector: %s",
                     entity.label, entity.uid, entity.version, undo_error)
        raise CompensationFailed(
            f"{entity.label}:{entity.uid}: the vector write failed and the graph could not be "
            f"restored ({undo_error}); saga {saga.pk}", saga) from exc
    # The failed write may have reached the store after all (a timed-out request that landed):
    # the normal path now replaces whatever is there with the restored state, or deletes it.
    restored = graph_store().get_entities([entity.key]).get(entity.key)
    queue.enqueue(queue.Work(entity.label, entity.uid, operation="upsert" if restored else "delete",
                             version=restored.version if restored else entity.version + 1,
                             priority=queue.priority_of(entity.label), source="compensation"))
    saga.step("compensate", True, "node deleted" if previous is None
              else f"node content back to v{previous.version} (as v{restored.version if restored else '?'})")
    _finish(saga, SagaLog.Status.COMPENSATED, error=str(exc))
    raise SyncWriteError(
        f"{entity.label}:{entity.uid} was not written: the vector store failed ({exc}) and the "
        "graph change was undone", saga) from exc


def _finish(saga: SagaLog, status: str, error: str = "") -> None:
    saga.status = status
    saga.error = error[:5000]
    saga.finished_at = timezone.now()
    saga.save()
    SAGAS.labels(status).inc()
