"""The Kafka consumer group (SYNC_TRANSPORT=kafka): poll a batch, apply it, then commit its offsets.

Each poll takes up to KAFKA_BATCH_SIZE events or what KAFKA_BATCH_SECONDS brought (the design's 100
events / 5 s); a HIGH event does not wait for the batch to fill (`ChangeConsumer.poll`). The batch
goes through the outbox's apply path unchanged: its works are folded per key and claimed as
in-flight sync events (`queue.claim_works`), then `apply.apply_events` reads each entity's current
graph state, guards versions, embeds, writes the vectors, the sync records and the events' outcomes
(so the dashboard's history, lag and dead letters are the same for both transports).

Offsets are committed only after that (at-least-once delivery: a consumer killed mid-batch leaves
its offsets where they were, and the group hands the partition's events to another consumer,
which applies them again; the version guard and "apply reads the current graph" make the effect
exactly-once). An entity still in flight under a killed consumer's claim is taken over
(`claim_works(take_over=...)`): Kafka's partition assignment says who applies a key now, and the
fence drops a stale consumer's results should it wake up.

Priorities: HIGH before MEDIUM before LOW before the backfill topic (`LANES`), by pausing. Before
each poll a consumer looks at its own partitions' backlogs (high watermark - its position, from
librdkafka's fetch state: no broker call once they are fetched): while a lane has one, the
partitions of every lane below it are paused, so that neither the broker's fetches nor the client's
prefetched queue put a LOW backlog in front of a KEV entry; they resume once the lanes above are
empty. Without starving them: once a lane has been held for SYNC_STARVATION_SECONDS, every poll lets
it through for STARVATION_SHARE of the batch until the lanes above are empty (the outbox's aged
share, `queue.claim_batch`); messages beyond the share, and any of a paused partition that were
fetched before the pause, are handed back by seeking the partition to the first of them (its offset
is not committed: it is read again). Each consumer orders the partitions assigned to it: one with no
HIGH partition has no HIGH work to wait for. A consumer loads the embedding model before it joins
the group.

A failed entity is retried in place with backoff (queue.fail's attempts and backoff, each wait
capped at KAFKA_RETRY_BACKOFF_MAX; the partition waits meanwhile, which keeps per-key order); after
SYNC_MAX_ATTEMPTS it is a dead letter: its last message is copied to `<prefix>.dlq` with the error
and attempts in headers, and its sync event, which shows on the Queue page like the outbox's, notes
where (`dlq_position`: what a retry re-publishes, `queue.retry_dead`). A message that is not a
change event goes there at once, with a dead sync event of its own. (While the consumer retries,
its other partitions wait too, HIGH included.) A SIGTERM (`sync.shutdown`) interrupts a
batch: its events go back uncounted and nothing is committed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from sync import embedding, queue
from sync.apply import ApplyCounts, apply_events
from sync.models import Backfill, Priority, SyncEvent, for_entities
from sync.observe.counters import SYNC_ERRORS
from sync.stores import import_clients
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


WAIT_SLICE = 0.1  # seconds: how often a filling batch looks for a HIGH message among its arrivals
# The lanes a consumer orders its partitions by: the priorities' topics, then the backfill topic.
BACKFILL_LANE = max(Priority) + 1
LANES = (*sorted(Priority), BACKFILL_LANE)


class ChangeConsumer:
    def __init__(self, name: str | None = None, *, batch_size: int | None = None,
                 batch_seconds: float | None = None):
        from confluent_kafka import Consumer

        self.name = name or f"{CONSUMER_PREFIX}{queue.worker_name()}"
        self.batch_size = batch_size or settings.KAFKA_BATCH_SIZE
        self.batch_seconds = settings.KAFKA_BATCH_SECONDS if batch_seconds is None else batch_seconds
        self.lane_of = {**{kafka.topic_for(p): Priority(p) for p in Priority}, kafka.backfill_topic(): BACKFILL_LANE}
        self.share = max(1, int(self.batch_size * queue.STARVATION_SHARE))  # of a poll, for an aged lane
        self.assigned: set[tuple[str, int]] = set()
        self.held: set[tuple[str, int]] = set()  # paused: a lane above has a backlog
        self.held_since: dict[int, float] = {}  # lane -> held since (monotonic), while held
        self.starts: dict[tuple[str, int], int] = {}  # committed offsets, where nothing was consumed yet
        self._repause = False
        kafka.ensure_topics()
        self.consumer = Consumer(consumer_config(self.name))
        self.consumer.subscribe(kafka.change_topics(), on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, consumer, partitions) -> None:
        log.info("%s assigned %s", self.name, [(p.topic, p.partition) for p in partitions])
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        self._repause = True  # a new assignment starts unpaused: apply the plan again

    def _revoked(self, consumer, partitions) -> None:
        # Batches are applied between polls, on this thread: none is in flight when this runs.
        log.info("%s revoked %s", self.name, [(p.topic, p.partition) for p in partitions])
        gone = {(p.topic, p.partition) for p in partitions}
        self.assigned -= gone
        self.held -= gone
        for place in gone:
            self.starts.pop(place, None)

    def backlog(self) -> dict[int, int]:
        """Messages of this consumer's partitions not consumed yet, per lane (high watermark -
        position; a partition nothing was consumed from since its assignment counts from its
        committed offset)."""
        from confluent_kafka import KafkaException, TopicPartition

        waiting = dict.fromkeys(LANES, 0)
        if not self.assigned:
            return waiting
        positions = self.consumer.position([TopicPartition(t, p) for t, p in sorted(self.assigned)])
        unknown = [tp for tp in positions if tp.offset < 0 and (tp.topic, tp.partition) not in self.starts]
        if unknown:
            try:
                self.starts.update({(tp.topic, tp.partition): tp.offset
                                    for tp in self.consumer.committed(unknown, timeout=5)})
            except KafkaException as exc:
                log.debug("%s: committed offsets unknown for now (%s)", self.name, exc)
        for tp in positions:
            place = (tp.topic, tp.partition)
            low, high = self.consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
            if high < 0:  # not fetched yet: ask the broker
                try:
                    low, high = self.consumer.get_watermark_offsets(tp, timeout=2)
                except KafkaException:
                    continue
            at = tp.offset if tp.offset >= 0 else self.starts.get(place, -1)
            waiting[self.lane_of[tp.topic]] += max(0, high - (at if at >= 0 else max(low, 0)))
        return waiting

    def prioritise(self) -> set[int]:
        """Pause the lanes below one with a backlog, resume the others; returns the lanes held for
        SYNC_STARVATION_SECONDS, which every poll lets through for a share until the lanes above
        are empty (as the outbox's claims take a share of the events older than that)."""
        from confluent_kafka import TopicPartition

        waiting = self.backlog()
        now = time.monotonic()
        hold: set[int] = set()
        aged: set[int] = set()
        ahead = False
        for priority in LANES:
            if not ahead:
                self.held_since.pop(priority, None)
            elif now - self.held_since.setdefault(priority, now) >= settings.SYNC_STARVATION_SECONDS:
                aged.add(priority)
            else:
                hold.add(priority)
            ahead = ahead or waiting[priority] > 0
        held = {place for place in self.assigned if self.lane_of[place[0]] in hold}
        if held != self.held or self._repause:
            if held:
                self.consumer.pause([TopicPartition(t, p) for t, p in sorted(held)])
            if self.assigned - held:
                self.consumer.resume([TopicPartition(t, p) for t, p in sorted(self.assigned - held)])
            if held != self.held:
                log.debug("%s holds %s (backlog %s)", self.name, sorted(held), dict(waiting))
            self.held, self._repause = held, False
        return aged

    def _admit(self, messages: list, aged: set[int]) -> list:
        """The messages this batch applies: none of a held partition (fetched before its pause),
        at most `share` of the aged lanes' together. A partition's messages left out go back (a
        seek to the first of them: read again later, never committed before), so each partition's
        taken messages are a prefix and its order is kept."""
        from confluent_kafka import TopicPartition

        taken, share = [], 0
        back: dict[tuple[str, int], int] = {}
        for message in messages:
            place = (message.topic(), message.partition())
            priority = self.lane_of.get(place[0])
            if place in back or place in self.held:
                back.setdefault(place, message.offset())
                continue
            if priority in aged:
                if share >= self.share:
                    back[place] = message.offset()
                    continue
                share += 1
            taken.append(message)
        for (topic, partition), offset in back.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        return taken

    def close(self) -> None:
        try:
            self.consumer.close()  # leaves the group at once: its partitions go to the others now
        except RuntimeError:
            pass

    def poll(self) -> list:
        """One batch of messages, by priority (`prioritise`, `_admit`); nothing applied yet.

        A batch fills for up to `batch_seconds`, read in slices of WAIT_SLICE, except that a
        HIGH message never waits: once one is in hand, the batch is what has arrived (the outbox
        worker's rule, `worker.drain`). Waiting for 100 messages or 5 s put a KEV entry 2.7 s
        (p50) to 5.7 s (p95) behind its commit at 10 changes a second (`bench/transport.py`)."""
        aged = self.prioritise()
        real: list = []
        deadline = time.monotonic() + self.batch_seconds
        while len(real) < self.batch_size:
            wait = min(WAIT_SLICE, deadline - time.monotonic())
            if wait <= 0:
                break
            for message in self.consumer.consume(num_messages=self.batch_size - len(real), timeout=wait):
                if message.error() is not None:
                    log.warning("Kafka consumer error: %s", message.error())
                    continue
                real.append(message)
            if any(self.lane_of.get(message.topic()) == Priority.HIGH for message in real):
                break
        return self._admit(real, aged)

    def step(self, totals: ConsumeTotals, stop=lambda: False) -> int:
        """One poll, applied and committed; returns the messages it took."""
        real = self.poll()
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
                                    changed_at=change.changed_at, source="kafka", backfill=change.backfill))
            latest[(change.label, change.uid)] = message
        dead = self._apply(_known_backfills(works), totals, stop) if works else []
        for event in dead:
            message = latest.get((event.label, event.uid))
            if message is not None:
                self._dead_letter(message, event.last_error, event.attempts, event)
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
        # A backfill's work was handed over to it when it was published (queue._publish).
        events = queue.claim_works(works, self.name, take_over=CONSUMER_PREFIX, handing_over=False)
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

    def _dead_letter(self, message, error: str, attempts: int, event: SyncEvent | None = None) -> None:
        """Copy the message to the dead-letter topic, and note where on its dead letter's row (a
        message that is not a change event gets a row of its own), which the Queue page lists and
        a retry re-publishes from (`queue.retry_dead`)."""
        where = kafka.publish_dead(message.key(), message.value(), error=error or "failed", attempts=attempts,
                                   topic=message.topic(), partition=message.partition(), offset=message.offset(),
                                   event=event.id if event is not None else None)
        log.warning("dead letter %s from %s[%d]@%d: %s", message.key(), message.topic(), message.partition(),
                    message.offset(), error)
        if event is not None:
            SyncEvent.objects.filter(id=event.id, status=Status.DEAD).update(dlq_position=where)
            return
        label, uid = kafka.unreadable_key(message.key(), where)
        now = timezone.now()
        SyncEvent.objects.create(
            label=label, uid=uid, status=Status.DEAD, source="kafka", attempts=attempts,
            priority=_priority_of_topic(self.lane_of.get(message.topic())), created_at=now, finished_at=now,
            failed_at=now, next_attempt_at=now, last_error=(error or "failed")[:5000], dlq_position=where)

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
    # The model is loaded (and the stores' client libraries imported: LanceDB's import takes
    # 1.5-2 s) before joining the group: the group hands partitions only to consumers that can
    # apply them at once, and no HIGH event waits for the weights.
    import_clients()
    log.info("consumer %s: embedding model ready in %.1f s", name or "", embedding.warm_up())
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


def _known_backfills(works: list[queue.Work]) -> list[queue.Work]:
    """The works, those naming a backfill this database does not hold (deleted since, or another
    deployment's) as streaming changes: their events could not refer to it."""
    named = {work.backfill for work in works if work.backfill is not None}
    if not named:
        return works
    known = set(Backfill.objects.filter(pk__in=named).values_list("pk", flat=True))
    return [work if work.backfill is None or work.backfill in known else replace(work, backfill=None)
            for work in works]


def _priority_of_topic(lane: int | None) -> Priority:
    """A dead letter's priority from the topic its message came from: a priority's own, LOW for
    the backfill topic's (behind every streaming change, as the lane was), MEDIUM for another."""
    if lane == BACKFILL_LANE:
        return Priority.LOW
    return Priority(lane) if lane is not None else Priority.MEDIUM
