"""Change-to-vector lag at a steady rate of foreign writes to Neo4j.

    .venv/bin/python bench/lag.py [--rate 10] [--seconds 60] [--backlog 2000] [--bulk-during 2000]

Half the writes are CISA KEV entries (HIGH priority), half threat actors (MEDIUM), made with plain
Cypher by "another tool" (the APOC trigger stamps version/updated_at). Change capture and one
drain worker run as separate processes (`manage.py capture`, `manage.py drain`), as django-q2 runs
its tasks, with the default settings: capture every CAPTURE_INTERVAL s and HIGH work applied by the
poller at once; the worker flushes at SYNC_BATCH_SIZE or SYNC_FLUSH_INTERVAL. Both processes are
warmed up (model loaded) before the measured writes start.
Lag = vector written (sync record's synced_at) - change committed (graph updated_at).
With `--backlog N` (default 2000), N LOW priority reports are written first, so that the worker is
draining a LOW backlog throughout the measurement: HIGH lag must hold while it does. With
`--bulk-during N` (default 2000), N more are written at once halfway through (a feed import landing
while KEV entries change): capture must read and queue that bulk, and HIGH lag must hold then too.
"""

from __future__ import annotations

import argparse
import threading
import time

from common import capture_and, lag_graph, setup, sync_lags, wait_synced, write_at_rate


def write_reports(graph, count: int, prefix: str) -> None:
    """`count` LOW priority reports in one transaction (a bulk import by another tool)."""
    graph.driver.execute_query(
        "UNWIND range(1, $n) AS i CREATE (:Report {uid: $prefix + '-' + i, title: 'Backlog report ' + i, "
        "body: 'A long-running campaign against the energy sector, report ' + i + '. ' + $filler})",
        n=count, prefix=prefix, filler="Initial access by spear-phishing, then lateral movement. " * 12,
        database_=graph.database)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--backlog", type=int, default=2000, help="LOW priority reports written before (0: none)")
    parser.add_argument("--bulk-during", type=int, default=2000,
                        help="LOW priority reports written at once halfway through (0: none)")
    args = parser.parse_args()
    setup()
    from django.conf import settings

    from sync.models import SyncEvent
    from sync.observe.readings import percentiles

    graph = lag_graph()
    with capture_and(["drain"], graph, warm_timeout=120) as warm:
        if args.backlog:
            write_reports(graph, args.backlog, "backlog")
            while not SyncEvent.objects.filter(label="Report").exists():  # captured: the backlog is queued
                time.sleep(0.2)
        bulk = threading.Timer(args.seconds / 2, write_reports, (graph, args.bulk_during, "bulk"))
        if args.bulk_during:
            bulk.start()
        n = write_at_rate(graph, args.rate, args.seconds)
        bulk.join()
        wait_synced(len(warm) + n, 60)
    backlog_left = SyncEvent.objects.filter(label="Report", status__in=["queued", "in_flight"]).count()
    print(f"{n} changes at {args.rate}/s over {args.seconds:.0f}s; capture every {settings.CAPTURE_INTERVAL}s "
          f"({getattr(settings, 'CAPTURE_FAST_INTERVAL', '-')}s while HIGH labels change; HIGH applied by the poller), "
          f"worker "
          f"flush {settings.SYNC_BATCH_SIZE} events or {settings.SYNC_FLUSH_INTERVAL}s; LOW backlog "
          f"{args.backlog} reports, {backlog_left} still queued at the end"
          + (" (the backlog ran out during the measurement)" if args.backlog and not backlog_left else "")
          + (f"; {args.bulk_during} more written at once after {args.seconds / 2:.0f}s" if args.bulk_during else ""))
    for label, priority in (("KEV", "HIGH"), ("ThreatActor", "MEDIUM")):
        lags = sync_lags(label, warm)
        p50, p95 = percentiles(lags, 0.50, 0.95)
        print(f"{priority:6} {label:12} synced {len(lags)} of {(n + (label == 'KEV')) // 2}: "
              f"lag p50 {p50:.2f}s p95 {p95:.2f}s max {max(lags):.2f}s"
              + (f"  (goal p95 <= 1.0 s: {'ok' if p95 <= 1.0 else 'OVER'})" if priority == "HIGH" else ""))


if __name__ == "__main__":
    main()
