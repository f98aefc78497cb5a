"""A whole-catalogue CISA KEV import against raw `model.encode` of its own texts, in one run.

    .venv/bin/python bench/kev_import.py [--entries 1400] [--batch 500] [--per-entry 0]

Generates a catalogue of the real feed's shape: CISA's entries from the demo's sample
(sync/demo/data/kev_sample.json) as templates, each given a generated id (CVE-<year>-9xxxxx, which
no real entry has) and its own wording, so that every KEV text is new. Measures raw `model.encode`
of exactly the texts the import embeds (the KEV documents' chunks, built by the policy), then
imports the catalogue with `manage.py import_kev` (the batched dual-write: rules, a saga per entry,
embedding and the vector write in the call, Vulnerability nodes queued), then encodes again. The
import's rate is in the same unit (texts embedded a second, process start excluded) and the
ratio is printed beside the goal (0.8x). `--per-entry N` also imports N further generated entries
one by one (the path the command took before batching: one embedding call, one vector write and
one enqueue per entry), for a before/after pair from the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from io import StringIO

from common import BENCH_DIR, Timer, peak_rss_mb, setup, wipe_graph

GOAL = 0.8


def catalogue(entries: int, first: int = 0) -> dict:
    """`entries` entries of the real feed's shape, ids CVE-<year>-9xxxxx from number `first`."""
    from sync.demo.graph import KEV_SAMPLE_PATH

    sample = json.loads(KEV_SAMPLE_PATH.read_text())
    templates = sample["vulnerabilities"]
    rows = []
    for n in range(first, first + entries):
        row = copy.deepcopy(templates[n % len(templates)])
        year = 2015 + n % 11
        row["cveID"] = f"CVE-{year}-{900000 + n}"
        row["vulnerabilityName"] = f"{row['vulnerabilityName']} (variant {n})"
        row["shortDescription"] = (f"{row['shortDescription']} Variant {n} is reachable through the "
                                   f"{('management', 'web', 'API', 'VPN', 'update')[n % 5]} interface.")
        rows.append(row)
    return {**{k: v for k, v in sample.items() if k != "vulnerabilities"}, "count": len(rows),
            "catalogVersion": "bench", "vulnerabilities": rows}


def kev_texts(feed: dict) -> list[str]:
    """The chunk texts the import will embed for these entries' KEV nodes."""
    from django.utils import timezone

    from sync.ingest.kev import KEV_CONFIDENCE, KEV_SOURCE, parse_kev_feed
    from sync.policy import build_document
    from sync.stores.base import Entity

    texts = []
    for entry in parse_kev_feed(feed).entries:
        properties = {**entry.kev_properties(), "uid": entry.cve_id, "version": 1, "source": KEV_SOURCE,
                      "confidence": KEV_CONFIDENCE}
        document = build_document(Entity("KEV", entry.cve_id, 1, timezone.now(), properties))
        texts += [chunk.text for chunk in document.chunks]
    return texts


class EncodeTimer:
    """Time the embedder's `encode` calls (the import's embedding) until `stop()`."""

    def __init__(self, embedder):
        self.embedder, self.real = embedder, embedder.encode
        self.seconds, self.calls, self.texts = 0.0, 0, 0
        embedder.encode = self

    def __call__(self, texts, *args, **kwargs):
        with Timer() as timer:
            values = self.real(texts, *args, **kwargs)
        self.seconds += timer.seconds
        self.calls += 1
        self.texts += len(texts)
        return values

    def stop(self) -> None:
        self.embedder.encode = self.real


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1400, help="catalogue size (the real one: about 1,400)")
    parser.add_argument("--batch", type=int, default=None, help="import batch (default: KEV_BATCH)")
    parser.add_argument("--encode-batch", type=int, default=None, help="default: EMBEDDING_BATCH_SIZE")
    parser.add_argument("--per-entry", type=int, default=0,
                        help="also import this many further entries one by one (the unbatched path)")
    args = parser.parse_args()
    setup()
    import torch
    from django.conf import settings
    from django.core.management import call_command
    from django.db.models import Count

    from sync.embedding import get_embedder
    from sync.ingest.kev import KEV_BATCH, import_kev_feed, write_through_sync
    from sync.models import SagaLog, SyncEvent
    from sync.stores import graph_store, vector_store

    wipe_graph()
    call_command("setup_graph", stdout=StringIO())
    feed = catalogue(args.entries)
    texts = kev_texts(feed)
    path = BENCH_DIR / "kev_bench.json"
    path.write_text(json.dumps(feed))
    encode_batch = args.encode_batch or settings.EMBEDDING_BATCH_SIZE
    batch = args.batch or KEV_BATCH
    print(f"{args.entries} generated KEV entries -> {len(texts)} KEV chunk texts; torch threads "
          f"{torch.get_num_threads()}, import batch {batch}, encode batch {encode_batch}")

    embedder = get_embedder()
    embedder.encode(texts[:64])  # warm-up: the model loaded, as in a running process
    with Timer() as opened:
        vector_store().ping()  # and the vector store opened (LanceDB's import alone takes a second or two)
    print(f"start-up outside the measurement: vector store opened in {opened.seconds:.1f}s")

    def raw() -> float:
        with Timer() as timer:
            embedder.model.encode(texts, batch_size=encode_batch, normalize_embeddings=True,
                                  show_progress_bar=False, convert_to_numpy=True)
        return len(texts) / timer.seconds

    raw_before = raw()
    out = StringIO()
    encoding = EncodeTimer(embedder)
    with Timer() as t:
        call_command("import_kev", str(path), "--batch", str(batch), stdout=out, stderr=out)
    encoding.stop()
    raw_after = raw()
    raw_rate = statistics.mean([raw_before, raw_after])
    rate = len(texts) / t.seconds
    print(f"raw model.encode: {raw_before:.1f} / {raw_after:.1f} texts/s (mean {raw_rate:.1f})")
    print(out.getvalue().strip())
    sagas = dict(SagaLog.objects.values_list("status").annotate(n=Count("id")))
    print(f"import: {args.entries} entries ({len(texts)} texts) in {t.seconds:.1f}s = "
          f"{args.entries / t.seconds:.1f} entries/s, {rate:.1f} texts/s; sagas {sagas}")
    print(f"  of which embedding {encoding.seconds:.1f}s ({encoding.texts} texts in {encoding.calls} calls), "
          f"everything else {t.seconds - encoding.seconds:.1f}s")
    print(f"RATIO import / raw encode = {rate / raw_rate:.3f} (goal >= {GOAL})")
    assert vector_store().stats().total >= len(texts), "every KEV chunk should be in the store"
    queued = SyncEvent.objects.filter(status="queued", label="Vulnerability").count()
    print(f"Vulnerability nodes queued for the workers: {queued}")

    if args.per_entry:
        graph = graph_store()
        more = catalogue(args.per_entry, first=args.entries)
        more_texts = kev_texts(more)
        with Timer() as t:
            report = import_kev_feed(more, graph=graph, write=write_through_sync)
        per_rate = len(more_texts) / t.seconds
        print(f"per-entry import (unbatched): {report.imported} entries ({len(more_texts)} texts) in "
              f"{t.seconds:.1f}s = {per_rate:.1f} texts/s; RATIO {per_rate / raw_rate:.3f}")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
