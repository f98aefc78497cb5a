"""Observation costs at full retention: 24 h of raw samples, 30 days of five-minute and hourly
rollups, 1,000,000 past sync events and 2,000 waiting ones.

Prints, per figure, p50/p95 over ROUNDS runs:
- one observer sample (the reading, the interval's lag percentiles, counters) and one rollup,
- the overview page for every chart range, its live poll (bytes, query count) and the charts poll,
- a /metrics scrape,
with the number of SQL queries of each: it must not grow with the data.

    .venv/bin/python -u bench/observe.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import random
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, setup  # noqa: E402

ROUNDS = 20


def timings(values: list[float]) -> str:
    from sync.observe.readings import percentiles  # the engine's one percentile (Django is set up by now)

    p50, p95 = percentiles(values, 0.50, 0.95)
    return f"p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--reuse", action="store_true", help="keep the events of the previous run (writing a "
                        "million takes minutes)")
    args = parser.parse_args()
    setup(fresh=not args.reuse)
    from django.core.management import call_command

    call_command("collectstatic", "--noinput", verbosity=0)  # pages render with the production static storage
    from django.contrib.auth.models import User
    from django.db import connection, transaction
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from sync.models import SyncEvent
    from sync.observe import samples
    from sync.observe.models import Heartbeat, MetricSample

    now = timezone.now()
    rng = random.Random(1)
    print(f"observe bench: {args.events:,} past events, 24 h of raw samples, 30 d of rollups", flush=True)
    if args.reuse and SyncEvent.objects.exists():
        MetricSample.objects.all().delete()
        SyncEvent.objects.exclude(status="done").delete()
        User.objects.filter(username="bench").delete()
    with Timer() as t, transaction.atomic():
        batch = []
        for n in range(0 if args.reuse and SyncEvent.objects.exists() else args.events):
            finished = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
            lag = rng.expovariate(1 / 4.0)
            batch.append(SyncEvent(label="ThreatActor", uid=f"e{n}", priority=n % 3, status="done", outcome="upserted",
                                   created_at=finished - timedelta(seconds=lag + 1), finished_at=finished,
                                   changed_at=finished - timedelta(seconds=lag), lag_seconds=lag))
            if len(batch) == 10000:
                SyncEvent.objects.bulk_create(batch)
                batch = []
        SyncEvent.objects.bulk_create(batch)
        for n in range(2000):
            SyncEvent.objects.create(label="Report", uid=f"q{n}", priority=n % 3, changed_at=now - timedelta(seconds=n))
    print(f"  events written in {t.seconds:.0f} s", flush=True)

    template = samples.record(now, totals={"errors": {"store": 1}, "embedded": 10, "applied": {}}).data
    rows = []
    for n in range(1, int(24 * 3600 / 15)):
        rows.append(MetricSample(resolution="raw", at=samples.aligned(now, 15) - timedelta(seconds=15 * n),
                                 seconds=15, data=template))
    for n in range(1, 30 * 288):
        rows.append(MetricSample(resolution="5m", at=samples.aligned(now, 300) - timedelta(seconds=300 * n),
                                 seconds=300, data=template))
    for n in range(1, 30 * 24):
        rows.append(MetricSample(resolution="1h", at=samples.aligned(now, 3600) - timedelta(seconds=3600 * n),
                                 seconds=3600, data=template))
    MetricSample.objects.bulk_create(rows, batch_size=2000)
    print(f"  samples: {MetricSample.objects.count():,} rows", flush=True)

    def measure(label, fn):
        times, queries = [], []
        for _ in range(ROUNDS):
            connection.queries_log.clear()  # the log keeps 9,000 queries: count each round alone
            with CaptureQueriesContext(connection) as captured, Timer() as timer:
                result = fn()
            times.append(timer.seconds)
            queries.append(len(captured))
        print(f"  {label:<34} {timings(times)}  queries {max(queries)}", flush=True)
        return result

    later = [now + timedelta(seconds=15 * (n + 1)) for n in range(ROUNDS)]
    measure("observer sample", lambda: samples.record(later.pop(0), totals={"errors": {}, "embedded": 0,
                                                                               "applied": {}}))
    MetricSample.objects.filter(resolution="5m", at__gte=now - timedelta(minutes=30)).delete()
    measure("rollup (catch-up, then none due)", lambda: samples.rollup(now + timedelta(minutes=10)))

    from sync.observe import health

    Heartbeat.beat("observer", "bench", services=health.as_dicts(health.check_services()))
    user = User.objects.create_user("bench", password="bench-password-0")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    for key in samples.RANGES:
        response = measure(f"overview ?range={key}", lambda key=key: client.get(f"/?range={key}"))
        assert response.status_code == 200
        print(f"  {'':<34} {len(response.content) / 1024:.0f} KB", flush=True)
    response = measure("live poll (changed)", lambda: client.get("/overview/live"))
    print(f"  {'':<34} {len(response.content):,} bytes", flush=True)
    version = response.content.decode().split("?v=")[1].split('"')[0]
    measure("live poll (unchanged: 204)", lambda: client.get(f"/overview/live?v={version}"))
    measure("charts poll ?range=1h", lambda: client.get("/overview/charts?range=1h"))
    measure("/metrics", lambda: client.get("/metrics"))


if __name__ == "__main__":
    main()
