"""Metrics through faults (issue 20): every family the docs name is exposed from the first scrape,
each labelled counter with every known label value at zero, and the counters move as faults
happen (errors by kind, sagas by outcome, events applied by outcome, drift by kind)."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from sync import capture, queue, worker
from sync.apply import ApplyCounts, apply_events
from sync.observe import counters
from sync.observe.counters import APPLY_OUTCOMES, DRIFT_KINDS, ERROR_KINDS, PRIORITIES, SAGA_OUTCOMES
from sync.reconcile import reconciler
from sync.stores import graph_store, use_graph_store, use_vector_store
from sync.writes import SyncWriteError, write_entity
from tests.consistency import assert_index_matches_graph
from tests.faults.inject import FailingWrites
from tests.test_sync_engine import cypher

ROOT = Path(__file__).resolve().parent.parent
LABELLED = {  # family -> (label name, the values it is known to take)
    "sync_errors_total": ("kind", ERROR_KINDS),
    "sync_events_applied_total": ("outcome", APPLY_OUTCOMES),
    "consistency_violations_total": ("kind", DRIFT_KINDS),
    "sync_sagas_total": ("outcome", SAGA_OUTCOMES),
    "sync_lag_seconds_count": ("priority", PRIORITIES),
}


def documented_families() -> set[str]:
    """The metric names docs/observability.md lists under `/metrics`."""
    text = (ROOT / "docs" / "observability.md").read_text()
    section = text.split("## `/metrics`", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`((?:sync|consistency)_[a-z_]+)(?:\{[^}`]*\})?`", section))


def parse(exposition: str) -> tuple[set[str], dict[tuple[str, tuple], float]]:
    families, samples = set(), {}
    for family in text_string_to_metric_families(exposition):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


@pytest.mark.django_db(transaction=True)
def test_every_documented_family_is_exposed_from_the_first_scrape(tmp_path, neo4j_driver):
    """Expected: a fresh process (nothing counted yet, a fresh multiprocess directory) answers its
    first scrape with every family the docs name, every known label value of each counter at 0."""
    script = ("import django; django.setup(); from sync.observe.metrics import exposition; "
              "import sys; sys.stdout.write(exposition().decode())")
    env = {"DJANGO_SETTINGS_MODULE": "nightingale.settings", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}", "LOG_LEVEL": "error",
           "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    from django.conf import settings

    env.update(DATA_DIR=str(settings.DATA_DIR), NEO4J_URI=settings.NEO4J_URI, NEO4J_PASSWORD=settings.NEO4J_PASSWORD,
               SECRET_KEY=settings.SECRET_KEY, LANCEDB_DIR=str(tmp_path / "lancedb"))
    scraped = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert scraped.returncode == 0, scraped.stderr[-3000:]
    families, samples = parse(scraped.stdout)
    documented = documented_families()
    assert len(documented) >= 20, documented
    # A histogram's family is named without its _count/_sum/_bucket suffixes, a counter's without _total.
    exposed = families | {f"{name}_total" for name in families}
    assert documented <= exposed, sorted(documented - exposed)
    for family, (label, known) in LABELLED.items():
        for value in known:
            assert samples.get((family, ((label, value),))) == 0, (family, value)
    assert samples[("sync_embedded_chunks_total", ())] == 0
    for priority in PRIORITIES:
        assert samples[("sync_oldest_unsynced_age_seconds", (("priority", priority),))] == 0
        assert math.isnan(samples[("sync_window_lag_seconds", (("priority", priority), ("quantile", "95")))])
    for kind in DRIFT_KINDS:
        assert samples[("sync_reconciliation_drift", (("kind", kind),))] == 0
    from sync.observe.alerting import RULES

    for rule in RULES:
        assert samples[("sync_alerts_open", (("rule", rule.key), ("severity", str(rule.severity))))] == 0
    assert samples[("sync_reconciliation_last_failed", ())] == 0
    # What has never happened has no sample (rules test its absence), but its family is there.
    assert "sync_reconciliation_last_start_timestamp_seconds" in families
    assert not any(name == "sync_heartbeat_age_seconds" for name, _ in samples)


def test_the_call_sites_use_only_the_known_label_values():
    """The known values are the one list: every literal label a call site passes is in it."""
    known = {"SYNC_ERRORS": ERROR_KINDS, "EVENTS_APPLIED": APPLY_OUTCOMES, "CONSISTENCY_VIOLATIONS": DRIFT_KINDS}
    found: dict[str, set[str]] = {name: set() for name in known}
    for path in (ROOT / "sync").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "labels"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in known):
                for arg in node.args:
                    if isinstance(arg, ast.Constant):
                        found[node.func.value.id].add(arg.value)
                    elif isinstance(arg, ast.IfExp):
                        found[node.func.value.id] |= {a.value for a in (arg.body, arg.orelse)
                                                      if isinstance(a, ast.Constant)}
    for name, values in found.items():
        assert values and values <= set(known[name]), (name, values - set(known[name]))
    # And no known kind is left that nothing counts (some are chosen in a variable first).
    source = "\n".join(path.read_text() for path in (ROOT / "sync").rglob("*.py") if path.name != "counters.py")
    assert [kind for kind in ERROR_KINDS if f'"{kind}"' not in source] == []
    assert set(APPLY_OUTCOMES) <= {f.name for f in dataclasses.fields(ApplyCounts)}
    assert reconciler.KINDS == DRIFT_KINDS and set(reconciler.REPAIR) == set(DRIFT_KINDS)


def totals() -> dict[tuple[str, str], float]:
    """(family, label value) -> value, summed over every process's files."""
    with counters.files_locked(shared=True):
        families = list(counters.multiprocess_registry().collect())
    found = {}
    for family in families:
        for sample in family.samples:
            if sample.name in LABELLED:
                found[(sample.name, sample.labels[LABELLED[sample.name][0]])] = sample.value
    return found


def moved(before, after) -> dict[tuple[str, str], float]:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_counters_move_as_faults_happen(synced_graph, vectors, settings):
    """Expected, fault by fault: a vector store that fails every write counts one `store` error per
    batch and one `retryable` per entity; work that can never be written, `permanent`; a dual-write
    whose vector write fails, `dual_write` and a `compensated` saga (a good one, `committed`); Neo4j
    unreachable during capture, `capture`; a worker that lost its lease, `fenced`; applies count
    their outcomes; a reconciliation counts the drift it finds."""
    # (A record a store refuses is the vector-store faults' case: tests/faults/.)
    settings.SYNC_BACKOFF_BASE, settings.SYNC_BACKOFF_MAX = 0.01, 0.02
    before = totals()
    cypher(synced_graph, "UNWIND range(1, 3) AS n CREATE (:ThreatActor {uid: 'm-' + n, name: 'Actor ' + n, "
                         "description: 'Counted actor ' + n})")
    capture.poll_once("test", overlap=0)
    use_vector_store(FailingWrites(vectors, failures=1))
    assert worker.drain(idle_exit=0).retried == 3  # the store failed the batch
    use_vector_store(vectors)
    worker.drain(idle_exit=None, max_seconds=30, stop=lambda: not queue.lanes().get("medium").depth)
    step = moved(before, totals())
    assert step[("sync_errors_total", "store")] == 1 and step[("sync_errors_total", "retryable")] == 3
    assert step[("sync_events_applied_total", "upserted")] == 3

    before = totals()
    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'm-1'}) SET a.severity = 'high'")  # metadata only
    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'm-3'}) DETACH DELETE a")
    capture.poll_once("test", overlap=0)
    queue.enqueue(queue.Work("ThreatActor", "u" * 5000))  # a key no vector can have: fails for good
    worker.drain(idle_exit=0)
    step = moved(before, totals())
    assert step[("sync_events_applied_total", "metadata_only")] == 1
    assert step[("sync_events_applied_total", "deleted")] == 1
    assert step[("sync_errors_total", "permanent")] == 1

    before = totals()
    write_entity("KEV", "CVE-2026-0001", {"cve_id": "CVE-2026-0001", "vulnerability_name": "Good"}, source="cisa")
    use_vector_store(FailingWrites(vectors))
    with pytest.raises(SyncWriteError):
        write_entity("KEV", "CVE-2026-0002", {"cve_id": "CVE-2026-0002", "vulnerability_name": "Bad"}, source="cisa")
    use_vector_store(vectors)
    step = moved(before, totals())
    assert step[("sync_sagas_total", "committed")] == 1 and step[("sync_sagas_total", "compensated")] == 1
    assert step[("sync_errors_total", "dual_write")] == 1
    worker.drain(idle_exit=0)  # the compensation's repair of the vector

    before = totals()
    from sync.stores.neo4j_graph import Neo4jGraphStore

    real = graph_store()
    unreachable = Neo4jGraphStore("bolt://127.0.0.1:9", "neo4j", "x", retry_time=0.2)
    use_graph_store(unreachable)
    try:
        capture.run("test", seconds=0.1, interval=0.05)
    finally:
        use_graph_store(real)
        unreachable.close()
    assert moved(before, totals())[("sync_errors_total", "capture")] >= 1

    before = totals()
    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'm-1'}) SET a.description = 'Counted actor 1, renamed'")
    capture.poll_once("test", overlap=0)
    late = queue.claim_batch("late-worker", 10, visibility_timeout=0)  # its lease is over at once
    assert apply_events(queue.claim_batch("other-worker", 10)).upserted == 1
    assert apply_events(late).fenced == 1
    vectors.delete([next(iter(vectors.list_ids("KEV:")))])  # drift: a vector gone from the store
    run = reconciler.full()
    step = moved(before, totals())
    assert step[("sync_events_applied_total", "fenced")] == 1
    assert step[("sync_events_applied_total", "upserted")] == 1
    assert step[("consistency_violations_total", "missing_vector")] == run.drift["missing_vector"] == 1
    worker.drain(idle_exit=0)
    assert_index_matches_graph(synced_graph, vectors, dead_letters=1)  # the impossible key, dead-lettered
