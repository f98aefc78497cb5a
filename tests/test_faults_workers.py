"""Faults of the workers, with real processes and real signals (issue 20, "Workers").

Every case states its expected outcome and ends with the same check (tests/consistency.py): the
vector index equals the graph and no work is left waiting.

- A django-q2 worker, or `manage.py drain`, SIGKILLed in the middle of a batch: the batch's
  events come back when their lease runs out and are applied once more; nothing is lost.
- A worker frozen (SIGSTOP) past its lease while another takes its events over: when it wakes up
  its results are dropped (`fenced`), never written over the newer version.
- django-q2's timeout (SIGALRM) in the middle of embedding: the batch goes back uncounted.
- ANY process of the cluster (`manage.py workers`) SIGKILLed, as an OOM killer would: its main
  process, the sentinel, the pusher, the monitor, an idle worker (one blocked reading the task
  queue, holding that queue's lock), a busy worker. The cluster heals itself — a drain asked for
  afterwards is applied and its result recorded — or, for the main process, the rest of it stops
  by itself with a clear log line (its supervisor then starts it again); in every case a SIGTERM
  to the process group leaves no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from django_q.models import Task
from django_q.tasks import async_task

from sync import capture, embedding, queue, worker
from sync.apply import apply_events
from sync.models import SyncEvent
from tests.consistency import assert_index_matches_graph
from tests.test_stopping import (
    STOP_WITHIN_SECONDS,
    database_url,
    group_members,
    kill_group,
    output,
    start,
    stop_group,
    wait_until,
)
from tests.test_sync_engine import cypher
from tests.test_worker_processes import actors, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def enqueued(count: int) -> None:
    assert capture.poll_once("test", overlap=0).enqueued == count


def all_done() -> bool:
    return not SyncEvent.objects.exclude(status="done").exists()


def claimants() -> set[int]:
    """Pids of the processes holding a batch now (a claim token starts with host:pid)."""
    tokens = SyncEvent.objects.filter(status="in_flight").values_list("claim_token", flat=True).distinct()
    return {int(token.split(":")[1]) for token in tokens if token.count(":") >= 2}


def manage(*args: str, env: dict, tmp_path: Path):
    return start([sys.executable, "manage.py", *args], env, tmp_path)


# --- drain and django-q2 worker killed mid-batch -------------------------------------------------

def test_a_drain_killed_mid_batch_loses_nothing(synced_graph, vectors, tmp_path):
    """Expected: the killed drain's batch is claimed again once its lease expires (the one case
    that costs an attempt) and another worker applies everything."""
    count = 80
    actors(synced_graph, count)
    enqueued(count)
    env = worker_env(tmp_path, database_url(), SYNC_VISIBILITY_TIMEOUT="3")
    victim = manage("drain", "--until-empty", "--batch-size", "25", env=env, tmp_path=tmp_path)
    try:
        wait_until(lambda: victim.pid in claimants() and SyncEvent.objects.filter(status="done").exists(),
                   "the drain's second batch in flight", proc=victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        kill_group(victim)
    orphaned = SyncEvent.objects.filter(status="in_flight").count()
    assert orphaned

    time.sleep(3.5)  # the killed drain's lease runs out
    worker.drain(idle_exit=0)  # another worker (this process)
    assert SyncEvent.objects.filter(attempts=2).count() == orphaned  # redelivered once, no more
    assert_index_matches_graph(synced_graph, vectors)


# --- two workers after a lease expiry ---------------------------------------------------------

def freeze(proc) -> None:
    """SIGSTOP the process at a moment it holds no SQLite write lock (a lease renewal is a short
    write: a process frozen inside one would lock every other worker out)."""
    path = connection.settings_dict["NAME"]
    for _ in range(100):
        proc.send_signal(signal.SIGSTOP)
        probe = sqlite3.connect(path, timeout=0.5)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return
        except sqlite3.OperationalError:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()
    pytest.fail("could not freeze the worker outside a write transaction")


def test_a_worker_frozen_past_its_lease_is_fenced_when_it_wakes(synced_graph, vectors, tmp_path):
    """Expected: the frozen worker's events are taken over by a second worker, which applies the
    graph's newer version; the first, woken up, drops its results (counted `fenced`, logged) and
    never writes its older vectors over the newer ones."""
    count = 60
    actors(synced_graph, count)
    enqueued(count)
    before = fenced_so_far()
    env = worker_env(tmp_path, database_url(), SYNC_VISIBILITY_TIMEOUT="3", LOG_LEVEL="info")
    stalled = manage("drain", "--until-empty", "--batch-size", str(count), env=env, tmp_path=tmp_path)
    try:
        wait_until(lambda: stalled.pid in claimants(), "the first worker's batch in flight", proc=stalled)
        freeze(stalled)
        cypher(synced_graph, "MATCH (a:ThreatActor) SET a.description = a.description + ' Now also ransomware.'")
        enqueued(count)
        time.sleep(3.5)  # the frozen worker's lease runs out (its renewing thread is frozen too)
        taken = worker.drain(idle_exit=0)  # the other worker (this process) takes the events over
        assert taken.upserted == count
        stalled.send_signal(signal.SIGCONT)
        assert stalled.wait(timeout=120) == 0, output(stalled)[-3000:]
    finally:
        stalled.send_signal(signal.SIGCONT)
        kill_group(stalled)
    log = output(stalled)
    assert "taken over by another worker" in log, log[-3000:]
    assert re.search(r"events: 0 ", log), log[-3000:]  # nothing finished by the frozen worker
    assert fenced_so_far() - before == count
    assert_index_matches_graph(synced_graph, vectors)
    versions = {r.metadata["version"] for r in vectors.fetch(list(vectors.list_ids(""))).values()}
    assert versions == {2}  # the newer version everywhere


def fenced_so_far() -> float:
    from sync.observe.counters import counter_totals

    return counter_totals()["applied"].get("fenced", 0.0)


# --- django-q2's timeout in the middle of embedding -------------------------------------------

def test_a_timeout_mid_embedding_hands_the_batch_back_uncounted(synced_graph, vectors):
    """Expected: django-q2's SIGALRM (TimeoutException, a SystemExit) lands inside the model's
    encode; the batch's events go back to the queue with no attempt counted and no error, and
    the next drain applies them all."""
    from django_q.exceptions import TimeoutException
    from django_q.timeout import TimeoutHandler

    count = 20  # few: an event a timeout interrupted is applied alone afterwards (sync.queue)
    actors(synced_graph, count)
    enqueued(count)
    model = embedding.get_embedder()
    real_encode = model.encode
    calls = []

    def encode(texts, *args, **kwargs):
        if not calls:
            calls.append(len(texts))
            signal.setitimer(signal.ITIMER_REAL, 0.05)  # the task's time runs out mid-encode
            time.sleep(1)
        return real_encode(texts, *args, **kwargs)

    model.encode = encode
    try:
        batch = queue.claim_batch("timed-out-worker", count)
        with pytest.raises(TimeoutException), TimeoutHandler(600):
            apply_events(batch)
    finally:
        model.encode = real_encode
    assert calls == [count]
    queued = SyncEvent.objects.filter(status="queued")
    assert queued.count() == count
    assert set(queued.values_list("attempts", flat=True)) == {0}
    assert not queued.exclude(last_error="").exists()
    worker.drain(idle_exit=0)
    assert_index_matches_graph(synced_graph, vectors)


# --- SIGTERM landing in a finalizer -------------------------------------------------------------

class SignalledOnCollection:
    """Sends SIGTERM from its finalizer: the signal lands while `__del__` runs, as it did when the
    Neo4j driver's sessions were collected in the middle of a batch."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs here, inside __del__
            pass


def test_a_sigterm_landing_in_a_finalizer_still_hands_the_batch_back(synced_graph, vectors):
    """Expected: the stop is not swallowed by the finalizer ("Exception ignored in __del__") but
    raised once it returns: the batch goes back to the queue uncounted, as for any SIGTERM."""
    from sync import shutdown

    count = 5
    actors(synced_graph, count)
    enqueued(count)
    model = embedding.get_embedder()
    model.encode(["loaded before the batch"])  # a stop must not land in torch's import
    real_encode = model.encode

    def encode(texts, *args, **kwargs):
        SignalledOnCollection()  # collected at once, inside the batch
        return real_encode(texts, *args, **kwargs)

    previous = signal.signal(signal.SIGTERM, shutdown.handle_sigterm)
    model.encode = encode
    try:
        with pytest.raises(shutdown.StopRequested):
            apply_events(queue.claim_batch("stopping-worker", count))
    finally:
        model.encode = real_encode
        signal.signal(signal.SIGTERM, previous)
        shutdown._requested.clear()
        shutdown._interrupted.clear()
    queued = SyncEvent.objects.filter(status="queued")
    assert queued.count() == count and set(queued.values_list("attempts", flat=True)) == {0}
    worker.drain(idle_exit=0)
    assert_index_matches_graph(synced_graph, vectors)


class AlarmedOnCollection:
    """Sends SIGALRM (django-q2's task timeout) from its finalizer: the alarm lands while `__del__` runs."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGALRM)
        for _ in range(1000):  # the handler runs here, inside __del__
            pass


def test_a_timeout_landing_in_a_finalizer_still_hands_the_batch_back(synced_graph, vectors):
    """Expected: django-q2's TimeoutException is not swallowed by the finalizer ("Exception ignored
    in __del__", the batch running on past its timeout until the sentinel kills the worker) but
    raised once it returns: the batch goes back to the queue uncounted, as for any timeout."""
    from django_q.exceptions import TimeoutException
    from django_q.timeout import TimeoutHandler

    from sync import shutdown

    shutdown.keep_timeouts()  # what the cluster's sentinel does before it forks its workers
    count = 5
    actors(synced_graph, count)
    enqueued(count)
    model = embedding.get_embedder()
    model.encode(["loaded before the batch"])
    real_encode = model.encode

    def encode(texts, *args, **kwargs):
        AlarmedOnCollection()  # collected at once, inside the batch
        time.sleep(0.2)  # where the alarm comes again
        return real_encode(texts, *args, **kwargs)

    model.encode = encode
    try:
        with pytest.raises(TimeoutException), TimeoutHandler(600):
            apply_events(queue.claim_batch("timed-out-worker", count))
    finally:
        model.encode = real_encode
    queued = SyncEvent.objects.filter(status="queued")
    assert queued.count() == count and set(queued.values_list("attempts", flat=True)) == {0}
    assert not queued.exclude(last_error="").exists()
    worker.drain(idle_exit=0)
    assert_index_matches_graph(synced_graph, vectors)


# --- any process of the cluster SIGKILLed -------------------------------------------------------

def children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in found if _alive(int(p))]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def reading_a_pipe(pid: int) -> bool:
    """Is the process's main thread blocked in read(2)? An idle django-q2 worker that holds the
    task queue's read lock waits there; the others wait for the lock (futex)."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] == "0"
    except (OSError, IndexError):
        return False


def roles(main: int, log: str) -> dict[str, list[int]]:
    """The cluster's processes by role, from the process tree and django-q2's start-up lines."""
    [sentinel] = children(main)
    kids = set(children(sentinel))
    found = {"main": [main], "sentinel": [sentinel], "pusher": [], "monitor": [], "worker": []}
    for what, role in (("pushing tasks at", "pusher"), ("monitoring at", "monitor"), ("ready for work at", "worker")):
        found[role] = [int(pid) for pid in re.findall(rf"{what} (\d+)", log) if int(pid) in kids]
    return found


def running_clusters(log: str) -> int:
    return len(re.findall(r"Q Cluster \S+ \[[^]]*\] running", log))


def metadata_change(graph, step: int, count: int = 10) -> None:
    """A change every worker applies without the model: `severity` is metadata, not text."""
    cypher(graph, "MATCH (a:ThreatActor) WITH a ORDER BY a.uid LIMIT $n SET a.severity = $s", n=count, s=f"s{step}")
    assert capture.poll_once("test", overlap=0).enqueued == count


def drained_by_the_cluster(cluster, what: str) -> None:
    """A drain asked of the cluster now runs, applies the queue and has its result recorded."""
    task = async_task("sync.tasks.drain_queue", 20, group="sync-drain")
    wait_until(lambda: all_done() and Task.objects.filter(id=task, success=True).exists(),
               f"a drain applied and recorded {what}", timeout=120, proc=cluster)


ROLES = ("main", "sentinel", "pusher", "monitor", "idle_worker", "busy_worker")


@pytest.mark.parametrize("role", ROLES)
def test_any_process_of_the_cluster_killed(synced_graph, vectors, tmp_path, role):
    """Expected: killing the main process stops the rest of the cluster by itself, with a log line
    saying why, so that its supervisor restarts it; killing any other process of it is healed
    (every process of the cluster is started again with fresh queues; a killed worker's batch and
    drain slot are free at once, not after the visibility timeout) and a drain asked for
    afterwards is applied and recorded. Then a SIGTERM to the process group leaves nothing behind."""
    count = 40
    actors(synced_graph, count)
    enqueued(count)
    if role != "busy_worker":
        worker.drain(idle_exit=0)  # embedded here: the cluster's work is then metadata-only (no model to load)
    env = worker_env(tmp_path, database_url(), Q_WORKERS="3", SYNC_FLUSH_INTERVAL="0", LOG_LEVEL="info")
    cluster = manage("workers", env=env, tmp_path=tmp_path)
    pgid = os.getpgid(cluster.pid)
    try:
        wait_until(lambda: running_clusters(output(cluster)) == 1 and len(roles(cluster.pid, output(cluster))["worker"]) == 3,
                   "the cluster running", proc=cluster)
        if role == "busy_worker":
            async_task("sync.tasks.drain_queue", 20, group="sync-drain")
            wait_until(lambda: bool(claimants()), "a batch in flight", proc=cluster)
            [victim] = claimants()
        else:
            metadata_change(synced_graph, 0)
            drained_by_the_cluster(cluster, "the first changes")  # the cluster works before the fault
            found = roles(cluster.pid, output(cluster))
            if role == "idle_worker":
                wait_until(lambda: any(reading_a_pipe(p) for p in roles(cluster.pid, output(cluster))["worker"]),
                           "an idle worker holding the task queue's lock", timeout=30, proc=cluster)
                victim = next(p for p in roles(cluster.pid, output(cluster))["worker"] if reading_a_pipe(p))
            else:
                [victim] = found[role]
        os.kill(victim, signal.SIGKILL)

        if role == "main":
            cluster.wait(timeout=10)
            deadline = time.monotonic() + STOP_WITHIN_SECONDS
            while time.monotonic() < deadline and group_members(pgid):
                time.sleep(0.2)
            assert group_members(pgid) == [], f"left running after its main process died: {output(cluster)[-3000:]}"
            assert "main process" in output(cluster) and "is gone" in output(cluster), output(cluster)[-3000:]
            worker.drain(idle_exit=0)  # the supervisor's restart would do this
        else:
            # Healed: a new sentinel (tasks its killed pusher had taken from the broker come back
            # after Q_RETRY; the schedules ask for capture and drains again every minute).
            wait_until(lambda: running_clusters(output(cluster)) == 2, "the cluster started again", timeout=60,
                       proc=cluster)
            if role != "busy_worker":
                metadata_change(synced_graph, 1)
            drained_by_the_cluster(cluster, f"after the {role} was killed")
            log = output(cluster)
            assert cluster.poll() is None, log[-3000:]
            assert re.search(r"CRITICAL .*(died|was killed)", log), log[-3000:]  # never a silent heal
            if role == "busy_worker":  # its batch was freed at once, not after the visibility timeout
                assert "claimable again" in log and SyncEvent.objects.filter(attempts=2).exists(), log[-3000:]
            left = stop_group(cluster)
            assert left == [], f"still running {STOP_WITHIN_SECONDS} s after SIGTERM: {left}\n{output(cluster)[-3000:]}"
    finally:
        kill_everything(pgid, cluster)
    assert_index_matches_graph(synced_graph, vectors)


def kill_everything(pgid: int, proc) -> None:
    """Leave nothing behind for the next test, orphans of a dead main process included."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
