"""Write paths into the graph (ingest API, importers, conflict resolutions).

Every write commits to Neo4j first, in one transaction (version + 1, server `updated_at`,
source, confidence). Then, per the label's policy:

- async write-through (the default): enqueue a sync event and return; the caller waits only for
  Neo4j, and a worker is kicked to apply the event soon.
- sync dual-write (critical types such as CISA KEV): embed and upsert in the same call, as a saga.
  If the vector write fails, the compensation puts the node back as it was (or deletes a node the
  write created) and the call raises — or, where the policy says `queue`, the graph write is kept
  and the vector is left to the queue. Every saga's steps and outcome are in `SagaLog`.
- two-phase: prepare both sides in the call — the graph write inside an open Neo4j transaction
  (the node locked, visible to nobody), the vector embedded and checked against the store's
  limits — then commit the graph and write the vector on a best-effort basis: a vector store
  failing now hands the vector to the queue (the outbox event) instead of undoing the graph. A
  failed prepare commits nothing. Recorded in `SagaLog` like a saga (aborted, committed, deferred).

`write_entities` writes many entities of one label the same way, per entity (rules, saga, outcome),
with one graph transaction, one embedding call and one vector write for the batch: the feed
importers' path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from sync import queue
from sync.apply import apply_now, apply_now_many
from sync.conflicts import records as conflicts
from sync.conflicts import rules
from sync.conflicts.settle import settle
from sync.embedding import get_embedder
from sync.models import SagaLog
from sync.observe.counters import EMBEDDED_CHUNKS, SAGAS, SYNC_ERRORS
from sync.policy import WriteMode, build_document, policy_for
from sync.stores import graph_store, vector_store
from sync.stores.base import Entity, StoreError, VectorRecord, VersionConflict
from sync.stores.metadata import check_record

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
    mode: str  # dual_write | two_phase | write_through | graph_only
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


def write_entities(label: str, items: Sequence[tuple[str, dict[str, Any]]], *, source: str,
                   confidence: float | None = None, actor: str = "system",
                   defer_vectors: bool = False) -> list[WriteOutcome | Exception]:
    """`write_entity` for many entities of one label (a feed import's batch): for each (uid,
    properties), in the order given, its WriteOutcome or the exception its `write_entity` would
    have raised (a compensated saga's SyncWriteError, CompensationFailed, the graph's own error).

    Each entity keeps what `write_entity` does for it — the rules settled against its node, and
    for a dual-write label a saga of its own, committed or compensated (or deferred) alone — while
    the batch shares one read of the nodes, one graph transaction, one claim, one embedding call
    and one vector write. An entity a concurrent writer changed after that read (its version guard
    failed), and every entity of a batch the graph refused as a whole, is written on its own
    through `write_entity`; a two-phase label is written entity by entity (each holds its own
    transaction open). A retryable graph failure of the whole batch raises, nothing written.
    """
    policy = policy_for(label)
    if not items:
        return []
    if policy.synced and policy.write_mode == WriteMode.TWO_PHASE and not defer_vectors:
        return [_write_alone(label, uid, props, source, confidence, actor, defer_vectors) for uid, props in items]
    governed = rules.GOVERNED.get(label, {})
    nodes = graph_store().get_entities([(label, uid) for uid, _ in items]) if governed else {}
    write_confidence = None if ("confidence" in governed and confidence is not None) else confidence
    rows: list[tuple[str, dict[str, Any], int | None]] = []
    settled_by: dict[str, tuple[list, list]] = {}  # uid -> (conflicts opened, auto-resolved to record)
    for uid, properties in items:
        settled, held_back, auto, guard = dict(properties), [], [], None
        if write_confidence is None and confidence is not None and "confidence" not in settled:
            settled["confidence"] = confidence  # disputed like any governed value (see write_entity)
        if governed:
            node = nodes.get((label, uid))
            if node is not None:
                settled, held_back, auto = settle(node, settled, source, confidence)
            guard = node.version if node is not None else 0  # as read: a concurrent write must not slip in
        for name in governed:
            if name in settled:
                settled.setdefault(rules.provenance_key(name), source)
        settled_by[uid] = ([open_() for open_ in held_back], auto)  # durable before the graph changes
        rows.append((uid, settled, guard))
    dual = policy.synced and policy.write_mode == WriteMode.DUAL_WRITE and not defer_vectors
    sagas: dict[str, SagaLog] = {}
    if dual:  # each saga exists before its graph write, as in _dual_write
        made = SagaLog.objects.bulk_create([SagaLog(label=label, uid=uid, actor=actor[:150]) for uid, _, _ in rows])
        sagas = {saga.uid: saga for saga in made}
    try:
        written = graph_store().write_entities(label, rows, source=source, confidence=write_confidence)
    except BaseException as exc:
        for opened, _ in settled_by.values():
            conflicts.withdraw([c for c, created in opened if created])
        if not isinstance(exc, Exception):
            raise  # the sagas stay started: fail_abandoned_sagas ends them and queues their entities
        SagaLog.objects.filter(pk__in=[saga.pk for saga in sagas.values()]).delete()  # nothing was written
        if isinstance(exc, StoreError) and exc.retryable:
            raise
        # Refused as a whole (a row the graph will not take, a node created meanwhile): one by one.
        return [_write_alone(label, uid, props, source, confidence, actor, defer_vectors) for uid, props in items]
    done: dict[str, tuple[Entity | None, Entity]] = {}
    alone: list[str] = []
    for (uid, _, _), result in zip(rows, written, strict=True):
        opened, auto = settled_by[uid]
        if isinstance(result, VersionConflict):  # changed since our read: the rules must see it again
            conflicts.withdraw([c for c, created in opened if created])
            if uid in sagas:
                sagas.pop(uid).delete()
            alone.append(uid)
            continue
        previous, entity = result
        conflicts.move_to_version([c for c, _ in opened], entity.version)
        for record in auto:
            record(entity)
        done[uid] = result
    outcomes: dict[str, WriteOutcome | Exception] = {}
    if not policy.synced:
        outcomes = {uid: WriteOutcome(entity, previous, "graph_only") for uid, (previous, entity) in done.items()}
    elif dual:
        outcomes = _dual_write_many({uid: (sagas[uid], *done[uid]) for uid in done}) if done else {}
    else:
        queue.enqueue_many([_work(entity, "write", changed_properties(previous, entity))
                            for previous, entity in done.values()])
        outcomes = {uid: WriteOutcome(entity, previous, WriteMode.WRITE_THROUGH.value, vector_outcome="queued")
                    for uid, (previous, entity) in done.items()}
    properties = dict(items)
    for uid in alone:
        outcomes[uid] = _write_alone(label, uid, properties[uid], source, confidence, actor, defer_vectors)
    return [outcomes[uid] for uid, _ in items]


def _write_alone(label, uid, properties, source, confidence, actor, defer_vectors) -> WriteOutcome | Exception:
    try:
        return write_entity(label, uid, properties, source=source, confidence=confidence, actor=actor,
                            defer_vectors=defer_vectors)
    except (SyncWriteError, StoreError, ValueError) as exc:
        return exc


def _dual_write_many(written: dict[str, tuple[SagaLog, Entity | None, Entity]]) -> dict[str, WriteOutcome | Exception]:
    """The vector side of a batch of dual-writes whose graph writes committed: one apply for the
    batch, then each saga ends on its own entity's result (committed, or compensated as in
    `_dual_write`)."""
    for saga, previous, entity in written.values():
        saga.previous_version = previous.version if previous else None
        saga.new_version = entity.version
        saga.step("graph_write", True, f"v{saga.previous_version or 0} -> v{entity.version}")
    entities = [entity for _, _, entity in written.values()]
    first = next(iter(written.values()))[0]
    try:
        applied = apply_now_many(entities, worker=f"saga:{first.pk}+{len(written) - 1}")
    except queue.EntityBusy:
        applied = {entity.key: _apply_alone(entity, written[entity.uid][0]) for entity in entities}
    except BaseException as exc:
        # The claim, the database or an interruption failed the batch: every saga ends as one would.
        applied = {entity.key: exc for entity in entities}
        if not isinstance(exc, Exception):
            for saga, previous, entity in written.values():
                saga.step("vector_write", False, f"{type(exc).__name__}: {exc}")
                _interrupted(saga, previous, entity, exc)
            raise
    outcomes: dict[str, WriteOutcome | Exception] = {}
    committed: list[SagaLog] = []
    for uid, (saga, previous, entity) in written.items():
        result = applied[entity.key]
        if not isinstance(result, BaseException):
            saga.step("vector_write", True, result)
            committed.append(saga)
            outcomes[uid] = WriteOutcome(entity, previous, WriteMode.DUAL_WRITE.value, saga, result)
            continue
        saga.step("vector_write", False, f"{type(result).__name__}: {result}")
        SYNC_ERRORS.labels("dual_write").inc()
        try:
            outcomes[uid] = _after_vector_failure(saga, previous, entity, result)
        except SyncWriteError as exc:
            outcomes[uid] = exc
    _finish_many(committed, SagaLog.Status.COMMITTED)
    return outcomes


def _apply_alone(entity: Entity, saga: SagaLog) -> str | Exception:
    try:
        return apply_now(entity, worker=f"saga:{saga.pk}")
    except Exception as exc:  # noqa: BLE001 — the entity's saga ends on it
        return exc


def _work(entity: Entity, source: str, changed: tuple[str, ...] | None = None) -> queue.Work:
    return queue.Work(label=entity.label, uid=entity.uid, version=entity.version,
                      priority=queue.priority_of(entity.label), changed_at=entity.updated_at, source=source,
                      changed=changed)


def changed_properties(previous: Entity | None, entity: Entity) -> tuple[str, ...]:
    """The names of the properties a write set to a new value or removed (its version stamp aside):
    what Kafka's change event says changed (`queue.Work.changed`)."""
    before = previous.properties if previous is not None else {}
    after = entity.properties
    return tuple(sorted(name for name in before.keys() | after.keys()
                        if name not in ("version", "updated_at") and before.get(name) != after.get(name)))


def _write(label, uid, properties, *, source, confidence, expected_version, actor,
           defer_vectors=False) -> WriteOutcome:
    policy = policy_for(label)
    if policy.synced and policy.write_mode == WriteMode.DUAL_WRITE and not defer_vectors:
        return _dual_write(label, uid, properties, source=source, confidence=confidence,
                           expected_version=expected_version, actor=actor)
    if policy.synced and policy.write_mode == WriteMode.TWO_PHASE and not defer_vectors:
        return _two_phase(label, uid, properties, source=source, confidence=confidence,
                          expected_version=expected_version, actor=actor)
    previous, entity = graph_store().write_entity(
        label, uid, properties, expected_version=expected_version, source=source, confidence=confidence)
    if not policy.synced:
        return WriteOutcome(entity, previous, "graph_only")
    enqueue_entity(entity, source="write", changed=changed_properties(previous, entity))
    return WriteOutcome(entity, previous, WriteMode.WRITE_THROUGH.value, vector_outcome="queued")


def enqueue_entity(entity: Entity, *, source: str, changed: tuple[str, ...] | None = None) -> None:
    queue.enqueue(_work(entity, source, changed))


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


def _two_phase(label, uid, properties, *, source, confidence, expected_version, actor) -> WriteOutcome:
    """Prepare both sides, commit the graph, then write the vector best-effort (module docstring)."""
    graph = graph_store()
    saga = SagaLog.objects.create(label=label, uid=uid, actor=actor[:150])
    prepared = False
    try:
        with graph.prepared_write(label, uid, properties, expected_version=expected_version, source=source,
                                  confidence=confidence) as (previous, entity):
            saga.previous_version = previous.version if previous else None
            saga.new_version = entity.version
            saga.step("prepare_graph", True, f"v{saga.previous_version or 0} -> v{entity.version}, not committed")
            embedded, detail = _prepare_vectors(entity)
            saga.step("prepare_vector", True, detail)
            prepared = True
    except BaseException as exc:
        # Rolled back (or, for a commit whose outcome is unknown, maybe not): nothing to undo.
        _two_phase_refused(saga, exc, prepared=prepared, entity=entity if prepared else None)
        if not isinstance(exc, Exception) or saga.new_version is None:
            raise  # interrupted, or the graph refused the write: the store's own error, as in a saga
        raise SyncWriteError(f"{label}:{uid} was not written: " + (
            f"the graph commit failed ({type(exc).__name__}: {exc})" if prepared
            else f"preparing its vector failed ({type(exc).__name__}: {exc}); nothing was committed"),
            saga, retryable=isinstance(exc, StoreError) and exc.retryable) from exc
    saga.step("commit_graph", True, f"v{entity.version} committed")
    try:
        outcome = apply_now(entity, worker=f"saga:{saga.pk}", embedded=embedded)
    except BaseException as exc:
        # The graph write stands: the vector goes to the retry queue, never a compensation.
        saga.step("vector_write", False, f"{type(exc).__name__}: {exc}")
        SYNC_ERRORS.labels("two_phase").inc()
        _defer(saga, entity, exc)
        if not isinstance(exc, Exception):
            raise
        return WriteOutcome(entity, previous, WriteMode.TWO_PHASE.value, saga, "queued")
    saga.step("vector_write", True, outcome)
    _finish(saga, SagaLog.Status.COMMITTED)
    return WriteOutcome(entity, previous, WriteMode.TWO_PHASE.value, saga, outcome)


def _prepare_vectors(entity: Entity) -> tuple[dict[str, Any], str]:
    """The two-phase write's vector side, prepared while the graph transaction is open: the
    document built and embedded, and every record checked against the vector store's own rules
    (`check_record`: id length and characters, dimension, finite values, metadata types and size).
    Returns the vectors by chunk text, for the write after the commit, and what was done; raises
    ValueError for what the store would refuse."""
    document = build_document(entity)
    if document is None:
        return {}, "never synced (its uid holds contact details): no vector to prepare"
    texts = [chunk.text for chunk in document.chunks]
    values = get_embedder().encode(texts)
    EMBEDDED_CHUNKS.inc(len(texts))
    dimension = vector_store().dimension
    for chunk, vector in zip(document.chunks, values, strict=True):
        check_record(VectorRecord(chunk.vector_id, vector, chunk.metadata), dimension)
    return dict(zip(texts, values, strict=True)), (
        f"{len(texts)} chunk{'s' if len(texts) != 1 else ''} embedded, within the store's limits")


def _two_phase_refused(saga: SagaLog, exc: BaseException, *, prepared: bool, entity: Entity | None) -> None:
    if not prepared:
        graph_side = saga.new_version is None
        saga.step("prepare_graph" if graph_side else "prepare_vector", False, f"{type(exc).__name__}: {exc}")
        _finish(saga, SagaLog.Status.ABORTED, error=(
            f"graph write refused: {exc}" if graph_side
            else f"the vector could not be prepared, nothing committed: {type(exc).__name__}: {exc}"))
        return
    # The commit itself failed. Its outcome may be unknown (the connection dropped mid-commit):
    # queue the entity, so the vector follows whatever the graph holds — harmless if nothing was.
    saga.step("commit_graph", False, f"{type(exc).__name__}: {exc}")
    queued = ""
    try:
        enqueue_entity(entity, source="write")
    except Exception as queue_error:  # noqa: BLE001 — reconciliation finds a committed write without its vector
        queued = f"; queuing the entity failed too ({queue_error}), reconciliation will repair it"
    _finish(saga, SagaLog.Status.ABORTED,
            error=f"the graph commit failed, possibly after committing: {type(exc).__name__}: {exc}{queued}")


def _defer(saga: SagaLog, entity: Entity, exc: BaseException) -> None:
    """The graph write stands and its vector write failed: the entity goes to the retry queue."""
    try:
        enqueue_entity(entity, source="write")
    except Exception as queue_error:  # noqa: BLE001 — recorded; change capture or reconciliation finds it
        saga.step("enqueue", False, f"{type(queue_error).__name__}: {queue_error}; change capture "
                                    "or reconciliation will queue it")
    else:
        saga.step("enqueue", True, "vector write left to the queue")
    _finish(saga, SagaLog.Status.DEFERRED, error=f"{type(exc).__name__}: {exc}")


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


_SAGA_END_FIELDS = ("status", "error", "finished_at", "steps", "previous_version", "new_version")


def _finish_many(sagas: list[SagaLog], status: str) -> None:
    """`_finish` for many sagas ending alike, in one transaction. One parameterised UPDATE run for
    every saga (`executemany`): `bulk_update` builds a CASE per field and row, and compiling that
    cost more than a batch's whole graph write."""
    if not sagas:
        return
    now = timezone.now()
    for saga in sagas:
        saga.status, saga.error, saga.finished_at = status, "", now
    fields = [SagaLog._meta.get_field(name) for name in _SAGA_END_FIELDS]
    quote = connection.ops.quote_name
    sql = (f"UPDATE {quote(SagaLog._meta.db_table)} SET {', '.join(f'{quote(f.column)} = %s' for f in fields)} "
           f"WHERE {quote(SagaLog._meta.pk.column)} = %s")
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, [[f.get_db_prep_save(getattr(saga, f.attname), connection) for f in fields]
                                     + [saga.pk] for saga in sagas])
    except Exception:
        log.critical("%d sagas of %s ended %s but could not be recorded", len(sagas), sagas[0].label, status)
        raise
    SAGAS.labels(status).inc(len(sagas))


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
