"""End-to-end sync throughput against raw `model.encode`, and metadata-only update throughput.

    .venv/bin/python bench/sync_throughput.py [--batch-size 100]

Loads the demo graph into the bench Neo4j, measures raw `model.encode` on exactly the chunk
texts the engine will embed (before and after, averaged), then enqueues every synced entity and
drains the queue through the real engine (graph read, policy, embedding, LanceDB upsert with the
version guard, sync records, acks). Then, in a few rounds, bumps a metadata-only field on every
synced entity and drains again (no embedding; batches grow up to SYNC_MAX_BATCH_SIZE). Prints
figures and the ratios the targets are stated in. `--limit 0` syncs the whole demo graph.
"""

from __future__ import annotations

import argparse
import statistics

from common import CpuTimer, Timer, bump_metadata, demo_sample, peak_rss_mb, raw_encode_rate, setup, works_for


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--encode-batch", type=int, default=None, help="default: EMBEDDING_BATCH_SIZE")
    parser.add_argument("--metadata-rounds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=1500,
                        help="sync an evenly spread sample of this many demo entities (0: all)")
    args = parser.parse_args()
    setup()
    import torch
    from django.conf import settings

    from sync import queue, worker
    from sync.embedding import get_embedder
    from sync.stores import vector_store

    graph, entities, texts = demo_sample(args.limit)
    encode_batch = args.encode_batch or settings.EMBEDDING_BATCH_SIZE
    print(f"{len(entities)} synced entities -> {len(texts)} chunk texts; torch threads {torch.get_num_threads()}")

    embedder = get_embedder()
    embedder.encode(texts[:256])  # warm-up
    # Opened before anything is timed, as a worker has it (manage.py workers imports the stores'
    # clients before it forks): LanceDB's import alone is 1.5-2 s, once per process.
    vector_store().ping()

    raw_before = raw_encode_rate(embedder, texts, encode_batch)
    queue.enqueue_many(works_for(entities))
    with Timer() as t:
        counts = worker.drain(idle_exit=0, flush=False, batch_size=args.batch_size)
    e2e = counts.embedded_chunks / t.seconds
    raw_after = raw_encode_rate(embedder, texts, encode_batch)
    raw_rate = statistics.mean([raw_before, raw_after])
    print(f"raw model.encode: {raw_before:.1f} / {raw_after:.1f} texts/s (mean {raw_rate:.1f}, batch {encode_batch})")
    print(f"end-to-end sync: {counts.embedded_chunks} texts for {counts.upserted} entities in {t.seconds:.1f}s "
          f"= {e2e:.1f} texts/s ({counts.events} events, batch {args.batch_size})")
    ratio = e2e / raw_rate
    print(f"RATIO end-to-end / raw encode = {ratio:.3f} (goal >= 0.95: {'ok' if ratio >= 0.95 else 'UNDER'})")
    assert vector_store().stats().total == len(texts), "every chunk should be in the store"
    synced = {(e.label, e.uid) for e in entities}

    rates, vector_rates, timers = [], [], []
    for round_ in range(1, args.metadata_rounds + 1):
        entities = bump_metadata(graph, round_, synced)
        queue.enqueue_many(works_for(entities))
        with CpuTimer() as t:
            counts = worker.drain(idle_exit=0, flush=False, batch_size=args.batch_size)
        timers.append(t)
        rates.append(counts.events / t.seconds)
        vector_rates.append(counts.vectors_written / t.seconds)
        print(f"metadata-only update, round {round_}: {counts.events} entities in {t.seconds:.2f}s "
              f"= {rates[-1]:.0f} entities/s, {counts.vectors_written} vectors' metadata rewritten = "
              f"{vector_rates[-1]:.0f} vectors/s (embedded {counts.embedded_chunks}, metadata rewritten "
              f"{counts.metadata_only}, unchanged {counts.unchanged})")
    median = statistics.median(rates)
    times = median / raw_rate
    print(f"METADATA-ONLY median {median:.0f} entities/s over {len(rates)} rounds (batch {args.batch_size}, growing "
          f"to {settings.SYNC_MAX_BATCH_SIZE}) = {times:.0f}x the raw encode rate in texts/s "
          f"(goal >= 100x: {'ok' if times >= 100 else 'UNDER'})")
    # The same work counted in the same unit on both sides: each vector either has its metadata
    # rewritten or its text embedded (an entity here has len(texts) / len(entities) vectors).
    vectors = statistics.median(vector_rates)
    print(f"METADATA-ONLY per vector: median {vectors:.0f} vectors/s = {vectors / raw_rate:.0f}x the rate at which "
          f"the same vectors' texts are embedded ({len(texts) / len(synced):.2f} vectors an entity)")
    # Where a round's time goes: CPU time against wall time says whether the round waits or works,
    # and on how many cores (Python's own work holds the GIL: one core at most).
    def typical(values):
        return statistics.median(values) if values and None not in values else float("nan")

    wall, process, main = (typical([getattr(t, name) for t in timers]) for name in ("seconds", "process", "main_thread"))
    neo4j = typical([t.neo4j for t in timers])
    goal = len(synced) / (100 * raw_rate)
    print(f"METADATA-ONLY CPU per round (medians): {process:.2f} s in this process ({main:.2f} s on its main thread), "
          f"{neo4j:.2f} s in Neo4j, in {wall:.2f} s of wall time; 100x would need the round of {len(synced)} "
          f"entities in {goal:.2f} s")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
