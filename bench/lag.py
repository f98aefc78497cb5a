"""Change-to-vector lag at a steady rate of foreign writes to Neo4j.

    .venv/bin/python bench/lag.py [--rate 10] [--seconds 60]

Half the writes are CISA KEV entries (HIGH priority), half threat actors (MEDIUM), made with plain
Cypher by "another tool" (the APOC trigger stamps version/updated_at). Change capture and one
worker run in threads of this process, as in a django-q2 worker, with the default settings
(capture every CAPTURE_INTERVAL s, flush at SYNC_BATCH_SIZE or SYNC_FLUSH_INTERVAL; HIGH never
waits). Lag = vector written (sync record) - change committed (graph updated_at).
"""

from __future__ import annotations

import argparse
import threading
import time

from common import setup, wipe_graph


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    setup()
    from django.conf import settings
    from django.db import close_old_connections

    from sync import capture, worker
    from sync.embedding import get_embedder
    from sync.models import SyncRecord
    from sync.policy import synced_labels
    from sync.status import percentile
    from sync.stores import graph_store

    wipe_graph()
    graph = graph_store()
    graph.ensure_schema(synced_labels())
    assert graph.install_triggers(synced_labels()), "the bench needs APOC triggers"
    graph.wait_for_triggers()
    get_embedder().encode(["warm-up"])
    stop = threading.Event()

    def run_capture():
        while not stop.is_set():
            capture.poll_once("bench-capture")
            close_old_connections()
            stop.wait(settings.CAPTURE_INTERVAL)

    def run_worker():
        worker.drain(idle_exit=None, flush=True, stop=stop.is_set, worker="bench-worker")
        close_old_connections()

    threads = [threading.Thread(target=run_capture), threading.Thread(target=run_worker)]
    for thread in threads:
        thread.start()
    interval = 1.0 / args.rate
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < args.seconds:
        if n % 2 == 0:
            graph.driver.execute_query(
                "CREATE (:KEV {uid: $uid, cve_id: $uid, vulnerability_name: $name, short_description: $d})",
                uid=f"CVE-2026-{n:05d}", name=f"Bench vulnerability {n}", d=f"Remote code execution number {n}.",
                database_=graph.database)
        else:
            graph.driver.execute_query(
                "CREATE (:ThreatActor {uid: $uid, name: $name, description: $d})",
                uid=f"bench-actor-{n}", name=f"Actor {n}", d=f"Bench actor {n} targeting finance.",
                database_=graph.database)
        n += 1
        time.sleep(max(0.0, started + n * interval - time.monotonic()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and SyncRecord.objects.filter(status="in_sync").count() < n:
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    print(f"{n} changes at {args.rate}/s over {args.seconds:.0f}s; capture every {settings.CAPTURE_INTERVAL}s, "
          f"flush {settings.SYNC_BATCH_SIZE} events or {settings.SYNC_FLUSH_INTERVAL}s")
    for label, priority in (("KEV", "HIGH"), ("ThreatActor", "MEDIUM")):
        lags = [(r.synced_at - r.changed_at).total_seconds() for r in
                SyncRecord.objects.filter(label=label, status="in_sync")]
        print(f"{priority:6} {label:12} synced {len(lags)}: lag p50 {percentile(lags, 0.5):.2f}s "
              f"p95 {percentile(lags, 0.95):.2f}s max {max(lags):.2f}s"
              + ("  (target p95 <= 2 s)" if priority == "HIGH" else ""))


if __name__ == "__main__":
    main()
