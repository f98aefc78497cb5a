"""Change-to-vector lag at a steady rate of foreign writes to Neo4j.

    .venv/bin/python bench/lag.py [--rate 10] [--seconds 60]

Half the writes are CISA KEV entries (HIGH priority), half threat actors (MEDIUM), made with plain
Cypher by "another tool" (the APOC trigger stamps version/updated_at). Change capture and one
drain worker run as separate processes (`manage.py capture`, `manage.py drain`), as django-q2 runs
its tasks, with the default settings: capture every CAPTURE_INTERVAL s and HIGH work applied by the
poller at once; the worker flushes at SYNC_BATCH_SIZE or SYNC_FLUSH_INTERVAL. Both processes are
warmed up (model loaded) before the measured writes start.
Lag = vector written (sync record's synced_at) - change committed (graph updated_at).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from common import ROOT, setup, wipe_graph


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    setup()
    from django.conf import settings

    from sync.models import SyncRecord
    from sync.observe.readings import percentiles
    from sync.policy import synced_labels
    from sync.stores import graph_store

    wipe_graph()
    graph = graph_store()
    graph.ensure_schema(synced_labels())
    assert graph.install_triggers(synced_labels()), "the bench needs APOC triggers"
    graph.wait_for_triggers()

    def write(n: int, prefix: str = "") -> None:
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

    def wait_synced(count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and SyncRecord.objects.filter(status="in_sync").count() < count:
            time.sleep(0.2)

    manage = [sys.executable, str(ROOT / "manage.py")]
    workers = [subprocess.Popen([*manage, "capture"], cwd=ROOT, env=os.environ),
               subprocess.Popen([*manage, "drain"], cwd=ROOT, env=os.environ)]
    try:
        for n in range(4):  # warm-up: both processes load the model and open their stores
            write(n, prefix="warm-")
        wait_synced(4, 120)
        warm = {(r.label, r.uid) for r in SyncRecord.objects.filter(uid__contains="warm-")}
        interval = 1.0 / args.rate
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < args.seconds:
            write(n)
            n += 1
            time.sleep(max(0.0, started + n * interval - time.monotonic()))
        wait_synced(len(warm) + n, 60)
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=60)
    print(f"{n} changes at {args.rate}/s over {args.seconds:.0f}s; capture every {settings.CAPTURE_INTERVAL}s "
          f"(HIGH applied by the poller), worker flush {settings.SYNC_BATCH_SIZE} events or "
          f"{settings.SYNC_FLUSH_INTERVAL}s")
    for label, priority in (("KEV", "HIGH"), ("ThreatActor", "MEDIUM")):
        lags = [(r.synced_at - r.changed_at).total_seconds() for r in
                SyncRecord.objects.filter(label=label, status="in_sync") if (r.label, r.uid) not in warm]
        p50, p95 = percentiles(lags, 0.50, 0.95)
        print(f"{priority:6} {label:12} synced {len(lags)} of {(n + (label == 'KEV')) // 2}: "
              f"lag p50 {p50:.2f}s p95 {p95:.2f}s max {max(lags):.2f}s"
              + ("  (target p95 <= 2 s)" if priority == "HIGH" else ""))


if __name__ == "__main__":
    main()
