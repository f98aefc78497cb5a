"""The soak: the whole stack under a steady change rate while faults are injected, then proof that
the vector index equals the graph.

    .venv/bin/python -u bench/soak.py                 # 10 minutes at 5 changes/s (by hand)
    .venv/bin/python -u bench/soak.py --minutes 2     # the short mode the test suite runs
    .venv/bin/python -u bench/soak.py --minutes 60 --seed 7

What runs, all on 127.0.0.1 with its data in var/soak (wiped first):
- a Neo4j of its own on a free port (tests/faults/servers.py: tools/neo4j/neo4jctl.py; its data in
  var/soak-neo4j, the graph wiped), with the schema and APOC triggers of `manage.py setup_graph`,
  and a seed graph of every kind the load edits;
- the vector store: Pinecone's data plane (tests/pinecone_server.py, the wire-level stand-in the
  test suite uses) in this process, spoken to by the real `pinecone` SDK (VECTOR_STORE=pinecone);
- `manage.py workers` (the django-q2 cluster) with the schedules of `manage.py setup_schedules`:
  change capture (the observer beside it: samples, alerts), drains, the incremental
  reconciliation every --reconcile-minutes, the canary, upkeep;
- gunicorn on a free loopback port, asked for /healthz, /readyz and /metrics every few seconds.

The load is `sync.demo.activity` (what `manage.py simulate` runs) at --rate changes a second:
foreign Cypher edits of embedded text (MEDIUM: threat actors, malware, techniques) and of metadata
only (LOW: artifacts), new CISA KEV entries (HIGH), threat-intel items deleted and re-created, and
two sources disagreeing on a rule-governed field through the write path (conflicts settled by the
rules or left open). A write refused while Neo4j is down is counted, never retried: it did not
happen.

The faults, seeded (--seed) and logged with their times, once in every --fault-cycle minutes of
load, each at a random moment of its own part of the cycle: Neo4j killed (SIGKILL) and started
again; the vector store down (connections refused) for --outage seconds; a worker of the cluster
killed (SIGKILL) at random, as the OOM killer would.

At the end the load stops and the faults with it; the queue drains; dead letters are retried; then
a full reconciliation (a dry run: it repairs nothing) must find zero drift, and the index must
equal the graph (tests/consistency.py, read from both live stores). It prints the events
processed, lag p50/p95/max per priority (Neo4j's clock), dead letters and whether the retry
completed them, alerts opened and resolved, the errors counted by kind (from /metrics), and RSS
and open file descriptors of every process a minute after it started and at the end (with growth
per hour; a restarted process's figures start with it).
Exit status 0 when there is no drift and nothing was lost, 1 otherwise.

Every wait is bounded in time, every loop in count; nothing listens beyond 127.0.0.1. SIGTERM
ends a run early, its stack taken down as at the end (tests/test_soak.py sends it past its time).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults.servers import Neo4jServer, free_port  # noqa: E402
from tests.pinecone_server import PineconeTestServer  # noqa: E402

SOAK_DIR = ROOT / "var" / "soak"
METRICS_TOKEN = "soak-metrics-token-0123456789"
STOP_SECONDS = 40  # SIGTERM to a process group, then SIGKILL
SETTLE_SECONDS = 150  # at most, for the queue to drain at the end
LOAD_THREADS = 3
BASELINE_AFTER = 60.0  # seconds after a process is first seen: its RSS baseline


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


# --- processes ------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def start(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    out = open(log_path, "w")  # noqa: SIM115 — kept open for the life of the process
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop_group(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@dataclass
class Faults:
    """What was done to the stack, when (seconds into the load)."""

    done: list[tuple[float, str]] = field(default_factory=list)
    refused_writes: int = 0


@dataclass
class Watched:
    """One process as the soak saw it: when first, its baseline a minute later (the model loaded,
    the caches filled) and its last sample — RSS MB and open file descriptors."""

    name: str
    first_seen: float
    baseline: tuple[float, float, int] | None = None  # (at, RSS, fds)
    last: tuple[float, float, int] | None = None
    ended: bool = False


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.random = random.Random(args.seed)
        self.neo4j: Neo4jServer | None = None
        self.pinecone: PineconeTestServer | None = None
        self.workers: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.web_port = free_port()
        self.faults = Faults()
        self.probes: dict[str, dict[int, int]] = {"/healthz": {}, "/readyz": {}, "/metrics": {}}
        self.watched: dict[int, Watched] = {}
        self._stop_probing = threading.Event()

    # -- set-up ---------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        args = self.args
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DATABASE_", "VECTOR_", "PINECONE_", "NEO4J_", "PYTEST", "REDIS_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="nightingale.settings", DATA_DIR=str(SOAK_DIR),
            PROMETHEUS_MULTIPROC_DIR=str(SOAK_DIR / "prometheus"),
            NEO4J_URI=self.neo4j.uri, NEO4J_PASSWORD=self.neo4j.password,
            VECTOR_STORE="pinecone", PINECONE_API_KEY=self.pinecone.api_key, PINECONE_HOST=self.pinecone.url,
            PINECONE_INDEX="soak", PINECONE_TIMEOUT="5", PINECONE_OPERATION_TIMEOUT="15",
            SECRET_KEY="soak-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz", METRICS_TOKEN=METRICS_TOKEN,
            SYNC_KICK_DRAIN="true", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LOG_LEVEL="info",
            RECONCILE_INCREMENTAL_MINUTES=str(args.reconcile_minutes),
            ALERT_RESOLVE_AFTER=str(args.alert_resolve_after), OBSERVE_BESIDE_CAPTURE="true",
        )
        return env

    def setup(self) -> None:
        log(f"setting up in {SOAK_DIR} (seed {self.args.seed})")
        if SOAK_DIR.exists():
            shutil.rmtree(SOAK_DIR)
        (SOAK_DIR / "prometheus").mkdir(parents=True)
        # Its data directory outlives the run (the graph is wiped instead): no initial password to set.
        self.neo4j = Neo4jServer(ROOT / "var" / "soak-neo4j")
        self.neo4j.kill()  # one a previous run left behind
        starting = threading.Thread(target=self.neo4j.start, name="neo4j-start")
        starting.start()
        self.pinecone = PineconeTestServer(dimension=384).start()
        self.env = self.environment()
        os.environ.clear()  # this process too (Django, the load, the final checks): the soak's settings only
        os.environ.update(self.env)
        import logging

        import django

        django.setup()
        for name, level in (("django-q", logging.WARNING), ("neo4j", logging.ERROR), ("pinecone", logging.WARNING)):
            logging.getLogger(name).setLevel(level)  # this process's log: the soak's own lines
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("setup_schedules", verbosity=0, stdout=open(os.devnull, "w"))  # noqa: SIM115
        log("database migrated, schedules created; waiting for Neo4j")
        starting.join(timeout=300)
        if self.neo4j.pid is None:
            raise RuntimeError("the soak's Neo4j did not start")
        from sync.stores import graph_store

        graph = graph_store()
        with graph.driver.session(database=graph.database) as session:
            session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS").consume()
            session.run("MATCH (t:_SyncTombstone) DELETE t").consume()
        call_command("setup_graph", verbosity=0, stdout=open(os.devnull, "w"))  # noqa: SIM115
        self.seed_graph()
        python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
        self.workers = start([python, "manage.py", "workers"], self.env, SOAK_DIR / "workers.log")
        gunicorn = str(Path(python).parent / "gunicorn")
        self.web = start([gunicorn, "nightingale.wsgi:application", "--bind", f"127.0.0.1:{self.web_port}",
                          "--workers", "2", "--threads", "4", "--graceful-timeout", "10"], self.env,
                         SOAK_DIR / "web.log")
        from django_q.tasks import async_task

        async_task("sync.tasks.capture_changes", group="sync-capture")  # the schedule's first run, now
        log(f"stack up: Neo4j {self.neo4j.uri} (pid {self.neo4j.pid}), vector store {self.pinecone.url}, "
            f"workers pid {self.workers.pid}, web http://127.0.0.1:{self.web_port}/")

    def seed_graph(self) -> None:
        """A small graph of every kind the load touches (the load's KEVs reuse the seed's vendors)."""
        from sync.stores import graph_store

        graph = graph_store()
        n = self.args.entities
        rows = lambda prefix, count: [f"{prefix}-{i:04d}" for i in range(count)]  # noqa: E731
        statements = [
            ("UNWIND $uids AS uid CREATE (:ThreatActor {uid: uid, name: 'Actor ' + uid, severity: 'medium', "
             "description: 'Intrusion set ' + uid + ' targeting energy and finance with spear-phishing.'})",
             rows("actor", n // 3)),
            ("UNWIND $uids AS uid CREATE (:Malware {uid: uid, name: 'Malware ' + uid, "
             "description: 'Loader ' + uid + ' delivering ransomware through malicious documents.'})",
             rows("malware", n // 6)),
            ("UNWIND $uids AS uid CREATE (:Technique {uid: uid, name: 'Technique ' + uid, "
             "description: 'Adversaries may abuse ' + uid + ' to move laterally.'})", rows("technique", n // 6)),
            ("UNWIND $uids AS uid CREATE (:Artifact {uid: uid, title: 'Brief ' + uid, doc_type: 'brief', "
             "summary: 'Threat brief ' + uid + ' for a prospect in the energy sector.', published: '2026-01-01'})",
             rows("artifact", n // 6)),
            ("UNWIND $uids AS uid CREATE (i:ThreatIntel {uid: uid, title: 'Activity ' + uid, "
             "summary: 'Observed phishing infrastructure ' + uid + '.'}) WITH i "
             "MATCH (a:ThreatActor {uid: 'actor-0000'}) CREATE (i)-[:ATTRIBUTED_TO]->(a)", rows("intel", n // 12)),
            ("UNWIND $uids AS uid CREATE (:Vulnerability {uid: uid, cve_id: uid, title: 'Flaw ' + uid, "
             "description: 'Buffer overflow in the gateway.', cvss_score: 7.5})", rows("CVE-2025-1", n // 12)),
            ("UNWIND $uids AS uid CREATE (:KEV {uid: uid, cve_id: uid, vendor_project: 'Example Vendor', "
             "product: 'Example Gateway', vulnerability_name: 'Gateway overflow ' + uid, cwes: ['CWE-787'], "
             "short_description: 'A buffer overflow in the gateway allows remote code execution.'})",
             rows("CVE-2025-2", max(2, n // 24))),
        ]
        for cypher, uids in statements:
            graph.driver.execute_query(cypher, {"uids": uids}, database_=graph.database)

    # -- observation ----------------------------------------------------------------------------

    def cluster_processes(self) -> dict[str, int]:
        """The cluster's processes by role, from its log and the process tree."""
        found: dict[str, int] = {}
        if self.workers is None or self.workers.poll() is not None:
            return found
        found["cluster main"] = self.workers.pid
        sentinels = children(self.workers.pid)
        if not sentinels:
            return found
        found["cluster sentinel"] = sentinels[-1]
        kids = set(children(sentinels[-1]))
        text = (SOAK_DIR / "workers.log").read_text(errors="replace")
        n = 0
        for what, role in (("pushing tasks at", "pusher"), ("monitoring at", "monitor"),
                           ("ready for work at", "worker")):
            for pid in re.findall(rf"{what} (\d+)", text):
                if int(pid) in kids and int(pid) not in found.values():
                    name = f"cluster {role}" if role != "worker" else f"cluster worker {n}"
                    n += role == "worker"
                    found[name] = int(pid)
        return found

    def processes(self) -> dict[str, int]:
        found = {"soak (load, vector store)": os.getpid()}
        if self.neo4j and self.neo4j.pid:
            found["neo4j"] = self.neo4j.pid
        if self.web and self.web.poll() is None:
            found["web master"] = self.web.pid
            for n, pid in enumerate(children(self.web.pid)):
                found[f"web worker {n}"] = pid
        found.update(self.cluster_processes())
        return found

    def sample(self) -> None:
        """Every process's RSS and open descriptors now; a process not there any more has ended."""
        now = time.monotonic()
        alive = {pid: name for name, pid in self.processes().items()}
        for pid, watched in self.watched.items():
            if pid not in alive:
                watched.ended = True
        for pid, name in alive.items():
            rss, fds = rss_mb(pid), open_fds(pid)
            if rss is None or fds is None:
                continue
            watched = self.watched.setdefault(pid, Watched(name, now))
            if watched.baseline is None and now - watched.first_seen >= BASELINE_AFTER:
                watched.baseline = (now, rss, fds)
            watched.last = (now, rss, fds)

    def probe(self) -> None:
        """The web server, asked every 5 s while the soak runs: status codes counted per path."""
        for n in range(10_000_000):
            if self._stop_probing.wait(5):
                break
            if n % 3 == 0:
                self.sample()
            for path in self.probes:
                request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}",
                                                 headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        status = response.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                except OSError:
                    status = 0
                self.probes[path][status] = self.probes[path].get(status, 0) + 1
            if self.pinecone is not None:
                self.pinecone.clear_log()  # its request log would grow for as long as the soak runs

    def metrics(self) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}/metrics",
                                         headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()

    # -- the run --------------------------------------------------------------------------------

    def wait(self, condition, what: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(1)
        log(f"gave up waiting for {what} after {seconds:.0f} s")
        return False

    def caught_up(self):
        """A condition: a capture poll that began after the load's last write has completed (it read
        every change, on Neo4j's clock), and nothing is queued or in flight."""
        from sync.capture import CURSOR
        from sync.models import ChangeCursor
        from sync.stores import graph_store

        last_write = graph_store().server_time()

        def done() -> bool:
            read = ChangeCursor.objects.filter(name=CURSOR).values_list("read_through", flat=True).first()
            return read is not None and read > last_write and self.settled()

        return done

    def settled(self) -> bool:
        from sync.models import SyncEvent

        return not SyncEvent.objects.filter(status__in=["queued", "in_flight"]).exists()

    def schedule(self, seconds: float) -> list[tuple[float, str]]:
        """When each fault comes: once per cycle, each in its own third of it (order shuffled)."""
        cycle = self.args.fault_cycle * 60
        plan = []
        start = 0.0
        while start < seconds * 0.85 and len(plan) < 300:
            length = min(cycle, seconds * 0.85 - start)
            kinds = ["neo4j", "vector_store", "worker"]
            self.random.shuffle(kinds)
            for n, kind in enumerate(kinds):
                plan.append((start + length * (n + self.random.uniform(0.1, 0.6)) / 3, kind))
            start += cycle
        return sorted(plan)

    def inject(self, kind: str, at: float) -> None:
        if kind == "neo4j":
            self.neo4j.kill()
            log(f"fault at {at:.0f}s: Neo4j killed (SIGKILL); starting it again")
            self.neo4j.start()
            self.faults.done.append((at, "Neo4j killed and started again"))
            log("fault: Neo4j back")
        elif kind == "vector_store":
            self.pinecone.stop()
            log(f"fault at {at:.0f}s: vector store down for {self.args.outage:.0f} s")
            time.sleep(self.args.outage)
            self.pinecone.start()
            self.faults.done.append((at, f"vector store down for {self.args.outage:.0f} s"))
            log("fault: vector store back")
        else:
            workers = [pid for name, pid in self.cluster_processes().items() if name.startswith("cluster worker")]
            if not workers:
                log(f"fault at {at:.0f}s: no worker to kill")
                return
            victim = self.random.choice(workers)
            os.kill(victim, signal.SIGKILL)
            self.faults.done.append((at, f"worker {victim} killed (SIGKILL)"))
            log(f"fault at {at:.0f}s: worker {victim} killed (SIGKILL)")

    def load(self, seconds: float) -> tuple[object, float]:
        """`sync.demo.activity`'s changes at --rate a second, from LOAD_THREADS threads paced on an
        absolute clock (a slow or refused write is caught up, at most a second's worth at once),
        while the faults come as planned."""
        from sync.demo.activity import Activity, Counts

        stop = threading.Event()
        serial = threading.Lock()  # new KEV numbers and deletes/re-creates are picked one at a time
        activities = [Activity(rate=0, seed=self.args.seed * 100 + n, say=lambda line: None)
                      for n in range(LOAD_THREADS)]
        threads = [threading.Thread(target=self.act, args=(activity, n, stop, serial), name=f"load-{n}", daemon=True)
                   for n, activity in enumerate(activities)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        plan = self.schedule(seconds)
        log(f"load: {self.args.rate:g} changes/s for {seconds / 60:g} min; faults planned at "
            + ", ".join(f"{at:.0f}s {kind}" for at, kind in plan))
        for at, kind in plan:
            delay = started + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.inject(kind, time.monotonic() - started)
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        stop.set()
        elapsed = time.monotonic() - started
        for thread in threads:
            thread.join(timeout=30)  # a write under way finishes (bounded by the driver's retry time)
        for activity in activities:  # leave the graph whole
            for item in list(activity.deleted):
                activity.guarded("re-create", lambda item=item, a=activity: a.recreate(item))
        total = Counts()
        for activity in activities:
            for name in ("text_edits", "metadata_edits", "kevs", "deletes", "recreates", "disputes", "skipped"):
                setattr(total, name, getattr(total, name) + getattr(activity.counts, name))
            total.errors += activity.counts.errors
        return total, elapsed

    def act(self, activity, n: int, stop: threading.Event, serial: threading.Lock) -> None:
        from django.db import connections

        from sync.demo.activity import RECREATE_AFTER

        # Per write: 70% foreign edits, 10% new KEVs, 10% a delete and its re-create, 10% the two
        # writes of a dispute; so 0.9 actions a write.
        period = LOAD_THREADS / (0.9 * self.args.rate)
        chooser = random.Random(self.args.seed * 1000 + n)
        due = time.monotonic() + chooser.uniform(0, period)
        try:
            for _ in range(10_000_000):
                if stop.is_set():
                    break
                now = time.monotonic()
                if due > now:
                    stop.wait(due - now)
                    continue
                due = max(due + period, now - 1.0)
                for item in [d for d in activity.deleted if now - d.at >= RECREATE_AFTER]:
                    with serial:
                        activity.guarded("re-create", lambda item=item: activity.recreate(item))
                pick = chooser.random()
                kind = ("edit" if pick < 0.7 / 0.9 else "kev" if pick < 0.8 / 0.9
                        else "delete" if pick < 0.85 / 0.9 else "dispute")
                if kind in ("kev", "delete"):
                    with serial:
                        activity.step(kind)
                else:
                    activity.step(kind)
        finally:
            connections.close_all()

    def run(self) -> int:
        self.setup()
        self.prober = threading.Thread(target=self.probe, name="probe", daemon=True)
        self.prober.start()
        from django.utils import timezone

        from sync.models import SyncEvent

        began = timezone.now()
        counts, elapsed = self.load(self.args.minutes * 60)
        self.elapsed = elapsed
        log(f"load done in {elapsed:.0f} s: {counts.text_edits} text edits, {counts.metadata_edits} metadata edits, "
            f"{counts.kevs} new KEVs, {counts.deletes} deletes, {counts.recreates} re-creates, "
            f"{counts.disputes} disputes, {len(counts.errors)} writes refused")
        self.wait(self.caught_up(), "capture to read the last writes and the queue to drain", SETTLE_SECONDS)
        log("capture has read every write and the queue is empty")
        dead = list(SyncEvent.objects.filter(status="dead").values_list("id", flat=True))
        retried_ok = None
        if dead:
            from sync.queue import retry_dead

            retry_dead(dead, "soak")
            self.wait(self.settled, "the retried dead letters", SETTLE_SECONDS)
            retried_ok = not SyncEvent.objects.filter(id__in=dead, status="dead").exists() and self.settled()
        self._stop_probing.set()
        self.prober.join(timeout=30)
        self.sample()
        try:
            exposition = self.metrics()
        except OSError as exc:
            exposition = ""
            log(f"/metrics did not answer: {exc}")
        return self.report(began, counts, dead, retried_ok, exposition)

    # -- the verdict ----------------------------------------------------------------------------

    def report(self, began, counts, dead, retried_ok, exposition: str) -> int:
        from django.db.models import Count

        from sync.models import ReconcileRun, SyncEvent
        from sync.observe.models import Alert
        from sync.observe.readings import percentiles
        from sync.reconcile import reconciler
        from sync.stores import graph_store, vector_store
        from tests.consistency import compare

        run = reconciler.full(dry_run=True)
        equal = compare(graph_store(), vector_store())
        events = SyncEvent.objects.filter(created_at__gte=began)
        outcomes = dict(events.filter(status="done").values_list("outcome").annotate(n=Count("id")))
        print("\n=== soak: results ===")
        made = (counts.text_edits + counts.metadata_edits + counts.kevs + counts.deletes + counts.recreates
                + 2 * counts.disputes)
        print(f"load: {self.args.minutes:g} min at {self.args.rate:g} changes/s asked, {made / self.elapsed:.1f}/s made "
              f"(seed {self.args.seed}): {counts.text_edits} text and {counts.metadata_edits} metadata edits, "
              f"{counts.kevs} new KEVs, {counts.deletes} deletes and {counts.recreates} re-creates, {counts.disputes} "
              f"disputes (two writes each); refused while a store was down: {len(counts.errors)}")
        print("faults: " + "; ".join(f"{at:.0f}s {what}" for at, what in self.faults.done))
        print(f"events processed: {sum(outcomes.values())} ({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))})")
        from sync.models import Priority

        for priority in Priority:
            lags = list(events.filter(priority=priority, lag_seconds__isnull=False, changed_at__gte=began)
                        .values_list("lag_seconds", flat=True))  # the load's changes, not the seed's
            p50, p95 = percentiles(lags, 0.5, 0.95)
            print(f"lag {priority.label:6}: " + (f"p50 {p50:.1f}s p95 {p95:.1f}s max {max(lags):.1f}s ({len(lags)} changes)"
                                                  if lags else "no changes"))
        print(f"dead letters: {len(dead)}" + ("" if not dead else
                                              f"; retried: {'all completed' if retried_ok else 'NOT all completed'}"))
        alerts = Alert.objects.filter(opened_at__gte=began)
        print(f"alerts: {alerts.count()} opened ({', '.join(sorted(set(alerts.values_list('rule', flat=True)))) or '-'}), "
              f"{alerts.filter(status='resolved').count()} resolved, {alerts.filter(status='open').count()} still open")
        errors = {m.group(1): float(m.group(2)) for m in re.finditer(r'^sync_errors_total\{kind="(\w+)"\} (\S+)$',
                                                                     exposition, re.M)}
        counted = ", ".join(f"{k} {v:g}" for k, v in sorted(errors.items()) if v)
        print(f"errors counted (/metrics): {counted or ('none' if errors else 'no answer from /metrics')}")
        print("web probes: " + "; ".join(f"{path} {dict(sorted(codes.items()))}" for path, codes in self.probes.items()))
        print(f"processes: RSS (MB) and open file descriptors {BASELINE_AFTER:.0f} s after each was first seen "
              "and at the end, with the growth per hour (over at least 2 minutes):")
        for pid, seen in sorted(self.watched.items(), key=lambda item: (item[1].ended, item[1].name)):
            if seen.ended:
                continue
            base, last = seen.baseline or seen.last, seen.last
            minutes = (last[0] - base[0]) / 60
            growth = f"{(last[1] - base[1]) / minutes * 60:+.0f} MB/h" if minutes >= 2 else "-"
            print(f"  {seen.name:26} pid {pid:<7} {base[1]:6.0f} -> {last[1]:6.0f} MB over {minutes:4.1f} min "
                  f"{growth:>11}   fds {base[2]} -> {last[2]}")
        ended = [f"{seen.name} {pid}" for pid, seen in self.watched.items() if seen.ended]
        print(f"  ended during the run (killed, or restarted with the cluster): {', '.join(ended) or 'none'}")
        lost = equal.missing + equal.wrong + list(equal.unfinished)
        repairs = ReconcileRun.objects.filter(started_at__gte=began, dry_run=False)
        print(f"scheduled reconciliations during the load: {repairs.count()}, drift found "
              f"{_summed(r.drift for r in repairs) or 'none'}, repaired {_summed(r.repaired for r in repairs) or 'none'}")
        print(f"full reconciliation (dry run) at the end: {run.status}, {run.entities_checked} entities and "
              f"{run.vectors_checked} vectors checked, drift {run.drift or 'none'}")
        print(f"index vs graph: {equal}")
        ok = run.status == "succeeded" and not run.drift and equal.equal and not lost and (not dead or retried_ok)
        print(f"verdict: {'zero drift, nothing lost' if ok else 'FAILED'}")
        return 0 if ok else 1

    def teardown(self) -> None:
        self._stop_probing.set()
        stopping = [threading.Thread(target=stop_group, args=(proc,)) for proc in (self.web, self.workers)]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join(timeout=STOP_SECONDS + 15)
        if self.neo4j is not None:
            self.neo4j.kill()
        if self.pinecone is not None:
            self.pinecone.stop()


def _summed(dicts) -> dict:
    total: dict = {}
    for found in dicts:
        for kind, n in (found or {}).items():
            total[kind] = total.get(kind, 0) + n
    return total


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--rate", type=float, default=5.0, help="changes a second")
    parser.add_argument("--seed", type=int, default=1, help="of the load and of the faults")
    parser.add_argument("--entities", type=int, default=120, help="the seed graph's size")
    parser.add_argument("--fault-cycle", type=float, default=None,
                        help="minutes of load for each round of the three faults (default: the whole run "
                             "up to 10 minutes, then 5)")
    parser.add_argument("--outage", type=float, default=15.0, help="seconds the vector store stays down")
    parser.add_argument("--reconcile-minutes", type=int, default=None,
                        help="RECONCILE_INCREMENTAL_MINUTES (default: 1 up to 10 minutes of load, else 5)")
    parser.add_argument("--alert-resolve-after", type=float, default=None,
                        help="ALERT_RESOLVE_AFTER seconds (default: 30 up to 10 minutes of load, else 300)")
    args = parser.parse_args(argv)
    short = args.minutes <= 10
    if args.fault_cycle is None:
        args.fault_cycle = args.minutes if short else 5.0
    if args.reconcile_minutes is None:
        args.reconcile_minutes = 1 if short else 5
    if args.alert_resolve_after is None:
        args.alert_resolve_after = 30.0 if short else 300.0
    return args


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    soak = Soak(parse(argv))
    signal.signal(signal.SIGTERM, _stop)  # asked to stop (tests/test_soak.py's timeout): take the stack down
    try:
        return soak.run()
    finally:
        soak.teardown()


if __name__ == "__main__":
    sys.exit(main())
