"""The outbox and Kafka transports side by side, on the same texts and the same machine.

    .venv/bin/python bench/transport.py [--limit 1500] [--seconds 60] [--rate 10]

Starts a Kafka 4 broker of its own (tools/kafka, KRaft, free ports, data under var/bench-kafka;
stopped and removed at the end), then runs the same measurements once per transport, each in a
child process with a fresh bench database and vector store (bench/common.py):

1. End-to-end sync of an evenly spread sample of `--limit` demo entities against raw
   `model.encode` on exactly their chunk texts (as bench/sync_throughput.py). Outbox: the work is
   enqueued as sync events and `worker.drain` applies it. Kafka: the work is published to the
   change topics (acknowledged by the broker) and a consumer of the group (`ChangeConsumer`, joined
   before the work is published) applies it and commits; its polls wait at most
   `--poll-seconds` for a batch to fill, as the outbox's drain does not wait (flush=False).
   Enqueueing / publishing is timed apart.
2. Metadata-only updates: a metadata-only field bumped on every synced entity, applied again
   (`--metadata-rounds`, median events/s).
3. HIGH lag at `--rate` foreign Cypher writes per second for `--seconds` (as bench/lag.py, without
   its LOW backlog): `manage.py capture` + `manage.py drain` for the outbox, `manage.py capture`
   publishing to Kafka + `manage.py consume` for Kafka, with the deployed settings (the consumer's
   poll window is KAFKA_BATCH_SECONDS unless `--kafka-batch-seconds`).

Prints one table: each figure per transport, the ratio kafka/outbox and the goals
(end-to-end >= 0.95x raw encode; HIGH lag p95 <= 1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from common import (
    ROOT,
    Timer,
    bump_metadata,
    capture_and,
    demo_sample,
    free_port,
    lag_graph,
    raw_encode_rate,
    setup,
    sync_lags,
    wait_synced,
    works_for,
    write_at_rate,
)

KAFKACTL = ROOT / "tools" / "kafka" / "kafkactl.py"
KAFKA_DIR = ROOT / "var" / "bench-kafka"
TRANSPORTS = ("outbox", "kafka")
E2E_GOAL = 0.95
HIGH_P95_GOAL = 1.0


def kafkactl(command: str, env: dict) -> None:
    subprocess.run([sys.executable, str(KAFKACTL), command], env=env, check=True, timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=1500,
                        help="sync an evenly spread sample of this many demo entities (0: all)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the lag measurement")
    parser.add_argument("--rate", type=float, default=10.0, help="foreign changes per second in the lag part")
    parser.add_argument("--batch-size", type=int, default=100, help="drain batch / consumer poll size")
    parser.add_argument("--metadata-rounds", type=int, default=3)
    parser.add_argument("--poll-seconds", type=float, default=0.2,
                        help="the throughput parts' consumer poll window (the drain does not wait either)")
    parser.add_argument("--kafka-batch-seconds", type=float, default=None,
                        help="the lag part's consumer poll window (default: KAFKA_BATCH_SECONDS)")
    parser.add_argument("--only", choices=TRANSPORTS, help=argparse.SUPPRESS)  # a child: one transport
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        result = measure(args)
        with open(args.out, "w") as out:
            json.dump(result, out)
        return

    name = f"bench{uuid.uuid4().hex[:8]}"
    bootstrap = f"127.0.0.1:{free_port()}"
    broker_env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_CONTROLLER_PORT": str(free_port()),
                  "KAFKA_LOCAL_DIR": str(KAFKA_DIR)}
    kafkactl("stop", broker_env)  # one left over by an interrupted run (its pid file)
    shutil.rmtree(KAFKA_DIR, ignore_errors=True)
    envs = {
        "outbox": {**os.environ, "SYNC_TRANSPORT": "outbox"},
        "kafka": {**os.environ, "SYNC_TRANSPORT": "kafka", "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                  "KAFKA_TOPIC_PREFIX": f"{name}.changes", "KAFKA_GROUP_ID": f"{name}-group"},
    }
    if args.kafka_batch_seconds is not None:
        envs["kafka"]["KAFKA_BATCH_SECONDS"] = str(args.kafka_batch_seconds)
    results = {}
    child = [sys.executable, __file__, *sys.argv[1:]]
    kafkactl("start", broker_env)
    try:
        for transport in TRANSPORTS:
            print(f"--- {transport} ---", flush=True)
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run([*child, "--only", transport, "--out", out.name], env=envs[transport], check=True)
                with open(out.name) as written:
                    results[transport] = json.load(written)
    finally:
        kafkactl("stop", broker_env)
        shutil.rmtree(KAFKA_DIR, ignore_errors=True)
    report(args, results)


def measure(args) -> dict:
    """One transport's figures (a child process, SYNC_TRANSPORT set by the parent)."""
    setup()
    from django.conf import settings

    from sync import queue, worker
    from sync.embedding import get_embedder
    from sync.models import SyncEvent, SyncRecord
    from sync.observe.readings import percentiles
    from sync.stores import vector_store

    kafka = settings.SYNC_TRANSPORT == "kafka"
    graph, entities, texts = demo_sample(args.limit)
    encode_batch = settings.EMBEDDING_BATCH_SIZE
    embedder = get_embedder()
    embedder.encode(texts[:256])  # warm-up
    taker = None
    if kafka:
        from sync.transport.consumer import ChangeConsumer, ConsumeTotals

        taker = ChangeConsumer("kafka-bench", batch_size=args.batch_size, batch_seconds=args.poll_seconds)
        deadline = time.monotonic() + 60
        while not taker.assigned and time.monotonic() < deadline:  # join the group before timing
            taker.step(ConsumeTotals())
        assert taker.assigned, "the bench consumer was given no partitions"

    def apply(expected: int):
        """Apply the queued / published work; (counts, seconds)."""
        with Timer() as t:
            if not kafka:
                counts = worker.drain(idle_exit=0, flush=False, batch_size=args.batch_size)
            else:
                totals = ConsumeTotals()
                deadline = time.monotonic() + 1800
                while totals.committed < expected and time.monotonic() < deadline:
                    taker.step(totals)
                assert totals.committed >= expected, f"consumed {totals.committed} of {expected} events"
                counts = totals.counts
        return counts, t.seconds

    raw_before = raw_encode_rate(embedder, texts, encode_batch)
    with Timer() as te:
        queued = queue.enqueue_many(works_for(entities))
    enqueue_rates = [queued.created / te.seconds]
    counts, seconds = apply(queued.created)
    raw_after = raw_encode_rate(embedder, texts, encode_batch)
    raw = statistics.mean([raw_before, raw_after])
    e2e = counts.embedded_chunks / seconds
    print(f"{settings.SYNC_TRANSPORT}: raw encode {raw_before:.1f} / {raw_after:.1f} texts/s; end-to-end "
          f"{counts.embedded_chunks} texts for {counts.upserted} entities in {seconds:.1f}s = {e2e:.1f} texts/s")
    assert vector_store().stats().total == len(texts), "every chunk should be in the store"

    synced = {(e.label, e.uid) for e in entities}
    metadata_rates = []
    for round_ in range(1, args.metadata_rounds + 1):
        current = bump_metadata(graph, round_, synced)
        with Timer() as te:
            queued = queue.enqueue_many(works_for(current))
        enqueue_rates.append(queued.created / te.seconds)
        counts, seconds = apply(queued.created)
        metadata_rates.append(counts.events / seconds)
        print(f"{settings.SYNC_TRANSPORT}: metadata-only round {round_}: {counts.events} events in {seconds:.2f}s "
              f"= {metadata_rates[-1]:.0f}/s (metadata rewritten {counts.metadata_only}, "
              f"embedded {counts.embedded_chunks})")
    if taker is not None:
        taker.close()  # leaves the group: `manage.py consume` takes every partition

    # Lag: a fresh graph with the triggers, fresh sync state, capture + a worker as processes.
    SyncEvent.objects.all().delete()
    SyncRecord.objects.all().delete()
    graph = lag_graph()
    applier = ["consume", "--name", "kafka-bench-lag"] if kafka else ["drain"]
    # The warm-up also lets the consumer join its group.
    with capture_and(applier, graph, warm_timeout=180) as warm:
        assert len(warm) == 4, f"warm-up: {len(warm)} of 4 synced"
        n = write_at_rate(graph, args.rate, args.seconds)
        wait_synced(len(warm) + n, 60)
    lags = {}
    for label, priority in (("KEV", "HIGH"), ("ThreatActor", "MEDIUM")):
        found = sync_lags(label, warm)
        p50, p95 = percentiles(found, 0.50, 0.95) if found else (float("nan"), float("nan"))
        lags[priority] = {"synced": len(found), "written": (n + (label == "KEV")) // 2, "p50": p50, "p95": p95,
                          "max": max(found, default=float("nan"))}
    return {
        "entities": len(entities), "texts": len(texts), "raw": raw, "e2e": e2e,
        "enqueue": statistics.median(enqueue_rates), "metadata": statistics.median(metadata_rates),
        "lag": lags, "changes": n, "encode_batch": encode_batch,
        "poll_seconds": settings.KAFKA_BATCH_SECONDS if kafka else None,
        "capture_interval": settings.CAPTURE_INTERVAL, "flush": [settings.SYNC_BATCH_SIZE, settings.SYNC_FLUSH_INTERVAL],
    }


def report(args, results: dict) -> None:
    outbox, kafka = results["outbox"], results["kafka"]
    print(f"\n{outbox['entities']} entities -> {outbox['texts']} chunk texts (both transports; encode batch "
          f"{outbox['encode_batch']}, drain batch / poll {args.batch_size}, throughput polls wait <= "
          f"{args.poll_seconds}s); lag: {outbox['changes']} / {kafka['changes']} foreign changes at {args.rate}/s "
          f"over {args.seconds:.0f}s, capture every {outbox['capture_interval']}s, outbox flush "
          f"{outbox['flush'][0]} events or {outbox['flush'][1]}s, Kafka polls {args.batch_size} events or "
          f"{kafka['poll_seconds']}s")

    def row(name: str, a: float, b: float, fmt: str, goal: str = "") -> None:
        ratio = f"{b / a:.2f}x" if a else "-"
        print(f"{name:34} {a:>10{fmt}} {b:>10{fmt}} {ratio:>13}  {goal}")

    def verdict(ok_outbox: bool, ok_kafka: bool) -> str:
        return f"outbox {'ok' if ok_outbox else 'MISSED'}, kafka {'ok' if ok_kafka else 'MISSED'}"

    print(f"{'':34} {'outbox':>10} {'kafka':>10} {'kafka/outbox':>13}  goal")
    row("raw model.encode texts/s", outbox["raw"], kafka["raw"], ".1f")
    row("end-to-end texts/s", outbox["e2e"], kafka["e2e"], ".1f")
    ratios = [r["e2e"] / r["raw"] for r in (outbox, kafka)]
    row("end-to-end / raw encode", *ratios, ".3f",
        f">= {E2E_GOAL}x: {verdict(*(r >= E2E_GOAL for r in ratios))}")
    row("enqueue / publish events/s", outbox["enqueue"], kafka["enqueue"], ".0f")
    row("metadata-only events/s (median)", outbox["metadata"], kafka["metadata"], ".0f")
    for priority in ("HIGH", "MEDIUM"):
        a, b = outbox["lag"][priority], kafka["lag"][priority]
        row(f"{priority} lag p50 s", a["p50"], b["p50"], ".2f")
        row(f"{priority} lag p95 s", a["p95"], b["p95"], ".2f",
            f"<= {HIGH_P95_GOAL} s: {verdict(a['p95'] <= HIGH_P95_GOAL, b['p95'] <= HIGH_P95_GOAL)}"
            if priority == "HIGH" else "")
        print(f"{priority + ' synced of written':34} {a['synced']:>5} / {a['written']:<4} {b['synced']:>5} / "
              f"{b['written']:<4}")


if __name__ == "__main__":
    main()
