"""CISA KEV feed import: validation with positions, partial import, idempotent re-import, the command."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from sync.demo.graph import KEV_SAMPLE_PATH
from sync.ingest.kev import (
    KevFeedError,
    import_kev_feed,
    parse_kev_feed,
    write_through_sync,
)
from sync.stores.base import PermanentStoreError, RetryableStoreError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = json.loads(KEV_SAMPLE_PATH.read_text())


def feed(*entries):
    return {"title": "CISA Catalog of Known Exploited Vulnerabilities", "catalogVersion": "2024.11.05",
            "dateReleased": "2024-11-05T17:00:47.0000Z", "count": len(entries),
            "vulnerabilities": list(entries)}


def entry(cve="CVE-2021-44228", **changes):
    base = next(v for v in SAMPLE["vulnerabilities"] if v["cveID"] == "CVE-2021-44228")
    return {**copy.deepcopy(base), "cveID": cve, **changes}


def node(graph, label, uid):
    return graph.get_entities([(label, uid)]).get((label, uid))


def count(graph, cypher):
    with graph.driver.session() as session:
        return session.run(cypher).single()[0]


# --- the sample -------------------------------------------------------------------------------


def test_the_sample_is_a_valid_feed_of_real_entries():
    parsed = parse_kev_feed(KEV_SAMPLE_PATH.read_bytes())
    assert parsed.errors == [] and parsed.warnings == []
    assert parsed.total == SAMPLE["count"] == len(parsed.entries) >= 40
    ids = {e.cve_id for e in parsed.entries}
    assert {"CVE-2021-44228", "CVE-2023-34362", "CVE-2021-26855", "CVE-2023-4966", "CVE-2024-3400"} <= ids


def test_the_sample_imports_as_linked_kev_and_vulnerability_nodes(graph):
    report = import_kev_feed(KEV_SAMPLE_PATH.read_bytes(), graph=graph)

    assert (report.imported, report.updated, report.unchanged, report.skipped, report.failed) == (42, 0, 0, 0, 0)
    assert report.ok and report.linked == 42
    assert report.catalog_version == "2024.11.05"
    assert graph.count_label("KEV") == graph.count_label("Vulnerability") == 42
    assert count(graph, "MATCH (k:KEV)-[:LISTS]->(v:Vulnerability) WHERE k.uid = v.uid RETURN count(*)") == 42

    log4shell = node(graph, "KEV", "CVE-2021-44228").properties
    assert log4shell["vendor_project"] == "Apache" and log4shell["product"] == "Log4j2"
    assert log4shell["date_added"] == "2021-12-10" and log4shell["cwes"] == ["CWE-917"]
    assert (log4shell["source"], log4shell["confidence"]) == ("cisa-kev", 1.0)
    assert log4shell["severity"] == "critical"  # known ransomware campaign use
    assert node(graph, "KEV", "CVE-2024-3400").properties["severity"] == "high"  # "Unknown"
    vuln = node(graph, "Vulnerability", "CVE-2023-34362").properties
    assert vuln["title"] == "Progress MOVEit Transfer SQL Injection Vulnerability"
    assert vuln["description"].startswith("Progress MOVEit Transfer contains a SQL injection")
    assert vuln["cwes"] == ["CWE-89"] and "cvss_score" not in vuln  # the feed has no score


# --- malformed entries ------------------------------------------------------------------------


def test_malformed_entries_are_reported_with_positions_and_skipped(graph):
    html = "<script>alert('x')</script> Contains <b>bold</b> &amp; escaped text."
    data = feed(
        entry("CVE-2021-44228"),                                   # 0 valid
        {k: v for k, v in entry("CVE-2099-0001").items() if k != "cveID"},  # 1 no cveID
        entry("CVE-2023-34362", dateAdded="2023-02-30"),          # 2 not a calendar date
        entry("CVE-2023-4966", dueDate="11/08/2023"),              # 3 wrong date format
        entry("CVE-2024-3400", product=42, cwes="CWE-77"),         # 4 wrong types, two reasons
        ["CVE-2020-1472"],                                         # 5 not an object
        entry("CVE-2017-0144", knownRansomwareCampaignUse="Yes"),  # 6 bad enum
        entry("CVE-21-1"),                                         # 7 bad cveID
        entry("CVE-2021-44228"),                                   # 8 duplicate of 0
        entry("CVE-2022-1388", shortDescription=html),             # 9 valid: HTML is text
        entry("CVE-2019-0708", shortDescription="x" * 6000),       # 10 too long
        entry("CVE-2018-13379", vendorProject="  "),               # 11 empty
        entry("CVE-2019-11510", cwes=["CWE-22", None]),            # 12 null in list
    )
    report = import_kev_feed(json.dumps(data), graph=graph)

    assert (report.imported, report.skipped, report.failed) == (2, 11, 0)
    by_index = {e.index: e for e in report.errors}
    assert sorted(by_index) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12]
    assert by_index[1].cve_id is None and by_index[1].reason == "cveID is missing"
    assert by_index[2].cve_id == "CVE-2023-34362" and "dateAdded '2023-02-30' is not a date" in by_index[2].reason
    assert "dueDate '11/08/2023' is not a date (YYYY-MM-DD)" in by_index[3].reason
    assert by_index[4].reason == "product must be a string, got a number; cwes must be a list of strings, got a string"
    assert by_index[5].reason == "entry must be an object, got a list"
    assert "knownRansomwareCampaignUse 'Yes'" in by_index[6].reason
    assert "cveID 'CVE-21-1' does not look like CVE-YYYY-NNNN" in by_index[7].reason
    assert by_index[8].reason == "duplicate of vulnerabilities[0]"
    assert "shortDescription is 6000 characters, more than 5000" in by_index[10].reason
    assert by_index[11].reason == "vendorProject is empty"
    assert by_index[12].reason == "cwes must be a list of non-empty strings, found null"
    assert str(by_index[2]).startswith("vulnerabilities[2] (CVE-2023-34362): ")

    assert graph.count_label("KEV") == 2
    # HTML is data here: the graph keeps exactly what CISA wrote; only the vector text is cleaned.
    assert node(graph, "KEV", "CVE-2022-1388").properties["short_description"] == html
    assert node(graph, "Vulnerability", "CVE-2022-1388").properties["description"] == html
    for skipped in ("CVE-2023-34362", "CVE-2023-4966", "CVE-2024-3400", "CVE-21-1", "CVE-2019-0708"):
        assert node(graph, "KEV", skipped) is None


def test_optional_fields_of_older_snapshots_and_header_mismatches():
    old = {k: v for k, v in entry().items() if k not in ("notes", "cwes")}
    parsed = parse_kev_feed({"count": 5, "catalogVersion": 2021, "vulnerabilities": [old]})
    assert parsed.errors == []
    assert parsed.entries[0].notes == "" and parsed.entries[0].cwes == ()
    assert parsed.warnings == ["header field 'catalogVersion' should be a string, got a number; ignored",
                               "header says count=5 but the feed lists 1 entries"]


@pytest.mark.parametrize(("data", "message"), [
    (b"<html>503 Service Unavailable</html>", "the file is not JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    ("[]", "the feed must be a JSON object, got a list"),
    ('{"title": "CISA"}', "the feed has no 'vulnerabilities' list"),
    ('{"vulnerabilities": {"cveID": "CVE-2021-44228"}}', "'vulnerabilities' must be a list, got an object"),
])
def test_an_unusable_file_is_one_clear_error_and_writes_nothing(graph, data, message):
    with pytest.raises(KevFeedError, match=message):
        import_kev_feed(data, graph=graph)
    assert graph.count_label("KEV") == 0


# --- re-import --------------------------------------------------------------------------------


def test_reimport_is_idempotent_and_only_changed_entries_are_written(graph):
    raw = KEV_SAMPLE_PATH.read_bytes()
    import_kev_feed(raw, graph=graph)
    before = graph.get_entities([("KEV", "CVE-2021-44228"), ("Vulnerability", "CVE-2021-44228")])

    again = import_kev_feed(raw, graph=graph)
    assert (again.imported, again.updated, again.unchanged, again.linked) == (0, 0, 42, 42)
    after = graph.get_entities(before.keys())
    assert after == before  # same content, same version, same updated_at: nothing to re-sync
    assert count(graph, "MATCH ()-[r:LISTS]->() RETURN count(r)") == 42

    changed = json.loads(raw)
    changed["vulnerabilities"][0]["knownRansomwareCampaignUse"] = "Unknown"
    third = import_kev_feed(changed, graph=graph)
    assert (third.imported, third.updated, third.unchanged) == (0, 1, 41)
    kev = node(graph, "KEV", "CVE-2021-44228")
    assert kev.version == before[("KEV", "CVE-2021-44228")].version + 1
    assert kev.properties["severity"] == "high"
    assert node(graph, "Vulnerability", "CVE-2021-44228").properties["severity"] == "high"


def test_the_catalogue_owns_kev_nodes_but_not_another_sources_cve_record(graph):
    import_kev_feed(feed(entry()), graph=graph)
    graph.write_entity("KEV", "CVE-2021-44228", {"severity": "low"}, source="analyst", confidence=0.4)
    nvd = {"title": "Log4Shell", "cvss_score": 10.0, "severity": "critical", "description": "From NVD."}
    graph.write_entity("Vulnerability", "CVE-2023-34362", nvd, source="nvd", confidence=0.9)

    report = import_kev_feed(feed(entry(), entry("CVE-2023-34362")), graph=graph)
    assert (report.imported, report.updated, report.unchanged) == (1, 1, 0)
    props = node(graph, "KEV", "CVE-2021-44228").properties
    assert (props["severity"], props["source"], props["confidence"]) == ("critical", "cisa-kev", 1.0)
    vuln = node(graph, "Vulnerability", "CVE-2023-34362").properties
    assert (vuln["source"], vuln["description"], vuln["cvss_score"]) == ("nvd", "From NVD.", 10.0)
    assert count(graph, "MATCH (:KEV {uid: 'CVE-2023-34362'})-[:LISTS]->(:Vulnerability) RETURN count(*)") == 1


# --- the write seam ---------------------------------------------------------------------------


def test_the_write_function_is_injectable_and_a_refused_entry_is_reported(graph):
    calls = []

    def write(label, uid, properties, **kwargs):
        calls.append((label, uid, kwargs))
        if uid == "CVE-2023-34362":
            raise PermanentStoreError("constraint violated")
        return graph.write_entity(label, uid, properties, **kwargs)

    report = import_kev_feed(feed(entry("CVE-2021-44228"), entry("CVE-2023-34362"), entry("CVE-2024-3400")),
                             graph=graph, write=write)
    assert (report.imported, report.failed, report.linked) == (2, 1, 2)
    assert [str(e) for e in report.errors] == [
        "vulnerabilities[1] (CVE-2023-34362): the graph refused the write: constraint violated"]
    assert {kw["source"] for _, _, kw in calls} == {"cisa-kev"}
    assert {kw["confidence"] for _, _, kw in calls} == {1.0}
    assert [(label, uid) for label, uid, _ in calls[:2]] == [("KEV", "CVE-2021-44228"),
                                                            ("Vulnerability", "CVE-2021-44228")]


def test_a_node_deleted_during_the_import_is_reported_not_silently_unlinked(graph):
    def write_then_lose_it(label, uid, properties, **kwargs):
        written = graph.write_entity(label, uid, properties, **kwargs)
        if (label, uid) == ("Vulnerability", "CVE-2023-34362"):
            graph.delete_entity(label, uid)  # as another tool might, between our write and the link
        return written

    report = import_kev_feed(feed(entry("CVE-2021-44228"), entry("CVE-2023-34362")), graph=graph,
                             write=write_then_lose_it)
    assert (report.imported, report.linked, report.unlinked, report.ok) == (2, 1, 1, False)
    assert report.warnings == ["1 of 2 KEV→Vulnerability links were not written because a node was deleted "
                               "during the import; run the import again to restore them"]
    assert report.summary().endswith("1 KEV→Vulnerability links, 1 missing")

    again = import_kev_feed(feed(entry("CVE-2021-44228"), entry("CVE-2023-34362")), graph=graph)
    assert (again.updated, again.unchanged, again.linked, again.ok) == (1, 1, 2, True)


def test_an_unreachable_store_aborts_the_run(graph):
    def write(label, uid, properties, **kwargs):
        raise RetryableStoreError("Neo4j at bolt://127.0.0.1:7688 is unreachable")

    with pytest.raises(RetryableStoreError):
        import_kev_feed(feed(entry()), graph=graph, write=write)


@pytest.mark.django_db(transaction=True)
def test_through_the_sync_engine_kev_is_dual_written_and_vulnerabilities_queued(synced_graph, vectors):
    from sync.ids import vector_id
    from sync.models import SagaLog, SyncEvent

    report = import_kev_feed(feed(entry("CVE-2021-44228"), entry("CVE-2023-34362")),
                             graph=synced_graph, write=write_through_sync)

    assert (report.imported, report.failed) == (2, 0)
    stored = vectors.fetch([vector_id("KEV", "CVE-2021-44228"), vector_id("KEV", "CVE-2023-34362")])
    assert {r.metadata["uid"] for r in stored.values()} == {"CVE-2021-44228", "CVE-2023-34362"}
    assert set(SagaLog.objects.values_list("status", flat=True)) == {SagaLog.Status.COMMITTED}
    # KEV was applied in the call (its own event, done); Vulnerability waits for the workers.
    assert set(SyncEvent.objects.filter(status="done").values_list("label", flat=True)) == {"KEV"}
    assert set(SyncEvent.objects.filter(status="queued").values_list("label", flat=True)) == {"Vulnerability"}


@pytest.mark.django_db(transaction=True)
def test_through_the_sync_engine_a_vector_outage_aborts_and_leaves_no_kev(synced_graph, vectors):
    from sync.stores import use_vector_store
    from tests.faults.inject import FailingWrites

    use_vector_store(FailingWrites(vectors))
    with pytest.raises(RetryableStoreError, match="graph change was undone"):
        import_kev_feed(feed(entry("CVE-2021-44228"), entry("CVE-2023-34362")),
                        graph=synced_graph, write=write_through_sync)
    assert synced_graph.count_label("KEV") == 0


# --- the command ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_command_prints_the_report_and_each_skipped_entry(synced_graph, vectors, tmp_path):
    graph = synced_graph
    path = tmp_path / "kev.json"
    path.write_text(json.dumps(feed(entry("CVE-2021-44228"), entry("CVE-2023-34362", dateAdded="yesterday"),
                                    "not an entry")))
    out, err = StringIO(), StringIO()
    call_command("import_kev", str(path), stdout=out, stderr=err)

    assert out.getvalue().splitlines()[0] == (
        "KEV catalog 2024.11.05 released 2024-11-05T17:00:47.0000Z: 3 entries — 1 imported, 0 updated, "
        "0 unchanged, 2 skipped, 0 failed; 1 KEV→Vulnerability links")
    assert err.getvalue().splitlines() == [
        "skipped vulnerabilities[1] (CVE-2023-34362): dateAdded 'yesterday' is not a date (YYYY-MM-DD)",
        "skipped vulnerabilities[2]: entry must be an object, got a string",
    ]
    assert graph.count_label("KEV") == 1


def test_the_command_fails_on_an_unusable_file(graph, tmp_path):
    path = tmp_path / "kev.json"
    path.write_text("{not json")
    with pytest.raises(CommandError, match="kev.json: the file is not JSON: Expecting property name"):
        call_command("import_kev", str(path))
    with pytest.raises(CommandError, match="cannot read .*missing.json: No such file or directory"):
        call_command("import_kev", str(tmp_path / "missing.json"))


@pytest.mark.django_db(transaction=True)
def test_the_command_exit_status(synced_graph, tmp_path):
    from tests.test_worker_processes import current_database_url

    bad = tmp_path / "bad.json"
    bad.write_text('{"vulnerabilities": null}')
    partly_bad = tmp_path / "partly.json"
    partly_bad.write_text(json.dumps(feed(entry(), {"cveID": 7})))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT),
           "DATABASE_URL": current_database_url(),
           "LANCEDB_DIR": str(tmp_path / "lancedb")}

    def run(path):
        return subprocess.run([sys.executable, "manage.py", "import_kev", str(path)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    failed = run(bad)
    assert failed.returncode == 1
    assert "'vulnerabilities' must be a list, got null" in failed.stderr
    partial = run(partly_bad)
    assert partial.returncode == 0, partial.stderr
    assert "1 imported" in partial.stdout
    assert "vulnerabilities[1]: cveID must be a string, got a number" in partial.stderr
