"""Sync throughput with 1 vs 2 drain workers on PostgreSQL + Redis, and the per-core embedding rate.

    .venv/bin/python -u bench/scaleout.py [--entities 2000] [--workers 1 2]

Set-up (not timed): the bench Neo4j (bench/common.py) holds --entities ThreatActors; a throwaway
PostgreSQL (bin/postgres-for-tests on its own port and directory) and a redis-server on loopback.
For each worker count W: the vector store, records and queue are emptied, every entity is queued
(a resync), and a real `qcluster` on the Redis broker with SYNC_DRAIN_WORKERS=W (each drain given
cores / W torch threads, EMBEDDING_THREADS) is warmed up (each worker loads its model), then every
entity is queued and W drains are kicked; timed until every event is done.

Printed: texts/s end to end per W, the ratio W=2 / W=1, and raw `model.encode` texts/s with one
torch thread (per core) and with all of them — the figures docs/deploy.md's sizing rests on.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from common import ROOT, Timer, setup, wipe_graph

PG_PORT, PG_DIR = "5451", "/tmp/nightingale-bench-pg"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def texts(count: int) -> list[dict]:
    return [{"uid": f"actor-{n:05d}", "name": f"Actor {n}",
             "description": (f"Intrusion set {n} targets energy, finance and government networks with "
                             "spear-phishing, credential theft and living-off-the-land tooling; it stages "
                             f"data through cloud storage and rotates infrastructure every {n % 9 + 2} weeks.")}
            for n in range(count)]


def start_postgres() -> str:
    env = {**os.environ, "TEST_PG_PORT": PG_PORT, "TEST_PG_DIR": PG_DIR}
    return subprocess.run([str(ROOT / "bin" / "postgres-for-tests"), "start"], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def stop_postgres() -> None:
    env = {**os.environ, "TEST_PG_PORT": PG_PORT, "TEST_PG_DIR": PG_DIR}
    subprocess.run([str(ROOT / "bin" / "postgres-for-tests"), "stop"], env=env, check=False)


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def run_workers(env: dict, workers: int, count: int) -> tuple[float, int, int]:
    """Time `count` entities through `workers` drains, after a warm-up that loads every worker's
    model (the start-up of a cluster is not what a host's throughput is)."""
    import psycopg

    manage(env, "flush", "--noinput")
    cluster = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "workers"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = env["DATABASE_URL"].replace("postgres://", "postgresql://")

    def drains(seconds: float) -> None:
        kick = ("import django; django.setup(); from django_q.tasks import async_task; "
                f"[async_task('sync.tasks.drain_queue', {seconds}) for _ in range({workers})]")
        subprocess.run([sys.executable, "-c", kick], cwd=ROOT, env=env, check=True)

    def done(db) -> int:
        return db.execute("SELECT count(*) FROM sync_syncevent WHERE status = 'done'").fetchone()[0]

    try:
        with psycopg.connect(url, autocommit=True) as db:
            # Warm-up: each drain loads its model on a few entities of its own.
            warm = [f"actor-{n:05d}" for n in range(count, count + 4 * workers)]
            enqueue = ("import django; django.setup(); from sync import queue; "
                       f"queue.enqueue_many([queue.Work('ThreatActor', uid) for uid in {warm!r}])")
            subprocess.run([sys.executable, "-c", enqueue], cwd=ROOT, env=env, check=True)
            drains(20)
            while done(db) < len(warm):
                time.sleep(0.2)
            time.sleep(25)  # the warm-up drains end (idle exit), their models stay loaded in the workers
            db.execute("DELETE FROM sync_syncevent")
            manage(env, "resync", "--label", "ThreatActor")
            db.execute("DELETE FROM sync_syncevent WHERE uid = ANY(%s)", (warm,))
            with Timer() as timer:
                drains(600)
                while done(db) < count:
                    time.sleep(0.2)
        chunks = 0
        with psycopg.connect(url, autocommit=True) as db:
            chunks = db.execute("SELECT coalesce(sum(chunk_count), 0) FROM sync_syncrecord s JOIN sync_syncevent e "
                                "ON e.label = s.label AND e.uid = s.uid AND e.status = 'done'").fetchone()[0]
            claimers = db.execute("SELECT count(DISTINCT split_part(claim_token, ':', 2)) FROM sync_syncevent "
                                  "WHERE status = 'done'").fetchone()[0]
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        try:
            cluster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=10)
    return timer.seconds, chunks, claimers


def raw_rate(sample: list[str]) -> tuple[float, float]:
    """model.encode texts/s with one torch thread and with all of them."""
    import torch

    from sync.embedding import get_embedder

    model = get_embedder()
    model.encode(sample[:32])  # load and warm up
    rates = []
    for threads in (1, torch.get_num_threads()):
        torch.set_num_threads(threads)
        with Timer() as t:
            model.encode(sample)
        rates.append(len(sample) / t.seconds)
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    setup()
    from sync.policy import build_text, policy_for, synced_labels
    from sync.stores import graph_store

    wipe_graph()
    graph = graph_store()
    graph.ensure_schema(synced_labels())
    rows = texts(args.entities + 8)  # the last few warm the workers up
    graph.import_entities("ThreatActor", rows, source="bench")
    url = start_postgres()
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    cores = os.cpu_count() or 1
    results = {}
    try:
        for workers in args.workers:
            env = {**os.environ, "DATABASE_URL": url, "Q_BROKER": "redis", "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                   "SYNC_DRAIN_WORKERS": str(workers), "Q_WORKERS": str(workers + 2),
                   "EMBEDDING_THREADS": str(max(1, cores // workers)), "SYNC_KICK_DRAIN": "false",
                   "OBSERVE_BESIDE_CAPTURE": "false", "LANCEDB_DIR": str(ROOT / "var" / "bench" / f"lancedb-{workers}"),
                   "DJANGO_SETTINGS_MODULE": "nightingale.settings"}
            manage(env, "migrate", "--noinput")
            seconds, chunks, claimers = run_workers(env, workers, args.entities)
            results[workers] = chunks / seconds
            print(f"{workers} drain worker(s), {max(1, cores // workers)} torch thread(s) each: {args.entities} "
                  f"entities, {chunks} texts in {seconds:.1f}s = {chunks / seconds:.1f} texts/s "
                  f"({claimers} worker process(es) claimed work)")
    finally:
        redis.terminate()
        stop_postgres()
    policy = policy_for("ThreatActor")
    sample = [build_text(policy, row) for row in rows[:256]]
    per_core, all_cores = raw_rate(sample)
    if 1 in results and 2 in results:
        print(f"ratio 2 workers / 1 worker: {results[2] / results[1]:.2f}")
    print(f"raw model.encode: {per_core:.1f} texts/s on one core, {all_cores:.1f} texts/s on {cores} cores; "
          f"end to end with 1 worker: {results.get(1, 0) / all_cores:.2f} of raw")


if __name__ == "__main__":
    main()
