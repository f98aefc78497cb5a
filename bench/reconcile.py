"""Full reconciliation of 100,000 synced entities with 1% injected drift.

    .venv/bin/python bench/reconcile.py [--entities 100000] [--drift 0.01]
    .venv/bin/python bench/reconcile.py --entities 1000000    # targets: <= 100 s, peak RSS <= 1 GB

Targets: 100,000 entities in <= 60 s within 1.5 GB; 1,000,000 in <= 100 s within 1 GB (flat:
reconciliation pages through both stores). Recall 100% and no false positives at any size.

Set-up (not timed): 100,000 ThreatActor/Vulnerability/Report nodes in the bench Neo4j, and their
vectors in LanceDB exactly as the engine writes them (documents built by the policy; vector
values are random unit vectors — reconciliation never reads values, and embedding 100k texts
would only slow the set-up) plus matching sync records. Then 1% drift is injected across the
classes, and a full reconciliation runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time

import numpy as np
from common import ROOT, Timer, peak_rss_mb, setup, wipe_graph

LABELS = ("ThreatActor", "Vulnerability", "Report")


def build(count: int) -> None:
    from django.utils import timezone

    from sync.models import SyncRecord
    from sync.policy import build_document, synced_labels
    from sync.stores import graph_store, vector_store
    from sync.stores.base import VectorRecord

    wipe_graph()
    graph = graph_store()
    graph.ensure_schema(synced_labels())
    graph.remove_triggers()
    per_label = count // len(LABELS)
    rng = np.random.default_rng(7)
    with Timer() as t:
        for label in LABELS:
            rows = [{"uid": f"{label.lower()}-{n:06d}", "name": f"{label} {n}", "title": f"{label} {n}",
                     "description": f"Synthetic {label} number {n} used to measure reconciliation.",
                     "summary": f"Summary of {label} {n}.", "severity": "high", "cvss_score": 7.5}
                    for n in range(per_label)]
            for start in range(0, len(rows), 10_000):
                graph.import_entities(label, rows[start:start + 10_000], source="bench")
    print(f"graph: {per_label * len(LABELS)} nodes in {t.seconds:.1f}s")
    store = vector_store()
    now = timezone.now()
    with Timer() as t:
        for label in LABELS:
            after = None
            while True:
                page = graph.scan_label(label, after, 5000)
                if not page:
                    break
                docs = [build_document(e) for e in page]
                chunks = [c for d in docs for c in d.chunks]
                values = rng.standard_normal((len(chunks), 384)).astype(np.float32)
                values /= np.linalg.norm(values, axis=1, keepdims=True)
                store.upsert([VectorRecord(c.vector_id, v.tolist(), c.metadata) for c, v in zip(chunks, values, strict=True)])
                SyncRecord.objects.bulk_create([
                    SyncRecord(label=d.label, uid=d.uid, graph_version=d.version, vector_version=d.version,
                               content_hash=d.content_hash, chunk_count=len(d.chunks), status="in_sync",
                               changed_at=now, synced_at=now) for d in docs], batch_size=1000)
                after = page[-1].uid
    print(f"vectors and records: {store.stats().total} vectors in {t.seconds:.1f}s")


def inject(count: int, fraction: float) -> dict[str, set[str]]:
    from sync.ids import parse_entity_key, vector_id
    from sync.stores import graph_store, vector_store
    from sync.stores.base import VectorRecord

    graph, store = graph_store(), vector_store()
    per_label = count // len(LABELS)
    victims = random.Random(11).sample(range(per_label * len(LABELS)), int(count * fraction))
    kinds = ("missing_vector", "orphan_vector", "stale_vector", "vector_ahead", "content_drift", "policy_violation")
    injected: dict[str, set[str]] = {k: set() for k in kinds}
    for i, victim in enumerate(victims):
        label = LABELS[victim % len(LABELS)]
        uid = f"{label.lower()}-{victim // len(LABELS):06d}"
        injected[kinds[i % len(kinds)]].add(f"{label}:{uid}")
    # An orphan looks like a real vector of its label (so it is an orphan, not a policy violation).
    templates = {label: store.fetch([vector_id(label, f"{label.lower()}-000000")])[
        vector_id(label, f"{label.lower()}-000000")] for label in LABELS}

    def vid(key):
        return vector_id(*parse_entity_key(key))

    store.delete([vid(k) for k in injected["missing_vector"]])
    orphans = {}
    for key in injected["orphan_vector"]:
        label, uid = parse_entity_key(key)
        orphans[key] = f"{label}:ghost-{uid}"
    injected["orphan_vector"] = set(orphans.values())
    store.upsert([VectorRecord(vector_id(label, uid), templates[label].values,
                               {**templates[label].metadata, "uid": uid})
                  for label, uid in map(parse_entity_key, orphans.values())])
    for key in injected["stale_vector"]:
        label, uid = parse_entity_key(key)
        graph.driver.execute_query(f"MATCH (n:{label} {{uid: $uid}}) SET n.version = n.version + 1", uid=uid,
                                   database_=graph.database)
    fetched = store.fetch([vid(k) for k in injected["vector_ahead"] | injected["content_drift"]
                           | injected["policy_violation"]])
    updates = {}
    for key in injected["vector_ahead"]:
        updates[vid(key)] = {**fetched[vid(key)].metadata, "version": 999}
    for key in injected["content_drift"]:
        updates[vid(key)] = {**fetched[vid(key)].metadata, "content_hash": "0" * 64}
    for key in injected["policy_violation"]:
        updates[vid(key)] = {**fetched[vid(key)].metadata, "contact_email": "leak@example.com"}
    store.update_metadata(updates)
    return injected


def run_reconcile() -> None:
    """In a fresh process: one full run; prints JSON with its figures."""
    from sync.reconcile import reconciler as reconcile

    findings: dict[str, list[str]] = {}
    original = reconcile.Reconciler.act

    def spy(self):
        for f in self.findings:
            findings.setdefault(f.kind, []).append(f"{f.label}:{f.uid}")
        return original(self)

    reconcile.Reconciler.act = spy
    started = time.perf_counter()
    run = reconcile.full()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rss_mb": peak_rss_mb(),
                      "entities": run.entities_checked, "vectors": run.vectors_checked, "drift": run.drift,
                      "findings": findings}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--drift", type=float, default=0.01)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setup(fresh=False)
        run_reconcile()
        return
    setup()
    build(args.entities)
    injected = inject(args.entities, args.drift)
    total = sum(len(v) for v in injected.values())
    print(f"injected {total} drifts: " + ", ".join(f"{k} {len(v)}" for k, v in injected.items()))
    out = subprocess.run([sys.executable, __file__, "--child"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    found = {k: set(v) for k, v in result["findings"].items()}
    recall = {k: len(v & found.get(k, set())) / len(v) for k, v in injected.items() if v}
    false = sum(len(v - injected.get(k, set())) for k, v in found.items())
    seconds, megabytes = (100, 1024) if args.entities >= 1_000_000 else (60, 1536)
    print(f"full reconciliation: {result['entities']} entities, {result['vectors']} vectors in "
          f"{result['seconds']:.1f}s (target <= {seconds} s), peak RSS {result['rss_mb']:.0f} MB "
          f"(target <= {megabytes} MB)")
    print("drift found: " + ", ".join(f"{k} {v}" for k, v in sorted(result["drift"].items())))
    print("recall per kind: " + ", ".join(f"{k} {r:.0%}" for k, r in recall.items())
          + f"; false positives {false}")


if __name__ == "__main__":
    main()
