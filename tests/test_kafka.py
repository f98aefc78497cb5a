"""SYNC_TRANSPORT=kafka against a real Apache Kafka 4 broker (KRaft, tools/kafka), started by this
module on free ports with its own data directory: events keyed Label:uid in order, a foreign write
reaching the index through the consumer group, a broker outage during capture, a consumer killed
mid-batch."""

from __future__ import annotations

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

from sync import capture, queue
from sync.ids import vector_id
from sync.models import ChangeCursor, SyncEvent, SyncRecord
from sync.stores.base import RetryableStoreError
from sync.transport import consumer, kafka
from tests.test_settings import run_check
from tests.test_worker_processes import actors, assert_exact, current_database_url, manage, worker_env

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
            assert victim.poll() is None, victim.communicate()
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
