"""Shared set-up for the benchmarks: a bench Neo4j of its own, a fresh SQLite file and LanceDB.

Benchmarks never touch the graphs `bin/run` and `bin/test` use: they run a third local Neo4j on
127.0.0.1:7689 with its data under var/bench-neo4j (started here when it is not running).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"


def setup(fresh: bool = True) -> None:
    os.environ.setdefault("NEO4J_URI", "bolt://127.0.0.1:7689")
    os.environ.setdefault("NEO4J_PASSWORD", "nightingale-bench")
    os.environ.setdefault("NEO4J_LOCAL_DIR", str(ROOT / "var" / "bench-neo4j"))
    os.environ.setdefault("NEO4J_PAGECACHE", "512m")
    os.environ.setdefault("NEO4J_HEAP", "1g")
    os.environ["DATA_DIR"] = str(BENCH_DIR)
    os.environ.setdefault("SYNC_KICK_DRAIN", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nightingale.settings")
    os.environ.setdefault("LOG_LEVEL", "warning")
    if fresh and BENCH_DIR.exists():
        shutil.rmtree(BENCH_DIR)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "tools" / "neo4j" / "neo4jctl.py"), "start"], check=True)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def wipe_graph() -> None:
    from sync.stores import graph_store

    graph = graph_store()
    with graph.driver.session(database=graph.database) as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()
        # With the APOC trigger installed (bench/lag.py), the wipe itself leaves tombstones.
        session.run("MATCH (t:_SyncTombstone) DELETE t").consume()


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries a forked
    parent's high-water mark across exec into it, so a child started by a process that had just
    built a million rows reported that process's peak, not its own."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started


class CpuTimer(Timer):
    """Wall time, and the CPU time spent meanwhile: by this process (every thread, LanceDB's
    included), by its main thread alone (the Python work, which holds the GIL), and by the bench
    Neo4j (None when its pid cannot be read)."""

    def __enter__(self):
        self._neo4j_pid = _neo4j_pid()
        self._process, self._main, self._neo4j = _process_cpu(), time.thread_time(), _cpu_of(self._neo4j_pid)
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.process = _process_cpu() - self._process
        self.main_thread = time.thread_time() - self._main
        after = _cpu_of(self._neo4j_pid)
        self.neo4j = after - self._neo4j if after is not None and self._neo4j is not None else None


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _neo4j_pid() -> int | None:
    try:
        return int((Path(os.environ["NEO4J_LOCAL_DIR"]) / "run" / "neo4j.pid").read_text().strip())
    except (KeyError, OSError, ValueError):
        return None


def _cpu_of(pid: int | None) -> float | None:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def demo_sample(limit: int):
    """Load the demo graph into the (wiped) bench Neo4j; returns the graph store, an evenly spread
    sample of `limit` synced entities (0: all) and their chunk texts, as the engine will embed them."""
    from sync.demo.graph import load_demo
    from sync.policy import build_document, synced_labels
    from sync.stores import graph_store

    wipe_graph()
    graph = graph_store()
    graph.ensure_schema(synced_labels())
    with Timer() as t:
        loaded = load_demo(graph)
    print(f"demo graph loaded in {t.seconds:.1f}s: {loaded}")
    entities = [e for label in synced_labels() for e in graph.scan_label(label, None, 1_000_000)]
    if limit and len(entities) > limit:
        entities = entities[::len(entities) // limit + 1]
    texts = [c.text for e in entities for c in build_document(e).chunks]
    return graph, entities, texts


def raw_encode_rate(embedder, texts: list[str], batch_size: int) -> float:
    """Texts/s of the bare `model.encode` on these texts (what end-to-end sync is compared with)."""
    with Timer() as timer:
        embedder.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                              show_progress_bar=False, convert_to_numpy=True)
    return len(texts) / timer.seconds


def works_for(entities) -> list:
    """The queue work that syncs these entities (at their labels' priorities)."""
    from sync import queue

    return [queue.Work(e.label, e.uid, version=e.version, priority=queue.priority_of(e.label)) for e in entities]


def bump_metadata(graph, round_: int, synced: set[tuple[str, str]]) -> list:
    """Change a metadata-only field (no re-embedding) on every synced entity; returns the synced
    ones of `synced` as they are now."""
    from sync.policy import synced_labels

    with graph.driver.session(database=graph.database) as session:
        session.run("MATCH (n) WHERE n.version IS NOT NULL SET n.confidence = $c, "
                    "n.version = n.version + 1", c=round(0.4 + round_ / 100, 2)).consume()
    return [e for label in synced_labels() for e in graph.scan_label(label, None, 1_000_000)
            if (e.label, e.uid) in synced]


def lag_graph():
    """The wiped bench graph with the APOC triggers (foreign writes get versions and updated_at)."""
    from sync.policy import synced_labels
    from sync.stores import graph_store

    wipe_graph()
    graph = graph_store()
    graph.ensure_schema(synced_labels())
    assert graph.install_triggers(synced_labels()), "the bench needs APOC triggers"
    graph.wait_for_triggers()
    return graph


def foreign_write(graph, n: int, prefix: str = "") -> None:
    """A plain-Cypher write by "another tool": even n a KEV entry (HIGH), odd n a threat actor (MEDIUM)."""
    if n % 2 == 0:
        graph.driver.execute_query(
            "CREATE (:KEV {uid: $uid, cve_id: $uid, vulnerability_name: $name, short_description: $d})",
            uid=f"CVE-2026-{prefix}{n:05d}", name=f"Bench vulnerability {n}",
            d=f"Remote code execution number {n}.", database_=graph.database)
    else:
        graph.driver.execute_query(
            "CREATE (:ThreatActor {uid: $uid, name: $name, description: $d})",
            uid=f"bench-actor-{prefix}{n}", name=f"Actor {n}", d=f"Bench actor {n} targeting finance.",
            database_=graph.database)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def capture_and(applier: list[str], graph, *, warm_timeout: float):
    """`manage.py capture` and an applier (`manage.py` arguments: drain, consume ...) as separate
    processes, as the workers run them, warmed up (four foreign writes synced: both have loaded
    the model and opened their stores); yields the warm-up's keys, to leave out of the figures.
    Both get SIGTERM when the body ends."""
    from sync.models import SyncRecord

    manage = [sys.executable, str(ROOT / "manage.py")]
    workers = [subprocess.Popen([*manage, "capture"], cwd=ROOT, env=os.environ),
               subprocess.Popen([*manage, *applier], cwd=ROOT, env=os.environ)]
    try:
        for n in range(4):
            foreign_write(graph, n, prefix="warm-")
        wait_synced(4, warm_timeout)
        yield {(r.label, r.uid) for r in SyncRecord.objects.filter(uid__contains="warm-")}
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=60)


def wait_synced(count: int, timeout: float) -> None:
    """Wait until `count` of the entities `foreign_write` makes are in sync (or `timeout` s)."""
    from sync.models import SyncRecord

    written = SyncRecord.objects.filter(status="in_sync", label__in=("KEV", "ThreatActor"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and written.count() < count:
        time.sleep(0.2)


def write_at_rate(graph, rate: float, seconds: float) -> int:
    """Foreign writes at `rate` per second for `seconds`; returns how many."""
    interval = 1.0 / rate
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        foreign_write(graph, n)
        n += 1
        time.sleep(max(0.0, started + n * interval - time.monotonic()))
    return n


def sync_lags(label: str, exclude: set[tuple[str, str]]) -> list[float]:
    """Change-to-vector lag of each in-sync entity of `label`: synced_at - changed_at (graph's updated_at)."""
    from sync.models import SyncRecord

    return [(r.synced_at - r.changed_at).total_seconds() for r in
            SyncRecord.objects.filter(label=label, status="in_sync") if (r.label, r.uid) not in exclude]
