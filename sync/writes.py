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
from datetime import timedelta
from typing import Any

from django.utils import timezone

from sync import queue
from sync.apply import apply_now
from sync.conflicts import records as conflicts
from sync.conflicts import rules
from sync.conflicts.settle import settle
from sync.models import SagaLog
from sync.observe.counters import SAGAS, SYNC_ERRORS
from sync.policy import WriteMode, policy_for
from sync.stores import graph_store
from sync.stores.base import Entity, StoreError, VersionConflict

log = logging.getLogger(__name__)


class SyncWriteError(Exception):
    """The write did not happen: the graph is as it was before the call.

    `retryable`: the cause was transient (a store unreachable or busy): trying again later may work.
    """

    def __init__(self, message: str, saga: SagaLog | None = None, retryable: bool = True):
        super().__init__(message)
        self.saga = saga
        self.retryable = retryable


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
                 actor: str = "system", apply_rules: bool = True, defer_vectors: bool = False) -> WriteOutcome:
    """Write one entity per its policy, settling disagreements on rule-governed fields first.

    A dispute a rule settles is written as the rule decided (and recorded as an auto-resolved
    conflict); one that needs an analyst keeps the graph's value and opens a conflict with the
    rule's proposal — stored before the graph write, so a crash between the two loses nothing
    an analyst must see. Where `confidence` is itself rule-governed (threat intelligence), the
    source's confidence is one of the disputed values. `apply_rules=False` is for writes that are
    themselves resolutions; `defer_vectors=True` queues the vectors of a dual-write label instead
    of writing them in the call (bulk feed imports).
    """
    governed = rules.GOVERNED.get(label, {})
    for attempt in range(3):
        settled, guard = dict(properties), expected_version
        write_confidence = confidence
        if "confidence" in governed and confidence is not None and "confidence" not in settled:
            settled["confidence"] = confidence  # disputed like any governed value, written as settled
            write_confidence = None
        held_back: list = []
        auto: list = []
        if apply_rules and governed:
            current = graph_store().get_entities([(label, uid)]).get((label, uid))
            if current is not None:
                settled, held_back, auto = settle(current, settled, source, confidence)
                # Rules decided against this version: a concurrent write must not slip in between.
                guard = current.version if expected_version is None else expected_version
        for name in governed:
            if name in settled:  # whoever writes a governed value owns it, unless a rule said otherwise
                settled.setdefault(rules.provenance_key(name), source)
        opened = [open_() for open_ in held_back]  # durable before the graph changes
        try:
            outcome = _write(label, uid, settled, source=source, confidence=write_confidence,
                             expected_version=guard, actor=actor, defer_vectors=defer_vectors)
        except BaseException as exc:
            conflicts.withdraw([c for c, created in opened if created])
            if isinstance(exc, VersionConflict) and expected_version is None and guard is not None and attempt < 2:
                continue  # our own guard lost a race: read again and re-apply the rules
            raise
        conflicts.move_to_version([c for c, _ in opened], outcome.entity.version)
        for record in auto:
            record(outcome.entity)
        return outcome
    raise AssertionError("unreachable")


def _write(label, uid, properties, *, source, confidence, expected_version, actor,
           defer_vectors=False) -> WriteOutcome:
    policy = policy_for(label)
    if policy.synced and policy.write_mode == WriteMode.DUAL_WRITE and not defer_vectors:
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
        outcome = apply_now(entity, worker=f"saga:{saga.pk}")
    except BaseException as exc:
        # Whatever failed — the store, the model, the database after the vector write, a bug, or
        # an interruption — the saga ends: compensated (or deferred), or compensation_failed.
        saga.step("vector_write", False, f"{type(exc).__name__}: {exc}")
        SYNC_ERRORS.labels("dual_write").inc()
        if not isinstance(exc, Exception):
            _interrupted(saga, previous, entity, exc)
            raise
        return _after_vector_failure(saga, previous, entity, exc)
    saga.step("vector_write", True, outcome)
    _finish(saga, SagaLog.Status.COMMITTED)
    return WriteOutcome(entity, previous, WriteMode.DUAL_WRITE.value, saga, outcome)


def _interrupted(saga: SagaLog, previous: Entity | None, entity: Entity, exc: BaseException) -> None:
    """Interrupted mid-saga (SystemExit, KeyboardInterrupt): compensate as for any failure and let
    the interruption go on."""
    try:
        _after_vector_failure(saga, previous, entity, exc)
    except SyncWriteError:
        pass  # recorded in the saga; the interruption is what the caller sees


def _after_vector_failure(saga: SagaLog, previous: Entity | None, entity: Entity, exc: Exception):
    retryable = isinstance(exc, StoreError | queue.EntityBusy) and getattr(exc, "retryable", True)
    if policy_for(entity.label).on_vector_failure == "queue":
        try:
            enqueue_entity(entity, source="write")
        except Exception as queue_error:  # noqa: BLE001 — then the graph write is undone instead
            saga.step("enqueue", False, f"{type(queue_error).__name__}: {queue_error}")
        else:
            saga.step("enqueue", True, "vector write left to the queue")
            _finish(saga, SagaLog.Status.DEFERRED, error=f"{type(exc).__name__}: {exc}")
            return WriteOutcome(entity, previous, WriteMode.DUAL_WRITE.value, saga, "queued")
    try:
        graph_store().restore_entity(previous, label=entity.label, uid=entity.uid,
                                     expected_version=entity.version)
    except Exception as undo_error:  # noqa: BLE001 — every failure here must reach the saga log
        saga.step("compensate", False, f"{type(undo_error).__name__}: {undo_error}")
        _finish(saga, SagaLog.Status.COMPENSATION_FAILED,
                error=f"vector write failed ({type(exc).__name__}: {exc}); restoring the graph failed too "
                      f"({type(undo_error).__name__}: {undo_error})")
        log.critical("dual-write of %s:%s left the graph at v%s without its vector: %s",
                     entity.label, entity.uid, entity.version, undo_error)
        raise CompensationFailed(
            f"{entity.label}:{entity.uid}: the vector write failed and the graph could not be "
            f"restored ({undo_error}); saga {saga.pk}", saga, retryable=False) from exc
    saga.step("compensate", True, "node deleted" if previous is None
              else f"node content back to v{previous.version} (as v{entity.version + 1})")
    # The failed write may have reached the store after all (a timed-out request that landed):
    # the normal path now replaces whatever is there with the restored state, or deletes it.
    try:
        queue.enqueue(queue.Work(entity.label, entity.uid, operation="upsert" if previous else "delete",
                                 version=entity.version + 1, priority=queue.priority_of(entity.label),
                                 source="compensation"))
    except Exception as queue_error:  # noqa: BLE001 — the graph is restored; reconciliation repairs the vector
        saga.step("enqueue", False, f"the vector repair could not be queued ({queue_error}); "
                                    "reconciliation will find and repair it")
    _finish(saga, SagaLog.Status.COMPENSATED, error=f"{type(exc).__name__}: {exc}")
    cause = "the vector store failed" if isinstance(exc, StoreError) else "the vector write failed"
    raise SyncWriteError(
        f"{entity.label}:{entity.uid} was not written: {cause} ({type(exc).__name__}: {exc}) and the "
        "graph change was undone", saga, retryable=retryable) from exc


def _finish(saga: SagaLog, status: str, error: str = "") -> None:
    saga.status = status
    saga.error = error[:5000]
    saga.finished_at = timezone.now()
    try:
        saga.save()
    except Exception:
        # The database itself failed: the saga stays "started" and fail_abandoned_sagas ends it.
        log.critical("saga %s of %s:%s ended %s but could not be recorded", saga.pk, saga.label, saga.uid, status)
        raise
    SAGAS.labels(status).inc()


ABANDONED_SAGA = timedelta(minutes=10)


def fail_abandoned_sagas() -> int:
    """End the sagas whose process stopped mid-way (still `started` after ABANDONED_SAGA): marked
    compensation_failed (nobody knows whether the graph write stands without its vector) and the
    entity queued, so the vector follows whatever the graph holds. Returns how many."""
    cutoff = timezone.now() - ABANDONED_SAGA
    ended = 0
    for saga in SagaLog.objects.filter(status=SagaLog.Status.STARTED, started_at__lt=cutoff)[:1000]:
        saga.step("abandoned", False, "the process running this saga stopped before it finished")
        updated = SagaLog.objects.filter(pk=saga.pk, status=SagaLog.Status.STARTED).update(
            status=SagaLog.Status.COMPENSATION_FAILED, steps=saga.steps, finished_at=timezone.now(),
            error="the process running this saga stopped before it finished; the entity was queued "
                  "so its vector follows the graph")
        if updated:
            queue.enqueue(queue.Work(saga.label, saga.uid, priority=queue.priority_of(saga.label),
                                     source="compensation"))
            SAGAS.labels(SagaLog.Status.COMPENSATION_FAILED).inc()
            ended += 1
    return ended
