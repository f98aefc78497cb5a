"""Apache Kafka as the transport of changes (SYNC_TRANSPORT=kafka): topics, events, the producer.

Topics: one per priority, `<KAFKA_TOPIC_PREFIX>.high`, `.medium` and `.low` (default prefix
`neo4j-changes`), `<prefix>.backfill` for backfills' work of every priority (the lane behind the
streaming changes, as the outbox claims a backfill's work with what is left of a batch: a bulk load
in a priority's own topic would hold that priority's changes behind it), plus `<prefix>.dlq` for the
dead letters. A topic per priority rather than one topic with the priority in a header, because a
consumer can then pause the lower topics' partitions while HIGH has lag (a header is only seen after
a message is fetched: a backlog of LOW would sit in front of a KEV entry in its partition), and lag
is read per priority from the broker alone. A label's priority is fixed by the sync policy, so every
change of one entity lands in the same topic and, keyed by `Label:uid` (`sync.ids.entity_key`: the
business key, which survives a restore where Neo4j's element ids do not), in the same partition:
per-key order is kept. Work queued at a raised priority (a resync, a search repair) or for a
backfill may take another topic; applying always reads the graph's current state and the version
guard refuses older-over-newer, so that order does not matter.

Each message's value is a JSON change event shaped like Neo4j's CDC events (`id`, `txId`, `seq`,
`metadata.txCommitTime` on Neo4j's clock, `event` with `eventType` "n", `operation` c/u/d, `labels`,
`keys`, `state`), plus the fields our apply path reads (`event.version`, `event.priority`,
`metadata.source`, and `metadata.backfill`: the bulk load the work was handed to, null for a
streaming change, so that a backfill's progress and the streaming lag are told apart as with the
outbox, `sync.backfill`). `event.changed` lists the property names the change set or removed where
the producer knows them — the write paths (ingest API, feed imports, analysts' resolutions) compare
the node before and after their write (`sync.writes.changed_properties`), and changes folded
together list the union — and is `null` where it does not: change capture reads versions, not
property diffs, so a foreign write's names are not known (the APOC trigger stamps versions only).

The producer is idempotent (`enable.idempotence`, which implies `acks=all`). `publish` returns only
once the broker has acknowledged every event, and raises `RetryableStoreError` otherwise: change
capture advances its cursor only after `publish` returns, so a broker outage never loses a change
(capture waits, records why on the cursor, and publishes again on its next poll).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings

from sync import ids
from sync.models import Priority
from sync.stores.base import RetryableStoreError

log = logging.getLogger(__name__)

# librdkafka's own log lines (every refused connection while a broker is down, at ERROR level):
# what matters surfaces as a failed delivery or an exception with its reason, so only its
# critical lines are kept.
LIBRDKAFKA_LOG = logging.getLogger("sync.transport.librdkafka")
LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)
_lock = threading.Lock()
_producer = None
_ensured: set[str] = set()


def client_config() -> dict:
    """librdkafka settings shared by producer, consumer and admin client (security passed through)."""
    config = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "security.protocol": settings.KAFKA_SECURITY_PROTOCOL,
        "client.id": "nightingale-sync",
        "logger": LIBRDKAFKA_LOG,  # not librdkafka's own stderr lines
    }
    if settings.KAFKA_SECURITY_PROTOCOL.startswith("SASL"):
        config["sasl.mechanism"] = settings.KAFKA_SASL_MECHANISM
        if settings.KAFKA_SASL_USERNAME:
            config["sasl.username"] = settings.KAFKA_SASL_USERNAME
            config["sasl.password"] = settings.KAFKA_SASL_PASSWORD
    for key, name in (("ssl.ca.location", "KAFKA_SSL_CA_LOCATION"),
                      ("ssl.certificate.location", "KAFKA_SSL_CERTIFICATE_LOCATION"),
                      ("ssl.key.location", "KAFKA_SSL_KEY_LOCATION")):
        if getattr(settings, name):
            config[key] = getattr(settings, name)
    return config


def topic_for(priority: int) -> str:
    return f"{settings.KAFKA_TOPIC_PREFIX}.{Priority(priority).label}"


def backfill_topic() -> str:
    """Backfills' work, of every priority: the lane behind the streaming changes' topics."""
    return f"{settings.KAFKA_TOPIC_PREFIX}.backfill"


def topic_of(work) -> str:
    """Where a work (a `sync.queue.Work`) is published: its priority's topic, or a backfill's."""
    return backfill_topic() if work.backfill is not None else topic_for(work.priority)


def change_topics() -> list[str]:
    """The change topics, HIGH first, the backfill topic last."""
    return [*(topic_for(p) for p in sorted(Priority)), backfill_topic()]


def dlq_topic() -> str:
    return f"{settings.KAFKA_TOPIC_PREFIX}.dlq"


def ensure_topics(timeout: float = 15.0) -> None:
    """Create the change topics and the dead-letter topic where missing (once per process)."""
    wanted = [*change_topics(), dlq_topic()]
    if all(name in _ensured for name in wanted):
        return
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config())
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
        missing = [name for name in wanted if name not in existing]
        if missing:
            futures = admin.create_topics(
                [NewTopic(name, num_partitions=settings.KAFKA_PARTITIONS,
                          replication_factor=settings.KAFKA_REPLICATION_FACTOR) for name in missing],
                request_timeout=timeout)
            for name, future in futures.items():
                try:
                    future.result(timeout)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
                log.info("created Kafka topic %s (%d partitions)", name, settings.KAFKA_PARTITIONS)
    except KafkaException as exc:
        raise RetryableStoreError(f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS}: {exc}") from exc
    _ensured.update(wanted)


def producer():
    """The process's idempotent producer (thread-safe; made on first use)."""
    global _producer
    with _lock:
        if _producer is None:
            from confluent_kafka import Producer

            _producer = Producer({
                **client_config(),
                "enable.idempotence": True,  # implies acks=all and ordered, de-duplicated retries
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.timeout.ms": int(settings.KAFKA_PUBLISH_TIMEOUT * 1000),
            })
        return _producer


def _drop_producer() -> None:
    global _producer
    with _lock:
        _producer = None


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def encode(work) -> bytes:
    """A change event for `work` (a `sync.queue.Work`), shaped like a Neo4j CDC event."""
    deleted = work.operation == "delete"
    operation = "d" if deleted else ("c" if work.version == 1 else "u")
    return json.dumps({
        "id": uuid.uuid4().hex,
        "txId": None,
        "seq": 0,
        "metadata": {"txCommitTime": _iso(work.changed_at), "source": work.source, "executingUser": None,
                     "backfill": work.backfill},
        "event": {
            "elementId": None,  # Neo4j's element ids change after a restore: the key is label + uid
            "eventType": "n",
            "operation": operation,
            "labels": [work.label],
            "keys": {work.label: [{"uid": work.uid}]},
            "version": work.version,
            "priority": Priority(work.priority).label,
            "changed": list(changed) if (changed := getattr(work, "changed", None)) is not None else None,
            "state": {"before": None, "after": None},
        },
    }, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Decoded:
    label: str
    uid: str
    operation: str  # "upsert" | "delete"
    version: int | None
    priority: int
    changed_at: datetime | None
    source: str
    backfill: int | None = None  # the bulk load it was handed to (sync.backfill); None: a streaming change


def decode(value: bytes | None) -> Decoded:
    """The work a change event asks for; ValueError when it is not one of ours."""
    try:
        data = json.loads(value or b"")
        event = data["event"]
        label = event["labels"][0]
        uid = event["keys"][label][0]["uid"]
        ids.check_key(label, uid)
        version = event.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ValueError(f"version must be a whole number, not {version!r}")
        metadata = data.get("metadata") or {}
        changed = metadata.get("txCommitTime")
        backfill = metadata.get("backfill")
        if backfill is not None and (isinstance(backfill, bool) or not isinstance(backfill, int) or backfill < 1):
            raise ValueError(f"backfill must be a positive whole number, not {backfill!r}")
        return Decoded(
            label=label, uid=uid, operation="delete" if event["operation"] == "d" else "upsert",
            version=version, priority=Priority.from_label(event.get("priority") or "medium"),
            changed_at=datetime.fromisoformat(changed) if changed else None,
            source=str(metadata.get("source") or "kafka")[:32], backfill=backfill,
        )
    except (KeyError, IndexError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a change event: {type(exc).__name__}: {exc}") from None


def publish(works: Iterable) -> int:
    """Publish one event per work and wait until the broker has acknowledged them all.

    Raises RetryableStoreError when any is not acknowledged within KAFKA_PUBLISH_TIMEOUT (the
    caller keeps its cursor; events that did get through are published again then, which the
    consumer coalesces and the version guard makes harmless)."""
    works = list(works)
    if not works:
        return 0
    ensure_topics()
    sender = producer()
    errors: list = []

    def delivered(error, message) -> None:
        if error is not None:
            errors.append(error)

    for work in works:
        while True:
            try:
                sender.produce(topic_of(work), key=ids.entity_key(work.label, work.uid).encode(),
                               value=encode(work), on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                sender.poll(0.2)
    remaining = sender.flush(settings.KAFKA_PUBLISH_TIMEOUT + 5)
    if errors or remaining:
        if any(getattr(error, "fatal", lambda: False)() for error in errors):
            _drop_producer()  # an idempotent producer's fatal error: the next publish starts a new one
        reason = errors[0].str() if errors else "no acknowledgement in time"
        raise RetryableStoreError(f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS} did not acknowledge "
                                  f"{max(len(errors), remaining)} of {len(works)} events: {reason}")
    return len(works)


def position(topic: str, partition: int, offset: int) -> str:
    """Where a message is, as a dead letter's row keeps it (`SyncEvent.dlq_position`)."""
    return f"{topic}:{partition}@{offset}"


def parse_position(text: str) -> tuple[str, int, int] | None:
    topic, _, rest = (text or "").rpartition(":")
    partition, _, offset = rest.partition("@")
    if not topic or not partition.isdigit() or not offset.isdigit():
        return None
    return topic, int(partition), int(offset)


def publish_dead(key: bytes | None, value: bytes | None, *, error: str, attempts: int, topic: str,
                 partition: int, offset: int, event: int | None = None) -> str:
    """Copy a message that failed for good to the dead-letter topic, the error, attempts, where it
    came from and its dead letter's row (`event`) in headers. Returns where it landed
    (`position`); raises RetryableStoreError unless the broker acknowledged it."""
    ensure_topics()
    sender = producer()
    errors: list = []
    landed: list = []
    headers = [("error", error[:2000].encode()), ("attempts", str(attempts).encode()),
               ("topic", topic.encode()), ("partition", str(partition).encode()), ("offset", str(offset).encode())]
    if event is not None:
        headers.append(("event", str(event).encode()))

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(err)
        else:
            landed.append(position(msg.topic(), msg.partition(), msg.offset()))

    sender.produce(dlq_topic(), key=key, value=value, headers=headers, on_delivery=delivered)
    if sender.flush(settings.KAFKA_PUBLISH_TIMEOUT + 5) or errors or not landed:
        raise RetryableStoreError(f"Kafka did not acknowledge a dead letter: {errors[0] if errors else 'timeout'}")
    return landed[0]


UNREADABLE = "(unreadable)"  # the label of a dead letter whose key names no entity


def unreadable_key(key: bytes | None, where: str) -> tuple[str, str]:
    """The entity a message that is not a change event names by its key (`Label:uid`), as far as
    it does; otherwise UNREADABLE and where it lies in the dead-letter topic."""
    text = (key or b"").decode(errors="replace")
    try:
        label, uid = ids.check_key(*ids.parse_entity_key(text))
    except ValueError:
        return UNREADABLE, (text or where)[:1024]
    return (label, uid) if len(label) <= 64 and len(uid) <= 1024 else (UNREADABLE, where)


@dataclass(frozen=True)
class DeadMessage:
    """A message of the dead-letter topic, as it was copied there."""

    position: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def origin(self) -> str:
        """The change topic it was consumed from."""
        return self.headers.get("topic", "")


def read_dead(positions: Iterable[str], timeout: float | None = None) -> dict[str, DeadMessage]:
    """The dead-letter topic's messages at these positions (those the topic still holds: retention
    may have dropped the oldest). Reads each partition from the lowest position asked to the
    highest, without joining a consumer group; RetryableStoreError when the broker does not answer
    within `timeout` (default KAFKA_PUBLISH_TIMEOUT + 5 s)."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    timeout = settings.KAFKA_PUBLISH_TIMEOUT + 5 if timeout is None else timeout
    wanted: dict[tuple[str, int], set[int]] = {}
    for text in positions:
        place = parse_position(text)
        if place is not None:
            wanted.setdefault(place[:2], set()).add(place[2])
    if not wanted:
        return {}
    reader = Consumer({**client_config(), "group.id": f"{settings.KAFKA_GROUP_ID}.dlq-reader",
                       "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 50})
    found: dict[str, DeadMessage] = {}
    try:
        starts = []
        for (topic, partition), offsets in wanted.items():
            low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            offsets.intersection_update(range(low, high))
            if offsets:
                starts.append(TopicPartition(topic, partition, min(offsets)))
        if not starts:
            return {}
        reader.assign(starts)
        left = {(tp.topic, tp.partition): max(wanted[(tp.topic, tp.partition)]) for tp in starts}
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for message in reader.consume(500, timeout=0.5):
                place = (message.topic(), message.partition())
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        left.pop(place, None)
                    continue
                if message.offset() in wanted.get(place, ()):
                    text = position(*place, message.offset())
                    found[text] = DeadMessage(text, message.key(), message.value(),
                                              {k: (v or b"").decode(errors="replace") for k, v in message.headers() or []})
                if place in left and message.offset() >= left[place]:
                    left.pop(place)
    except KafkaException as exc:
        raise RetryableStoreError(f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS}: {exc}") from exc
    finally:
        reader.close()
    return found


def republish(messages: Iterable[tuple[str, bytes | None, bytes | None, list]]) -> int:
    """Publish (topic, key, value, headers) messages as they are and wait until the broker has
    acknowledged them all (RetryableStoreError otherwise): how a retried dead letter goes back to
    its change topic."""
    messages = list(messages)
    if not messages:
        return 0
    ensure_topics()
    sender = producer()
    errors: list = []
    for topic, key, value, headers in messages:
        while True:
            try:
                sender.produce(topic, key=key, value=value, headers=headers,
                               on_delivery=lambda err, msg: errors.append(err) if err is not None else None)
                break
            except BufferError:
                sender.poll(0.2)
    if sender.flush(settings.KAFKA_PUBLISH_TIMEOUT + 5) or errors:
        raise RetryableStoreError(f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS} did not acknowledge "
                                  f"re-published dead letters: {errors[0].str() if errors else 'timeout'}")
    return len(messages)


@dataclass
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # the group's committed offset (None: nothing committed yet)
    high: int  # the high watermark: the offset the next event will get
    low: int
    # The oldest waiting event (the one at the committed offset), when asked for and there is one:
    published_at: datetime | None = None  # when the broker took it
    changed_at: datetime | None = None  # the change's commit time on Neo4j's clock

    @property
    def lag(self) -> int:
        start = max(self.committed, self.low) if self.committed is not None and self.committed >= 0 else self.low
        return max(0, self.high - start)


def lag(timeout: float = 10.0, *, oldest: bool = False) -> list[PartitionLag]:
    """Consumer-group lag per change topic and partition (committed offset vs high watermark);
    `oldest`: with the times of each lagging partition's oldest waiting event (one fetch each)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({**client_config(), "group.id": settings.KAFKA_GROUP_ID, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": 20})
    try:
        metadata = consumer.list_topics(timeout=timeout)
        partitions = [TopicPartition(name, p) for name in change_topics() if name in metadata.topics
                      for p in sorted(metadata.topics[name].partitions)]
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=timeout)}
        rows = []
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            offset = committed.get((tp.topic, tp.partition))
            rows.append(PartitionLag(tp.topic, tp.partition, offset if offset is not None and offset >= 0 else None,
                                     high, low))
        if oldest:
            _read_heads(consumer, [row for row in rows if row.lag], timeout)
        return rows
    except KafkaException as exc:
        raise RetryableStoreError(f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS}: {exc}") from exc
    finally:
        consumer.close()


def _read_heads(consumer, rows: list[PartitionLag], timeout: float) -> None:
    """Fill in each row's oldest waiting event's times, reading one message per partition (assigned
    by hand: the group is not joined, nothing is committed)."""
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, TopicPartition

    if not rows:
        return
    by_place = {(row.topic, row.partition): row for row in rows}
    consumer.assign([TopicPartition(row.topic, row.partition, max(row.committed or 0, row.low)) for row in rows])
    deadline = time.monotonic() + timeout
    while by_place and time.monotonic() < deadline:
        for message in consumer.consume(len(by_place), timeout=0.2):
            row = by_place.pop((message.topic(), message.partition()), None)
            if row is None or message.error() is not None:
                continue
            kind, stamp = message.timestamp()
            if kind != TIMESTAMP_NOT_AVAILABLE:
                row.published_at = datetime.fromtimestamp(stamp / 1000, tz=UTC)
            try:
                row.changed_at = decode(message.value()).changed_at
            except ValueError:
                pass  # not a change event: the consumer dead-letters it


class LagUnknown(RetryableStoreError):
    """The broker did not answer a reading of the consumer group's lag."""


LAG_TIMEOUT = 3.0  # a reading of the lag waits this long for the broker (every page and scrape reads it)
LAG_FAILURE_REMEMBERED = 10.0  # seconds a failed reading is answered from memory, not tried again
_lag_failures: dict[tuple[str, str, str], tuple[float, str]] = {}


def lag_reading() -> list[PartitionLag]:
    """`lag()` as the queue's depth reads it (the Queue page, the overview, alert rules, /metrics):
    within LAG_TIMEOUT, or LagUnknown; while the broker is down each process asks it once every
    LAG_FAILURE_REMEMBERED seconds rather than making every reading wait."""
    key = (settings.KAFKA_BOOTSTRAP_SERVERS, settings.KAFKA_GROUP_ID, settings.KAFKA_TOPIC_PREFIX)
    failed = _lag_failures.get(key)
    if failed and time.monotonic() - failed[0] < LAG_FAILURE_REMEMBERED:
        raise LagUnknown(failed[1])
    try:
        rows = lag(timeout=LAG_TIMEOUT, oldest=True)
    except RetryableStoreError as exc:
        _lag_failures[key] = (time.monotonic(), str(exc))
        raise LagUnknown(str(exc)) from exc
    _lag_failures.pop(key, None)
    return rows

