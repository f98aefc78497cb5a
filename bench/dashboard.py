"""Dashboard pages' server time and query counts at scale (Django test client, SQLite).

Data: 100,000 sync records, 10,000 conflicts (1,000 open, with sources
and proposals), 1,000,000 past sync events (2,000 of them dead
letters with varied errors), 8,640 reconciliation runs, 30 days of metric samples (raw for the
last 24 h, 5-minute rollups before) and 200,000 audit entries; for the entity and search pages, a
graph node and a vector for every record (the bench Neo4j and LanceDB; the vectors are random unit
vectors, the search query is embedded by the real model inside the timed request) and one actor
with neighbours. Each page is requested 25 times after two warm-ups; printed:
p50 / p95 server time, queries per request and response size. Query counts are measured at a
tenth of the data first, then at full size: they must be equal (no N+1). Targets: p95 ≤ 150 ms,
search p95 ≤ 300 ms, live polls ≤ 5 KB.

    .venv/bin/python -u bench/dashboard.py            # full size (a few minutes to build the data)
    .venv/bin/python -u bench/dashboard.py --scale 0.1
    .venv/bin/python -u bench/dashboard.py --backfill   # a real server while a backfill embeds

A new page is measured by adding it to PAGES.
"""

from __future__ import annotations

import argparse
import random
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Timer, setup  # noqa: E402

FULL = {"records": 100_000, "conflicts": 10_000, "events": 1_000_000, "dead": 2_000, "runs": 8_640, "days": 30,
        "audit": 200_000}
REQUESTS, WARM_UPS = 25, 2
LABELS = ("ThreatActor", "Malware", "Vulnerability", "KEV", "Report", "Prospect")
ERRORS = (
    "ReadTimeout: timed out after {n}.0 s talking to the vector store",
    "PermanentStoreError: vector {label}:{uid}#0 has {n} dimensions, expected 384",
    "ServiceUnavailable: Neo4j at 127.0.0.1:{n} did not answer",
    "VersionConflict: expected v{n}, graph has v{m}",
    "RequestRefused: metadata of {label}:{uid} is {n} bytes, over the 40960 limit",
)


# (name, URL, is a live poll). Parameters in braces are filled from the data built.
PAGES = [
    ("overview", "/", False),
    ("overview live poll", "/overview/live", True),
    ("overview charts 30d", "/overview/charts?range=30d", False),
    ("queue", "/queue/", False),
    ("queue live poll", "/queue/live", True),
    ("dead letters of a group", "/queue/dead/?group={group}", False),
    ("retry confirmation", "/queue/dead/confirm?action=retry&group={group}&as_of={as_of}", False),
    ("reconciliation", "/reconciliation/", False),
    ("reconciliation run", "/reconciliation/{run}/", False),
    ("reconciliation progress poll", "/reconciliation/{running}/progress", True),
    ("alerts", "/alerts/", False),
    ("alert banner poll", "/alerts/banner", True),
    ("conflicts", "/conflicts/", False),
    ("conflicts filtered", "/conflicts/?kind=threat_severity&label=ThreatActor&age=24h&page=3", False),
    ("conflicts all, newest", "/conflicts/?status=all&sort=newest&page=150", False),
    ("conflict page", "/conflicts/{conflict}/?kind=threat_severity", False),
    ("bulk confirmation", "/conflicts/bulk/confirm?action=proposal&kind=threat_severity&as_of={as_of}", False),
    ("audit", "/audit/", False),
    ("audit, a deep page", "/audit/?before={audit_deep}", False),
    ("audit by user", "/audit/?user=analyst-3", False),
    ("audit by action", "/audit/?action=dead_letter.discard", False),
    ("audit by target", "/audit/?target=KEV:entity-00000", False),
    ("audit by time", "/audit/?since={audit_since}&until={audit_until}", False),
    ("policy", "/policy/", False),
    ("entities", "/entities/", False),
    ("entities filtered", "/entities/?label=ThreatActor&status=failed&sort=entity", False),
    ("entities deep page", "/entities/?sort=uid&page=200", False),
    ("entities by uid or name", "/entities/?q=0001234", False),
    ("entity page", "/entities/ThreatActor/entity-0000000", False),
    ("entity record poll", "/entity-record/ThreatActor/entity-0000000", True),
    ("resync preview (label)", "/resync/?scope=label&label=ThreatActor", False),
    ("search", "/search/?q=Russian+espionage+against+energy+firms&k=10", False),
    ("search one label", "/search/?q=ransomware+initial+access&label=Malware&k=10", False),
]
TARGETS = {"search": 300.0, "search one label": 300.0}  # ms; every other page: 150


def build(size: dict, start: dict) -> None:
    """Add rows until the tables hold `size` (they hold `start` already)."""
    from django.db import connection, transaction
    from django.utils import timezone

    from sync.models import Conflict, ReconcileRun, SyncRecord

    now = timezone.now()
    rnd = random.Random(7)
    with transaction.atomic():
        SyncRecord.objects.bulk_create([
            SyncRecord(label=LABELS[i % len(LABELS)], uid=f"entity-{i:07d}", graph_version=3, vector_version=3,
                       content_hash="0" * 64, chunk_count=1, status="in_sync" if i % 50 else "failed",
                       changed_at=now, synced_at=now)
            for i in range(start["records"], size["records"])], batch_size=5000)
        Conflict.objects.bulk_create([
            Conflict(kind="threat_severity", label="ThreatActor", uid=f"entity-{i:07d}",
                     status="open" if i % 10 == 0 else "resolved", graph_version=2,
                     graph_side={"severity": "high"}, other_side={"severity": "low"}, rule="ask_analyst",
                     proposal={"severity": "high"}, explanation="the higher severity wins (high)",
                     sources={"graph": {"source": f"vendor-{i % 3}", "confidence": 0.9, "updated_at": now.isoformat()},
                              "other": {"source": f"feed-{i % 4}", "confidence": 0.3, "updated_at": None}},
                     created_at=now - timedelta(minutes=i))
            for i in range(start["conflicts"], size["conflicts"])], batch_size=5000)
        kinds = ("stale_vector", "missing_vector", "content_drift")
        ReconcileRun.objects.bulk_create([
            ReconcileRun(mode="incremental" if i % 288 else "full", status="succeeded", trigger="schedule",
                         started_at=now - timedelta(minutes=5 * (size["runs"] - i)), finished_at=now, duration=3.5,
                         entities_checked=1000, vectors_checked=1100, drift={kinds[i % 3]: i % 7},
                         repaired={kinds[i % 3]: i % 7},
                         labels={label: {"checked": 200, "drift": i % 3} for label in LABELS},
                         samples=[{"kind": kinds[i % 3], "label": "Malware", "uid": f"entity-{j}", "detail": "v1 < v2"}
                                  for j in range(5)])
            for i in range(start["runs"], size["runs"])], batch_size=2000)
    audit_trail(size, start, now)
    # Events with one prepared statement: bulk_create spends longer compiling than SQLite writing.
    columns = ("label", "uid", "operation", "version", "priority", "status", "source", "attempts", "coalesced",
               "next_attempt_at", "claim_token", "lease_expires_at", "changed_at", "created_at", "finished_at",
               "outcome", "lag_seconds", "last_error")
    sql = f"INSERT INTO sync_syncevent ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    adapt = connection.ops.adapt_datetimefield_value
    span = size["days"] * 86400
    rows = []
    for i in range(start["events"], size["events"]):
        label, uid = LABELS[i % len(LABELS)], f"entity-{i % size['records']:07d}"
        created = now - timedelta(seconds=span * (1 - i / size["events"]))
        if i % (size["events"] // size["dead"]) == 0:
            error = ERRORS[i % len(ERRORS)].format(n=rnd.randint(1, 9999), m=rnd.randint(1, 99), label=label, uid=uid)
            rows.append((label, uid, "upsert", 3, 1, "dead", "capture", 8, 0, adapt(created), "", None,
                         adapt(created), adapt(created), adapt(created + timedelta(minutes=30)), "", None, error))
        else:
            done = created + timedelta(seconds=2)
            rows.append((label, uid, "upsert", 3, i % 3, "done", "capture", 1, 0, adapt(created), "", None,
                         adapt(created), adapt(created), adapt(done), "upserted", 1.5 + (i % 40) / 10, ""))
        if len(rows) == 20_000:
            _insert(sql, rows)
            rows = []
    _insert(sql, rows)
    stores(size, start, now)


def stores(size: dict, start: dict, now) -> None:
    """A graph node and a vector per new record; the entity page's actor with neighbours once."""
    import numpy as np

    from sync.stores import graph_store, vector_store
    from sync.stores.base import VectorRecord

    graph, vectors = graph_store(), vector_store()
    rnd = np.random.default_rng(start["records"])
    for begin in range(start["records"], size["records"], 5000):
        end = min(begin + 5000, size["records"])
        by_label: dict[str, list] = {}
        for i in range(begin, end):
            by_label.setdefault(LABELS[i % len(LABELS)], []).append(
                {"uid": f"entity-{i:07d}", "name": f"Entity {i}", "description": f"Intelligence item {i}."})
        for label, rows in by_label.items():
            graph.import_entities(label, rows, source="bench")
        matrix = rnd.standard_normal((end - begin, 384)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        result = vectors.upsert([VectorRecord(
            f"{LABELS[i % len(LABELS)]}:entity-{i:07d}", matrix[i - begin].tolist(),
            {"label": LABELS[i % len(LABELS)], "uid": f"entity-{i:07d}", "version": 1, "content_hash": "0" * 64,
             "chunk": 0, "chunks": 1, "model": "bench", "text": f"Name: Entity {i}", "name": f"Entity {i}"})
            for i in range(begin, end)])
        assert not result.failed, list(result.failed.items())[:3]
    if start["records"] == 0:
        graph.import_entities("Malware", [{"uid": f"tool-{n}", "name": f"Tool {n}"} for n in range(8)], source="bench")
        graph.import_relationships("USES", [("ThreatActor", "entity-0000000", "Malware", f"tool-{n}", {})
                                            for n in range(8)])


AUDIT_ACTIONS = ("dead_letter.retry", "resync", "conflict.resolve", "conflict.auto_resolve", "dead_letter.discard",
                 "reconcile.start", "alert.acknowledge", "conflict.dismiss", "user.role")


def audit_trail(size: dict, start: dict, now) -> None:
    """Audit entries over the last 30 days, mostly retries, resyncs and resolutions by 20 people."""
    import json

    from django.db import connection

    columns = ("at", "actor_name", "action", "target", "before", "after", "note")
    sql = f"INSERT INTO sync_auditentry ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    adapt = connection.ops.adapt_datetimefield_value
    span, rows = size["days"] * 86400, []
    for i in range(start["audit"], size["audit"]):
        action = AUDIT_ACTIONS[min(i % 23, len(AUDIT_ACTIONS) - 1)]
        target = f"{LABELS[i % len(LABELS)]}:entity-{i % size['records']:07d}"
        at = now - timedelta(seconds=span * (1 - i / size["audit"]))
        rows.append((adapt(at), f"analyst-{i % 20}", action, target, json.dumps({"status": "dead", "attempts": 8}),
                     json.dumps({"status": "queued", "event": i}), "after the vector store came back" if i % 5 else ""))
        if len(rows) == 20_000:
            _insert(sql, rows)
            rows = []
    _insert(sql, rows)


def _insert(sql: str, rows: list) -> None:
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def live_work(now) -> None:
    """Work in progress: queued and in-flight events and one running reconciliation."""
    from sync.models import ReconcileRun, SyncEvent

    SyncEvent.objects.bulk_create([SyncEvent(label="KEV", uid=f"live-{i}", priority=i % 3, created_at=now)
                                   for i in range(500)])
    SyncEvent.objects.bulk_create([SyncEvent(label="Report", uid=f"flying-{i}", status="in_flight",
                                             claim_token=f"host:{i % 2}:tok{i % 2}", lease_expires_at=now,
                                             attempts=1) for i in range(50)])
    ReconcileRun.objects.create(mode="full", status="running", trigger="ui", progress_done=5000, progress_total=100_000)


def samples(days: float, have_days: float) -> None:
    """Raw samples for the last 24 h and rollups before, cloned from one real sample."""
    from django.utils import timezone

    from sync.observe import samples as observed
    from sync.observe.models import Alert, MetricSample

    template = observed.record()
    data = template.data if template else MetricSample.objects.first().data
    now = timezone.now()
    rows = []
    raw_from = min(days, 1.0)
    if have_days < raw_from:
        at = observed.aligned(now - timedelta(days=raw_from), 15)
        while at < observed.aligned(now - timedelta(days=have_days), 15) - timedelta(seconds=15):
            rows.append(MetricSample(resolution="raw", at=at, seconds=15, data=data))
            at += timedelta(seconds=15)
    at = observed.aligned(now - timedelta(days=days), 300)
    stop = observed.aligned(now - timedelta(days=have_days), 300) if have_days else now
    while at < stop:
        rows.append(MetricSample(resolution="5m", at=at, seconds=300, data=data))
        at += timedelta(seconds=300)
    MetricSample.objects.bulk_create(rows, batch_size=2000, ignore_conflicts=True)
    if not Alert.objects.exists():
        Alert.objects.bulk_create([Alert(rule=f"rule_{i % 12}", severity="warning", status="resolved",
                                         summary=f"reading {i}", opened_at=now - timedelta(hours=i),
                                         resolved_at=now - timedelta(hours=i) + timedelta(minutes=10))
                                   for i in range(1, 400)])
        Alert.objects.create(rule="dead_letters", severity="warning", summary="2000 dead letters are waiting.")


def measure(client, params: dict) -> dict:
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    from sync.observe.readings import percentiles

    figures = {}
    for name, url, live in PAGES:
        url = url.format(**params)
        times, queries, size = [], [], 0
        for n in range(WARM_UPS + REQUESTS):
            reset_queries()  # the log keeps 9,000 queries: a full one made every count 0
            with CaptureQueriesContext(connection) as captured, Timer() as timer:
                response = client.get(url)
            assert response.status_code == 200, (name, response.status_code, response.content[:300])
            if n >= WARM_UPS:
                times.append(timer.seconds * 1000)
                queries.append(len(captured))
                size = len(response.content)
        p50, p95 = percentiles(times, 0.50, 0.95)
        figures[name] = {"p50": p50, "p95": p95,
                         "queries": max(queries), "bytes": size, "live": live}
    return figures


def parameters() -> dict:
    from django.utils import timezone

    from sync import audit, deadletters
    from sync.models import AuditEntry, Conflict, ReconcileRun
    from sync.stores import graph_store

    open_conflicts = Conflict.objects.filter(status="open").order_by("created_at", "id")
    conflict = open_conflicts[min(50, open_conflicts.count() // 2)]  # mid-list: both neighbours
    graph_store().import_entities("ThreatActor", [{
        "uid": conflict.uid, "name": "Bench actor", "severity": "high", "aliases": ["bench"],
        "description": "An intrusion set used by the benchmark. " * 20}], source="bench")
    deep = AuditEntry.objects.order_by("-at", "-id")[AuditEntry.objects.count() * 9 // 10]
    middle = AuditEntry.objects.order_by("-at", "-id")[AuditEntry.objects.count() // 2].at
    return {"audit_deep": str(audit.Cursor(deep.at, deep.id)).replace("+", "%2B"),
            "audit_since": (middle - timedelta(hours=6)).isoformat().replace("+", "%2B"),
            "audit_until": middle.isoformat().replace("+", "%2B"), "conflict": conflict.pk,
            "group": deadletters.groups()[0].key, "as_of": timezone.now().isoformat().replace("+", "%2B"),
            "run": ReconcileRun.objects.filter(status="succeeded").order_by("-started_at").first().pk,
            "running": ReconcileRun.objects.get(status="running").pk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full data size")
    parser.add_argument("--backfill", nargs="?", const="default,no-nice,lazy", metavar="VARIANTS",
                        help="instead: a real web server from its first request while a backfill embeds "
                             "(bench/web_load.py; variants default,no-nice,lazy)")
    parser.add_argument("--seconds", type=float, default=60.0, help="--backfill: how long to measure")
    args = parser.parse_args()
    if args.backfill:
        from bench import web_load

        web_load.main(args.backfill.split(","), args.seconds)
        return
    setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from dashboard.access import assign_role
    from sync.stores import vector_store

    call_command("collectstatic", "--noinput", verbosity=0)  # the manifest the pages' {% static %} reads
    vector_store()  # the LanceDB table exists before the first page pings it
    from bench.common import wipe_graph
    from sync.stores import graph_store

    wipe_graph()
    graph_store().ensure_schema(LABELS)
    admin = User.objects.create_user("bench")
    assign_role(admin, "analyst")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(admin)
    size = {k: (v if k == "days" else max(int(v * args.scale), 1)) for k, v in FULL.items()}
    small = {k: (v if k == "days" else max(v // 10, 1)) for k, v in size.items()}
    small["days"] = size["days"] / 10
    empty = dict.fromkeys(FULL, 0)
    live_work(timezone.now())
    with Timer() as t:
        build(small, empty)
        samples(small["days"], 0)
    print(f"built a tenth of the data in {t.seconds:.0f} s", flush=True)
    at_small = measure(client, parameters())
    with Timer() as t:
        build(size, small)
        samples(size["days"], small["days"])
    print(f"built the rest in {t.seconds:.0f} s", flush=True)
    at_full = measure(client, parameters())
    print(f"\n{size['records']:,} records, {size['conflicts']:,} conflicts, {size['events']:,} events "
          f"({size['dead']:,} dead letters), {size['runs']:,} reconciliation runs, {size['days']:g} days of samples, "
          f"{size['audit']:,} audit entries")
    print(f"{'page':<30} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8} {'(at 1/10)':>10} {'KB':>7}  verdict")
    for name, f in at_full.items():
        q_small = at_small[name]["queries"]
        target = TARGETS.get(name, 150.0)
        verdict = [f"p95 ok (≤ {target:g} ms)" if f["p95"] <= target else f"p95 OVER {target:g} ms",
                   "queries flat" if f["queries"] == q_small else "QUERIES GROW"]
        if f["live"]:
            verdict.append("poll ≤ 5 KB" if f["bytes"] <= 5120 else "POLL OVER 5 KB")
        print(f"{name:<30} {f['p50']:8.1f} {f['p95']:8.1f} {f['queries']:8d} {q_small:10d} {f['bytes'] / 1024:7.1f}  "
              + ", ".join(verdict))


if __name__ == "__main__":
    main()
