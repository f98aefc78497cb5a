"""The Kafka consumer group (SYNC_TRANSPORT=kafka): poll a batch, apply it, then commit its offsets.

Each poll takes up to KAFKA_BATCH_SIZE events or what KAFKA_BATCH_SECONDS brought (the design's
100 events / 5 s). The batch goes through the outbox's apply path unchanged: its works are folded
per key and claimed as in-flight sync events (`queue.claim_works`), then `apply.apply_events`
reads each entity's current graph state, guards versions, embeds, writes the vectors, the sync
records and the events' outcomes (so the dashboard's history, lag and dead letters are the same
for both transports).

Offsets are committed only after that (at-least-once delivery: a consumer killed mid-batch leaves
its offsets where they were, and the group hands the partition's events to another consumer,
which applies them again; the version guard and "apply reads the current graph" make the effect
exactly-once). An entity still in flight under a killed consumer's claim is taken over
(`claim_works(take_over=...)`): Kafka's partition assignment says who applies a key now, and the
fence drops a stale consumer's results should it wake up.

A failed entity is retried in place with backoff (queue.fail's attempts and backoff, each wait
capped at KAFKA_RETRY_BACKOFF_MAX; the partition waits meanwhile, which keeps per-key order); after
SYNC_MAX_ATTEMPTS it is a dead letter: its sync event shows on the Queue page like the outbox's,
and its last message is copied to `<prefix>.dlq` with the error and attempts in headers. A
message that is not a change event goes there at once. A SIGTERM (`sync.shutdown`) interrupts a
batch: its events go back uncounted and nothing is committed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from sync import queue
from sync.apply import ApplyCounts, apply_events
from sync.models import SyncEvent, for_entities
from sync.observe.counters import SYNC_ERRORS
from sync.stores.base import StoreError
from sync.transport import kafka

log = logging.getLogger(__name__)

CONSUMER_PREFIX = "kafka-"  # the claim tokens of consumers of the group start with it
Status = SyncEvent.Status


@dataclass
class ConsumeTotals:
    batches: int = 0
    messages: int = 0
    committed: int = 0  # messages whose offsets were committed
    dead_lettered: int = 0
    counts: ApplyCounts = field(default_factory=ApplyCounts)


def consumer_config(name: str) -> dict:
    return {
        **kafka.client_config(),
        "group.id": settings.KAFKA_GROUP_ID,
        "client.id": name,
        "enable.auto.commit": False,  # committed by hand, after the vector write
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.KAFKA_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": max(1000, settings.KAFKA_SESSION_TIMEOUT_MS // 5),
        # A batch retrying a failed entity waits up to SYNC_MAX_ATTEMPTS backoffs between polls.
        "max.poll.interval.ms": 900000,
    }


class ChangeConsumer:
    def __init__(self, name: str | None = None, *, batch_size: int | None = None,
                 batch_seconds: float | None = None):
        from confluent_kafka import Consumer

        self.name = name or f"{CONSUMER_PREFIX}{queue.worker_name()}"
        self.batch_size = batch_size or settings.KAFKA_BATCH_SIZE
        self.batch_seconds = settings.KAFKA_BATCH_SECONDS if batch_seconds is None else batch_seconds
        kafka.ensure_topics()
        self.consumer = Consumer(consumer_config(self.name))
        self.consumer.subscribe(kafka.change_topics(), on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, consumer, partitions) -> None:
        log.info("%s assigned %s", self.name, [(p.topic, p.partition) for p in partitions])

    def _revoked(self, consumer, partitions) -> None:
        # Batches are applied between polls, on this thread: none is in flight when this runs.
        log.info("%s revoked %s", self.name, [(p.topic, p.partition) for p in partitions])

    def close(self) -> None:
        try:
            self.consumer.close()  # leaves the group at once: its partitions go to the others now
        except RuntimeError:
            pass

    def step(self, totals: ConsumeTotals, stop=lambda: False) -> int:
        """One poll, applied and committed; returns the messages it took."""
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=self.batch_seconds)
        real = []
        for message in messages:
            if message.error() is not None:
                log.warning("Kafka consumer error: %s", message.error())
                continue
            real.append(message)
        if not real:
            return 0
        works: list[queue.Work] = []
        latest: dict[tuple[str, str], object] = {}
        poison = []
        for message in real:
            try:
                change = kafka.decode(message.value())
            except ValueError as exc:
                poison.append((message, str(exc)))
                continue
            works.append(queue.Work(label=change.label, uid=change.uid, operation=change.operation,
                                    version=change.version, priority=change.priority,
                                    changed_at=change.changed_at, source="kafka"))
            latest[(change.label, change.uid)] = message
        dead = self._apply(works, totals, stop) if works else []
        for event in dead:
            message = latest.get((event.label, event.uid))
            if message is not None:
                self._dead_letter(message, event.last_error, event.attempts)
                totals.dead_lettered += 1
        for message, error in poison:
            self._dead_letter(message, error, 0)
            totals.dead_lettered += 1
        self._commit(real, totals)
        totals.batches += 1
        totals.messages += len(real)
        close_old_connections()
        return len(real)

    def _apply(self, works: list[queue.Work], totals: ConsumeTotals, stop) -> list[SyncEvent]:
        """Apply the batch's works, retrying failures in place; returns the events that went dead."""
        keys = {work.key for work in works}
        events = queue.claim_works(works, self.name, take_over=CONSUMER_PREFIX)
        mine = {event.id for event in events}
        while events:
            totals.counts.add(apply_events(events, embed_limit=self.batch_size))
            waiting = [event for rows in for_entities(SyncEvent.objects.filter(status=Status.QUEUED), keys)
                       for event in rows.only("id", "next_attempt_at")]
            if not waiting:
                break
            # Failed and backing off (or handed back beyond the batch's embedding limits): this
            # partition waits for them, so a key's later events never overtake its earlier ones.
            wait = max((e.next_attempt_at - timezone.now()).total_seconds() for e in waiting)
            deadline = time.monotonic() + min(max(wait, 0.0), settings.KAFKA_RETRY_BACKOFF_MAX)
            while time.monotonic() < deadline and not stop():
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            events = queue.reclaim([e.id for e in waiting], self.name)
            mine.update(event.id for event in events)
        return list(SyncEvent.objects.filter(id__in=sorted(mine), status=Status.DEAD))

    def _dead_letter(self, message, error: str, attempts: int) -> None:
        kafka.publish_dead(message.key(), message.value(), error=error or "failed", attempts=attempts,
                           topic=message.topic(), partition=message.partition(), offset=message.offset())
        log.warning("dead letter %s from %s[%d]@%d: %s", message.key(), message.topic(), message.partition(),
                    message.offset(), error)

    def _commit(self, messages, totals: ConsumeTotals) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        ends: dict[tuple[str, int], int] = {}
        for message in messages:
            place = (message.topic(), message.partition())
            ends[place] = max(ends.get(place, -1), message.offset() + 1)
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()],
                                 asynchronous=False)
            totals.committed += len(messages)
        except KafkaException as exc:
            # Partitions revoked meanwhile (a rebalance): their new owner applies these events again,
            # which the version guard makes harmless.
            SYNC_ERRORS.labels("kafka").inc()
            log.warning("%s could not commit %d offsets (%s); they will be redelivered", self.name, len(ends), exc)


def run(*, seconds: float | None = None, idle_exit: float | None = None, stop=lambda: False,
        name: str | None = None, batch_size: int | None = None, batch_seconds: float | None = None) -> ConsumeTotals:
    """Consume until `stop()`, after `seconds`, or once nothing came for `idle_exit` seconds."""
    totals = ConsumeTotals()
    consumer = ChangeConsumer(name, batch_size=batch_size, batch_seconds=batch_seconds)
    deadline = time.monotonic() + seconds if seconds else None
    idle_since = time.monotonic()
    try:
        while not stop() and (deadline is None or time.monotonic() < deadline):
            try:
                taken = consumer.step(totals, stop)
            except StoreError as exc:  # the vector store, Neo4j or Kafka as a whole: nothing committed
                SYNC_ERRORS.labels("kafka").inc()
                log.warning("Kafka consumer batch failed, its events will be redelivered: %s", exc)
                consumer.close()
                time.sleep(1.0)
                consumer = ChangeConsumer(name, batch_size=batch_size, batch_seconds=batch_seconds)
                continue
            if taken:
                idle_since = time.monotonic()
            elif idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                break
    finally:
        consumer.close()
    return totals
