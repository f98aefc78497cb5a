"""SYNC_TRANSPORT=kafka against a real Apache Kafka 4 broker (KRaft, tools/kafka), started by this
module on free ports with its own data directory: events keyed Label:uid in order, a foreign write
reaching the index through the consumer group, a broker outage during capture, a consumer killed
mid-batch, HIGH kept fresh by two consumers while a LOW backlog drains, a poison event through the
dead-letter topic and back, and the queue's depth read from the group's lag everywhere."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from sync import backfill, capture, deadletters, queue, writes
from sync.ids import vector_id
from sync.models import AuditEntry, Backfill, ChangeCursor, Priority, SyncEvent, SyncRecord
from sync.observe import alerting, readings
from sync.stores import use_vector_store
from sync.stores.base import RetryableStoreError
from sync.transport import consumer, kafka
from tests.test_observe_metrics import scrape, value
from tests.test_settings import run_check
from tests.test_worker_processes import (
    actors,
    assert_exact,
    current_database_url,
    manage,
    outputs,
    tail,
    worker_env,
)

ROOT = Path(__file__).resolve().parent.parent
KAFKACTL = ROOT / "tools" / "kafka" / "kafkactl.py"
pytestmark = pytest.mark.django_db(transaction=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """A tools/kafka broker of this test session: its own ports and data directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kafka-", dir=ROOT / "var"))
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                    "KAFKA_CONTROLLER_PORT": str(free_port()), "KAFKA_LOCAL_DIR": str(self.root)}

    def ctl(self, command: str) -> None:
        result = subprocess.run([sys.executable, str(KAFKACTL), command], env=self.env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"kafkactl {command}: {result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def broker():
    broker = Broker()
    broker.ctl("start")
    yield broker
    broker.ctl("stop")
    shutil.rmtree(broker.root, ignore_errors=True)


@pytest.fixture
def on_kafka(broker, settings):
    """This test's transport: Kafka, with topics and a consumer group of its own."""
    name = f"t{uuid.uuid4().hex[:10]}"
    settings.SYNC_TRANSPORT = "kafka"
    settings.KAFKA_BOOTSTRAP_SERVERS = broker.bootstrap
    settings.KAFKA_TOPIC_PREFIX = f"{name}.changes"
    settings.KAFKA_GROUP_ID = f"{name}-group"
    settings.KAFKA_PARTITIONS = 3
    settings.KAFKA_PUBLISH_TIMEOUT = 3.0
    settings.KAFKA_SESSION_TIMEOUT_MS = 6000
    settings.KAFKA_BATCH_SECONDS = 0.5
    kafka._drop_producer()
    yield broker
    kafka._drop_producer()


def cypher(graph, query, **params):
    records, _, _ = graph.driver.execute_query(query, params, database_=graph.database)
    return records


def read_topics(topics, expected: int, timeout: float = 30.0) -> list:
    """Every message of these topics, read by a group of its own (not the sync group)."""
    from confluent_kafka import Consumer

    reader = Consumer({**kafka.client_config(), "group.id": f"reader-{uuid.uuid4().hex}",
                       "auto.offset.reset": "earliest", "enable.auto.commit": False})
    reader.subscribe(topics)
    found = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            found += [m for m in reader.consume(100, timeout=0.5) if m.error() is None]
    finally:
        reader.close()
    return found


def consume_until_idle(**kwargs):
    return consumer.run(idle_exit=3.0, batch_seconds=0.5, name="kafka-test", **kwargs)


def test_a_high_event_does_not_wait_for_its_batch_to_fill(on_kafka):
    """A poll fills its batch for up to batch_seconds, unless a HIGH event is in hand: then the
    batch is what has arrived (with 100 events or 5 s, a KEV waited up to 5 s behind its commit)."""
    sender = kafka.producer()
    kafka.ensure_topics()
    for priority, n in ((Priority.LOW, 3), (Priority.HIGH, 1)):
        for i in range(n):
            sender.produce(kafka.topic_for(priority), key=f"Label:u{i}".encode(), value=b"-")
    assert sender.flush(10) == 0
    taker = consumer.ChangeConsumer("kafka-urgent", batch_size=100, batch_seconds=60)
    try:
        started = time.monotonic()
        batch = []
        while not any(m.topic() == kafka.topic_for(Priority.HIGH) for m in batch):
            assert time.monotonic() - started < 60
            batch += taker.poll()
        waited = time.monotonic() - started
    finally:
        taker.close()
    assert waited < 30, f"the HIGH event waited {waited:.1f}s for a batch of 100"


def test_changes_are_keyed_in_order_and_a_foreign_write_reaches_the_index(synced_graph, vectors, on_kafka):
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt29', name: 'APT29', description: 'Russian SVR actor'})")
    cypher(synced_graph, "CREATE (:Vulnerability {uid: 'CVE-2024-0001', name: 'CVE-2024-0001', "
                         "description: 'A remote code execution flaw'})")
    assert capture.poll_once("test", overlap=0).enqueued == 2
    for text in ("Cozy Bear, SVR", "Cozy Bear, SVR, Midnight Blizzard"):
        cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'apt29'}) SET a.description = $text", text=text)
        assert capture.poll_once("test", overlap=0).enqueued == 1

    messages = read_topics(kafka.change_topics(), 4)
    actor = [m for m in messages if m.key() == b"ThreatActor:apt29"]
    assert len(messages) == 4 and len(actor) == 3
    assert {m.topic() for m in actor} == {kafka.topic_for(queue.priority_of("ThreatActor"))}
    assert len({m.partition() for m in actor}) == 1  # one key, one partition
    decoded = [kafka.decode(m.value()) for m in sorted(actor, key=lambda m: m.offset())]
    assert [d.version for d in decoded] == [1, 2, 3]  # per-key order kept
    assert decoded[0].changed_at is not None and decoded[0].operation == "upsert"
    assert {m.key() for m in messages} == {b"ThreatActor:apt29", b"Vulnerability:CVE-2024-0001"}

    totals = consume_until_idle()
    assert totals.messages == 4 and totals.committed == 4 and totals.dead_lettered == 0
    record = vectors.fetch([vector_id("ThreatActor", "apt29")])[vector_id("ThreatActor", "apt29")]
    assert record.metadata["version"] == 3 and "Midnight Blizzard" in record.metadata["text"]
    assert SyncRecord.objects.get(label="ThreatActor", uid="apt29").status == "in_sync"
    applied = SyncEvent.objects.get(label="ThreatActor", uid="apt29", outcome="upserted")
    assert applied.source == "kafka" and applied.lag_seconds is not None  # on Neo4j's clock (sync.apply)
    assert sum(p.lag for p in kafka.lag()) == 0  # every offset committed after the write


def test_capture_publishes_a_change_once_however_often_its_overlap_window_reads_it(synced_graph, vectors,
                                                                                   on_kafka):
    # On Kafka a published change is no queued row: capture remembers what it published, or each
    # poll would publish again every change of its overlap window not yet applied.
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt29', name: 'APT29', description: 'Russian SVR actor'})")
    assert capture.poll_once("test", overlap=30).enqueued == 1
    assert [capture.poll_once("test", overlap=30).enqueued for _ in range(3)] == [0, 0, 0]
    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'apt29'}) SET a.description = 'Cozy Bear'")
    assert capture.poll_once("test", overlap=30).enqueued == 1  # a new version is published
    assert capture.poll_once("test", overlap=30).enqueued == 0
    assert len(read_topics(kafka.change_topics(), 3, timeout=5)) == 2


def test_a_broker_outage_during_capture_loses_nothing(synced_graph, vectors, on_kafka):
    synced_graph.import_entities("ThreatActor", [{"uid": f"a{n}", "name": f"Actor {n}"} for n in range(5)],
                                 source="test")
    assert capture.poll_once("test", overlap=0).enqueued == 5
    before = ChangeCursor.objects.get(name=capture.CURSOR).updated_at

    on_kafka.ctl("stop")
    stopped = time.monotonic()
    try:
        synced_graph.import_entities("ThreatActor", [{"uid": f"b{n}", "name": f"Actor B{n}"} for n in range(20)],
                                     source="test")
        cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'a0'}) SET a.description = 'changed while down'")
        failures = 0
        while time.monotonic() - stopped < 30:  # the broker is down for 30 s; capture keeps polling
            with pytest.raises(RetryableStoreError):
                capture.poll_once("test", overlap=0)
            failures += 1
            cursor = ChangeCursor.objects.get(name=capture.CURSOR)
            assert cursor.updated_at == before  # nothing acknowledged: the cursor waits
            assert "Kafka" in cursor.last_error  # and says why (the overview and sync_status show it)
    finally:
        on_kafka.ctl("start")
    assert failures >= 2
    result = capture.poll_once("test", overlap=0)
    assert result.enqueued == 21
    assert ChangeCursor.objects.get(name=capture.CURSOR).last_error == ""

    consume_until_idle()
    assert_exact(vectors, synced_graph, 25)
    record = vectors.fetch([vector_id("ThreatActor", "a0")])[vector_id("ThreatActor", "a0")]
    assert record.metadata["version"] == 2 and "changed while down" in record.metadata["text"]
    # Duplicates in effect: none (one upsert per entity; a0's two versions met in one batch).
    upserts = SyncEvent.objects.filter(outcome="upserted").values_list("label", "uid")
    assert len(upserts) == len(set(upserts)) == 25


def test_a_change_event_carries_the_backfill_its_work_was_handed_to():
    work = queue.Work("KEV", "CVE-2024-0001", version=3, priority=Priority.HIGH, source="import", backfill=7)
    assert kafka.decode(kafka.encode(work)).backfill == 7
    assert kafka.decode(kafka.encode(dataclasses.replace(work, backfill=None))).backfill is None
    for wrong in (True, 0, -1, "7", 1.5):
        event = json.loads(kafka.encode(work))
        event["metadata"]["backfill"] = wrong
        with pytest.raises(ValueError, match="backfill"):
            kafka.decode(json.dumps(event).encode())


def test_a_backfill_on_kafka_keeps_its_work_apart_and_finishes(synced_graph, vectors, on_kafka):
    """Its events carry it (so streaming lag is not the bulk load's), it waits while its work is in
    the topics, and it finishes: also for an entity a streaming change took over in the same
    batch, and for work naming a backfill this database does not hold (applied as streaming)."""
    synced_graph.import_entities("ThreatActor", [{"uid": f"a{n}", "name": f"Actor {n}"} for n in range(6)],
                                 source="test")
    load = backfill.start(Backfill.Kind.RESYNC, scope="ThreatActor", total=6)
    with backfill.tracking(load):
        queue.enqueue_many([queue.Work("ThreatActor", f"a{n}", version=1, source="resync") for n in range(6)])
    load.refresh_from_db()
    assert load.enqueued == 6 and load.loaded_at is not None
    queued = backfill.progress_of(load)
    assert queued.waiting == 6 and queued.done == 0 and not queued.finished  # all still in the topics
    # In the backfill topic, behind the streaming changes: counted apart from the streaming depth.
    assert len(read_topics([kafka.backfill_topic()], 6)) == 6
    lanes = queue.lanes()
    assert sum(lane.depth for lane in lanes.values()) == 0 and sum(lane.backfill for lane in lanes.values()) == 6
    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'a0'}) SET a.description = 'changed', a.version = 2")
    queue.enqueue_many([queue.Work("ThreatActor", "a0", version=2, source="capture")])  # streaming
    queue.enqueue_many([queue.Work("ThreatActor", "a5", version=1, source="resync", backfill=load.pk + 99)])

    # Idle for longer than the others wait: the first test of a session joins the group on topics
    # made a moment ago, which can take a few seconds.
    consumer.run(idle_exit=10.0, batch_seconds=0.5, batch_size=100, name="kafka-test")
    assert_exact(vectors, synced_graph, 6)
    shown = backfill.progress_of(load)
    assert shown.finished and shown.done == 6 and shown.failed == 0
    assert backfill.settle() == 1
    applied = SyncEvent.objects.filter(outcome__in=["upserted", "unchanged"])
    assert {e.uid for e in applied if e.backfill_id == load.pk} >= {f"a{n}" for n in range(1, 5)}
    assert SyncEvent.objects.filter(uid="a0", backfill=load, status="done").exists()
    assert not SyncEvent.objects.filter(backfill_id=load.pk + 99).exists()
    assert Backfill.objects.get(pk=load.pk).enqueued == 6  # the consumer handed nothing over again


def test_backfill_work_a_streaming_change_takes_over_in_a_claim_is_finished_for_its_backfill():
    load = backfill.start(Backfill.Kind.RESYNC, total=2)
    works = [queue.Work("ThreatActor", "a0", version=1, source="resync", backfill=load.pk),
             queue.Work("ThreatActor", "a0", version=2, source="kafka"),
             queue.Work("ThreatActor", "a1", version=1, source="resync", backfill=load.pk)]
    claimed = {e.uid: e for e in queue.claim_works(works, "kafka-test", handing_over=False)}
    assert claimed["a0"].backfill_id is None and claimed["a0"].version == 2  # a streaming change now
    assert claimed["a1"].backfill_id == load.pk
    left = SyncEvent.objects.get(backfill=load, uid="a0")
    assert (left.status, left.outcome, left.source) == ("done", "superseded", "resync")
    load.refresh_from_db()
    assert load.enqueued == 0  # handing_over=False: counted where it was published


@pytest.mark.slow
def test_a_consumer_killed_mid_batch_is_redelivered_to_another(synced_graph, vectors, on_kafka, tmp_path):
    count = 150
    actors(synced_graph, count)
    assert capture.poll_once("test", overlap=0).enqueued == count
    env = worker_env(tmp_path, current_database_url(), SYNC_TRANSPORT="kafka",
                     KAFKA_BOOTSTRAP_SERVERS=on_kafka.bootstrap, KAFKA_TOPIC_PREFIX=settings.KAFKA_TOPIC_PREFIX,
                     KAFKA_GROUP_ID=settings.KAFKA_GROUP_ID, KAFKA_SESSION_TIMEOUT_MS="6000",
                     KAFKA_BATCH_SECONDS="0.5", KAFKA_BATCH_SIZE="25")
    victim = manage("consume", "--name", "kafka-victim", env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = SyncEvent.objects.filter(status="done", source="kafka").count()
            flying = SyncEvent.objects.filter(status="in_flight", claim_token__startswith="kafka-victim").count()
            if done >= 25 and flying:
                break
            assert victim.poll() is None, outputs(victim)
            time.sleep(0.05)
        else:
            pytest.fail("the consumer never had a batch in flight after committing one")
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
    in_flight = SyncEvent.objects.filter(status="in_flight", claim_token__startswith="kafka-victim").count()
    assert in_flight  # killed mid-batch: its claim is left behind, its offsets uncommitted

    totals = consumer.run(idle_exit=8.0, batch_seconds=0.5, name="kafka-heir")  # waits out the rebalance
    assert totals.messages > 0
    assert_exact(vectors, synced_graph, count)  # the index equals the graph
    assert SyncEvent.objects.filter(status="in_flight").count() == 0  # the dead claim was taken over
    assert sum(p.lag for p in kafka.lag()) == 0
    upserts = SyncEvent.objects.filter(outcome="upserted").values_list("uid", "version")
    assert len(upserts) == len(set(upserts)) == count  # duplicates in effect: none


def test_a_write_paths_change_event_names_the_properties_it_changed(synced_graph, vectors, on_kafka):
    writes.write_entity("ThreatActor", "apt28", {"name": "APT28", "description": "GRU"}, source="feed")
    writes.write_entity("ThreatActor", "apt28", {"name": "APT28", "description": "GRU unit 26165"}, source="feed")
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt41', name: 'APT41'})")  # a foreign write
    capture.poll_once("test", overlap=0)
    events = {}
    for message in read_topics([kafka.topic_for(Priority.MEDIUM)], 4):  # capture publishes apt28 v2 again
        data = json.loads(message.value())
        events[(message.key(), data["event"]["version"], data["metadata"]["source"])] = data["event"]
    assert events[(b"ThreatActor:apt28", 1, "write")]["changed"] == ["description", "name", "source", "uid"]
    assert events[(b"ThreatActor:apt28", 2, "write")]["changed"] == ["description"]
    assert events[(b"ThreatActor:apt41", 1, "capture")]["changed"] is None  # capture reads versions only


def group_members() -> int:
    """Members of the sync group holding partitions, once the group is stable (0 before)."""
    from confluent_kafka import ConsumerGroupState, KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka.client_config())
    [future] = admin.describe_consumer_groups([settings.KAFKA_GROUP_ID], request_timeout=10).values()
    try:
        group = future.result()
    except KafkaException:  # the group's coordinator is still being chosen
        return 0
    if group.state != ConsumerGroupState.STABLE:
        return 0
    return sum(1 for member in group.members if member.assignment.topic_partitions)


def index_without_embedding(vectors, graph, label: str, uids: list[str]) -> None:
    """Vectors for these entities as apply writes them (`build_document`: ids, text snippets, content
    hash, model), with a constant vector instead of an embedding: what the test needs of them is
    that a later change of metadata only is applied as one, without embedding."""
    from sync.policy import build_document
    from sync.stores.base import VectorRecord

    for start in range(0, len(uids), 1000):
        entities = graph.get_entities([(label, uid) for uid in uids[start:start + 1000]])
        vectors.upsert([VectorRecord(chunk.vector_id, [0.05] * 384, chunk.metadata)
                        for entity in entities.values() for chunk in build_document(entity).chunks])


@pytest.mark.slow
def test_high_stays_fresh_while_two_consumers_drain_a_low_backlog(synced_graph, vectors, on_kafka, tmp_path):
    """5,000 LOW events (metadata-only changes of indexed reports) wait; two consumers of the group
    share the partitions; a KEV entry (HIGH) changes every half second meanwhile. Each KEV change
    reaches the index within HIGH's freshness target, and ahead of the backlog: one made while
    2,000 or more LOW events waited was applied while 1,000 or more still did (without the pausing
    it would wait behind its consumer's prefetched share of the backlog)."""
    backlog, kevs = 5000, 4
    uids = [f"r{n:04d}" for n in range(backlog)]
    synced_graph.import_entities("Report", [{"uid": uid, "title": f"Report {uid}", "doc_type": "report"}
                                            for uid in uids], source="test")
    index_without_embedding(vectors, synced_graph, "Report", uids)
    synced_graph.import_entities("KEV", [{"uid": f"CVE-2099-{n:04d}", "cve_id": f"CVE-2099-{n:04d}",
                                          "short_description": "Initial entry"} for n in range(kevs)], source="test")
    cypher(synced_graph, "MATCH (r:Report) SET r.doc_type = 'advisory'")  # a foreign write: metadata only
    env = worker_env(tmp_path, current_database_url(), SYNC_TRANSPORT="kafka",
                     KAFKA_BOOTSTRAP_SERVERS=on_kafka.bootstrap, KAFKA_TOPIC_PREFIX=settings.KAFKA_TOPIC_PREFIX,
                     KAFKA_GROUP_ID=settings.KAFKA_GROUP_ID, KAFKA_SESSION_TIMEOUT_MS="6000",
                     KAFKA_BATCH_SECONDS="0.5")
    kafka.ensure_topics()
    consumers = [manage("consume", "--name", f"kafka-{n}", env=env) for n in range(2)]
    reports = SyncEvent.objects.filter(label="Report", status="done", outcome="metadata_only")
    changes = []  # (uid, version, its time on Neo4j's clock, LOW events waiting when it was made)
    try:
        deadline = time.monotonic() + 400
        while group_members() < 2:  # both started and share the partitions: their start is not measured
            assert time.monotonic() < deadline, f"the consumers never joined the group: {[tail(p) for p in consumers]}"
            for process in consumers:
                assert process.poll() is None, outputs(process)
            time.sleep(0.5)
        assert capture.poll_once("test", overlap=0).enqueued == backlog + kevs
        started = time.monotonic()
        n = 0
        while reports.count() < backlog:
            assert time.monotonic() < deadline, (f"{reports.count()} of {backlog} LOW events applied; the "
                                                 f"consumers' logs end: {[tail(p) for p in consumers]}")
            for process in consumers:
                assert process.poll() is None, outputs(process)
            time.sleep(0.5)
            waiting = backlog - reports.count()
            uid = f"CVE-2099-{n % kevs:04d}"
            _, now = synced_graph.write_entity("KEV", uid, {"short_description": f"Update {n}"}, source="test")
            assert capture.poll_once("test", overlap=0).enqueued == 1
            changes.append((uid, now.version, now.updated_at, waiting))
            n += 1
        drained = time.monotonic() - started
        while sum(p.lag for p in kafka.lag()):
            assert time.monotonic() < deadline, f"the last KEV changes were never applied: {[tail(p) for p in consumers]}"
            time.sleep(0.2)
    finally:
        for process in consumers:
            process.terminate()
        for process in consumers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    target = settings.FRESHNESS_TARGETS["high"]
    applied = list(SyncEvent.objects.filter(label="KEV", outcome="upserted").order_by("finished_at"))
    lags = []
    for uid, version, changed_at, waiting in changes:
        # The first apply of the entry at this version or later (two changes may meet in a batch,
        # and a first change meets the entry's creation, whose lag runs from before the test).
        event = next(e for e in applied if e.uid == uid and e.version >= version)
        lag = (event.finished_at - changed_at).total_seconds()  # one host: Neo4j's clock is ours
        lags.append(lag)
        assert lag <= target, (uid, version, waiting, lag)
        if waiting >= 2000:
            still = backlog - reports.filter(finished_at__lte=event.finished_at).count()
            assert still >= 1000, f"a KEV change made with {waiting} LOW waiting was applied with {still} left"
    assert sum(1 for *_, waiting in changes if waiting >= 2000) >= 2, changes  # the test saw a backlog
    assert SyncRecord.objects.filter(label="Report", status="in_sync").count() == backlog
    assert SyncEvent.objects.filter(label="Report", outcome="upserted").count() == 0  # nothing embedded
    assert sum(p.lag for p in kafka.lag()) == 0
    print(f"\nLOW backlog of {backlog} metadata-only events drained by 2 consumers in {drained:.0f} s; HIGH "
          f"lag over {len(lags)} changes: p50 {readings.percentiles(lags, 0.5)[0]:.2f} s, max {max(lags):.2f} s "
          f"(target {target:.0f} s); by LOW waiting: {[(w, round(lag, 1)) for (*_, w), lag in zip(changes, lags, strict=True)]}")


def test_a_consumer_holds_low_while_high_waits_and_gives_an_aged_low_its_share(on_kafka, settings):
    """HIGH first: while HIGH has a backlog a poll brings no LOW. Once LOW has been held for
    SYNC_STARVATION_SECONDS (0 here), every poll carries at most a quarter of LOW; what a poll
    leaves out is read again later, so every message comes once, each partition's in order."""
    sender = kafka.producer()
    kafka.ensure_topics()

    def publish(priority, n, start=0):
        for i in range(start, start + n):
            sender.produce(kafka.topic_for(priority), key=f"Label:u{i}".encode(), value=b"-")
        assert sender.flush(10) == 0

    publish(Priority.LOW, 300)
    publish(Priority.HIGH, 300)
    taker = consumer.ChangeConsumer("kafka-share", batch_size=100, batch_seconds=0.5)
    seen: dict[tuple[str, int], list[int]] = {}
    batches = []

    def poll_until(done) -> None:
        deadline = time.monotonic() + 60
        while not done():
            assert time.monotonic() < deadline, {k: len(v) for k, v in seen.items()}
            batch = taker.poll()
            lanes = [kafka.topic_for(Priority.HIGH) == m.topic() for m in batch]
            held = Priority.LOW in taker.held_since  # HIGH had a backlog when this poll began
            batches.append((lanes.count(True), lanes.count(False), held))
            for message in batch:
                seen.setdefault((message.topic(), message.partition()), []).append(message.offset())

    def count(priority) -> int:
        return sum(len(v) for (topic, _), v in seen.items() if topic == kafka.topic_for(priority))

    try:
        settings.SYNC_STARVATION_SECONDS = 3600
        poll_until(lambda: count(Priority.HIGH) == 300)
        assert count(Priority.LOW) == 0, str(batches)  # held while HIGH had a backlog
        settings.SYNC_STARVATION_SECONDS = 0
        aged = len(batches)
        for start in range(300, 600, 30):  # HIGH keeps coming
            publish(Priority.HIGH, 30, start=start)
            poll_until(lambda n=start + 30: count(Priority.HIGH) == n)
        share = [low for _, low, held in batches[aged:] if held]
        assert any(share) and all(low <= 25 for low in share), str(batches)
        poll_until(lambda: count(Priority.LOW) == 300)
    finally:
        taker.close()
    for offsets in seen.values():
        assert offsets == list(range(len(offsets))), offsets  # each once, in order, none skipped


def test_a_consumer_holds_the_backfill_topic_while_a_streaming_lane_has_a_backlog(on_kafka, settings):
    """The backfill topic is the lane behind LOW: a bulk load's work never sits in front of a
    streaming change (as the outbox claims it with what is left of a batch), and still moves on
    in the aged share."""
    sender = kafka.producer()
    kafka.ensure_topics()
    for topic, n in ((kafka.backfill_topic(), 200), (kafka.topic_for(Priority.MEDIUM), 200)):
        for i in range(n):
            sender.produce(topic, key=f"Label:u{i}".encode(), value=b"-")
    assert sender.flush(10) == 0
    settings.SYNC_STARVATION_SECONDS = 3600
    taker = consumer.ChangeConsumer("kafka-backfill-lane", batch_size=100, batch_seconds=0.5)
    counts = {kafka.backfill_topic(): 0, kafka.topic_for(Priority.MEDIUM): 0}
    try:
        deadline = time.monotonic() + 60
        while counts[kafka.topic_for(Priority.MEDIUM)] < 200:
            assert time.monotonic() < deadline, counts
            for message in taker.poll():
                counts[message.topic()] += 1
        assert counts[kafka.backfill_topic()] == 0  # held while MEDIUM had a backlog
        while counts[kafka.backfill_topic()] < 200:  # then it moves
            assert time.monotonic() < deadline, counts
            for message in taker.poll():
                counts[message.topic()] += 1
    finally:
        taker.close()


class Refusing:
    """The real store, failing one entity's vectors (a request of its own that keeps failing)."""

    def __init__(self, inner, uid: str):
        self.inner, self.prefix = inner, vector_id("ThreatActor", uid)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def upsert(self, records):
        keep = [r for r in records if not r.id.startswith(self.prefix)]
        result = self.inner.upsert(keep)
        for record in records:
            if record not in keep:
                result.failed[record.id] = "503 Service Unavailable"
                result.retryable.add(record.id)
        return result


def test_a_poison_event_goes_to_the_dlq_and_a_retry_from_the_queue_page_republishes_it(
        client, analyst_user, synced_graph, vectors, on_kafka, settings):
    settings.SYNC_MAX_ATTEMPTS = 3
    settings.SYNC_BACKOFF_BASE, settings.SYNC_BACKOFF_MAX, settings.KAFKA_RETRY_BACKOFF_MAX = 0.05, 0.2, 0.5
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'fine', name: 'Fine'}), (:ThreatActor {uid: 'poison', name: 'P'})")
    assert capture.poll_once("test", overlap=0).enqueued == 2
    sender = kafka.producer()  # and a message that is not a change event at all
    sender.produce(kafka.topic_for(Priority.MEDIUM), key=b"ThreatActor:garbled", value=b"{not json")
    assert sender.flush(10) == 0
    use_vector_store(Refusing(vectors, "poison"))

    totals = consume_until_idle()
    assert totals.dead_lettered == 2 and sum(p.lag for p in kafka.lag()) == 0  # committed all the same
    poison = SyncEvent.objects.get(status="dead", uid="poison")
    garbled = SyncEvent.objects.get(status="dead", uid="garbled")
    assert poison.attempts == 3 and "503 Service Unavailable" in poison.last_error
    assert garbled.label == "ThreatActor" and garbled.last_error.startswith("not a change event")
    letters = {m.key(): m for m in read_topics([kafka.dlq_topic()], 2)}
    assert set(letters) == {b"ThreatActor:poison", b"ThreatActor:garbled"}
    headers = dict(letters[b"ThreatActor:poison"].headers())
    assert headers["attempts"] == b"3" and b"503 Service Unavailable" in headers["error"] and headers["event"] == str(poison.id).encode()
    assert headers["topic"] == kafka.topic_for(Priority.MEDIUM).encode()
    for event, message in ((poison, letters[b"ThreatActor:poison"]), (garbled, letters[b"ThreatActor:garbled"])):
        assert event.dlq_position == kafka.position(message.topic(), message.partition(), message.offset())

    client.force_login(analyst_user)  # the Queue page lists the dead-letter topic's events
    assert {g.label for g in client.get("/queue/").context["groups"]} == {"ThreatActor"}
    listing = client.get("/queue/dead/", {"label": "ThreatActor"}).content.decode()
    assert "ThreatActor:poison" in listing and "ThreatActor:garbled" in listing

    reachable = settings.KAFKA_BOOTSTRAP_SERVERS
    settings.KAFKA_BOOTSTRAP_SERVERS, settings.KAFKA_PUBLISH_TIMEOUT = f"127.0.0.1:{free_port()}", 1.0
    kafka._drop_producer()
    assert client.post("/queue/dead/retry", {"ids": [poison.id]}).status_code == 302  # no broker: nothing changes
    [message] = [str(m) for m in client.get("/queue/").context["messages"]]
    assert message.startswith("0 of 1 dead letters were retried, then: Kafka at 127.0.0.1:")
    assert SyncEvent.objects.get(pk=poison.pk).status == "dead" and not AuditEntry.objects.filter(
        action="dead_letter.retry").exists()
    settings.KAFKA_BOOTSTRAP_SERVERS, settings.KAFKA_PUBLISH_TIMEOUT = reachable, 3.0
    kafka._drop_producer()

    use_vector_store(vectors)  # the fix; then the analyst retries the poison event from the page
    response = client.post("/queue/dead/retry", {"ids": [poison.id]})
    assert response.status_code == 302
    [message] = [str(m) for m in client.get("/queue/").context["messages"]]
    assert message.startswith("Retried 1 dead letter: they are re-published to their Kafka topic")
    poison.refresh_from_db()
    assert (poison.status, poison.outcome) == ("done", "republished")
    entry = AuditEntry.objects.get(action="dead_letter.retry", target="ThreatActor:poison")
    assert entry.actor == analyst_user and entry.after["republished_to"] == kafka.topic_for(Priority.MEDIUM)
    again = [m for m in read_topics([kafka.topic_for(Priority.MEDIUM)], 4) if m.key() == b"ThreatActor:poison"]
    assert len(again) == 2 and dict(again[-1].headers() or [])["retry-of"] == poison.dlq_position.encode()

    assert consume_until_idle().dead_lettered == 0
    record = vectors.fetch([vector_id("ThreatActor", "poison")])[vector_id("ThreatActor", "poison")]
    assert record.metadata["uid"] == "poison"
    assert SyncRecord.objects.get(label="ThreatActor", uid="poison").status == "in_sync"

    assert deadletters.discard(deadletters.Selection(ids=(garbled.id,)), analyst_user).done == 1  # dropped, audited
    assert AuditEntry.objects.filter(action="dead_letter.discard", target="ThreatActor:garbled").exists()
    assert deadletters.count(deadletters.Selection(as_of=None)) == 0


def test_the_queue_depth_is_the_consumer_groups_lag_everywhere(client, viewer, synced_graph, vectors, on_kafka,
                                                                settings):
    synced_graph.import_entities("Report", [{"uid": f"r{n}", "title": f"Report {n}"} for n in range(7)], source="test")
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt1', name: 'APT1'})")
    assert capture.poll_once("test", overlap=0).enqueued == 8

    reading = readings.read()  # what the overview, the alert rules and /metrics read
    assert (reading.queue_depth, reading.depth_of("low"), reading.depth_of("medium")) == (8, 7, 1)
    assert reading.oldest_unsynced["low"] is not None and reading.oldest_unsynced["high"] is None
    settings.ALERT_QUEUE_DEPTH = 5
    finding = alerting.BY_KEY["queue_depth"].check(reading, None)
    assert finding.holds and "LOW 7" in finding.summary
    scraped = scrape(client, settings)
    assert value(scraped, "sync_queue_depth", priority="low") == 7
    assert value(scraped, "sync_queue_depth", priority="medium") == 1
    client.force_login(viewer)
    assert "HIGH 0 · MEDIUM 1 · LOW 7" in client.get("/").content.decode()  # the overview's depth card
    page = client.get("/queue/")
    state = page.context["summary"]
    assert state.depth == 8 and sum(p.lag for p in state.partitions) == 8
    assert {p.topic for p in state.partitions} == set(kafka.change_topics())
    assert all(p.committed is None for p in state.partitions)
    html = page.content.decode()
    assert "Consumer group lag" in html and kafka.topic_for(Priority.LOW) in html

    consume_until_idle()
    state = client.get("/queue/").context["summary"]
    assert state.depth == 0 and all(p.lag == 0 for p in state.partitions)
    assert sum(p.committed or 0 for p in state.partitions) == sum(p.high for p in state.partitions) == 8
    assert readings.read().queue_depth == 0

    settings.KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{free_port()}"  # no broker there
    page = client.get("/queue/")
    assert page.status_code == 200 and page.context["summary"].lag_error
    assert "lag unknown" in page.content.decode()
    assert readings.read().queue_depth == 0  # only what is in flight is counted meanwhile


@pytest.mark.parametrize(("env", "message"), [
    ({"SYNC_TRANSPORT": "rabbitmq"}, "SYNC_TRANSPORT must be one of outbox, kafka, got 'rabbitmq'"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "broker.example"}, "KAFKA_BOOTSTRAP_SERVERS must be host:port"),
    ({"KAFKA_TOPIC_PREFIX": "neo4j changes"}, "KAFKA_TOPIC_PREFIX may hold only"),
    ({"SYNC_TRANSPORT": "kafka", "KAFKA_SECURITY_PROTOCOL": "sasl_ssl"},
     "KAFKA_SASL_USERNAME must be set when KAFKA_SECURITY_PROTOCOL=sasl_ssl"),
])
def test_bad_transport_settings_stop_start_up_naming_the_variable(tmp_path, env, message):
    result = run_check(tmp_path, **env)
    assert result.returncode != 0 and message in result.stderr
