"""Neo4jGraphStore against the real test Neo4j (with APOC): the graph side of the sync engine.

The labels here are not in the sync policy, so a trigger installed for the policy's labels by another
fixture in the same session leaves these nodes alone; "foreign" writes are plain Cypher through the
driver, as another tool would make them.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from django.conf import settings

from sync.stores.base import Change, PermanentStoreError, RetryableStoreError, VersionConflict
from sync.stores.neo4j_graph import NAME_INDEX, Neo4jGraphStore, changes_cypher

LABELS = ["Actor", "Dossier"]
PROBE_LABELS = ["ProbeActor", "ProbeReport"]
AWKWARD_UIDS = [
    "Fancy Bear", "APT:28", "tag#1", "it's", 'say "hi"', "back`tick", "a\\b/c", "naïve-ü", "日本語",
    "🐻-emoji", "x" * 300,
]


def new_store(**kwargs) -> Neo4jGraphStore:
    return Neo4jGraphStore(settings.NEO4J_URI, settings.NEO4J_USER, settings.NEO4J_PASSWORD,
                           database=settings.NEO4J_DATABASE, **kwargs)


@pytest.fixture
def store(graph, neo4j_driver):
    graph.ensure_schema(LABELS)
    # A trigger left installed by another fixture may have recorded the wipe's deletes as tombstones.
    neo4j_driver.execute_query("MATCH (t:_SyncTombstone) DELETE t", database_=settings.NEO4J_DATABASE)
    return graph


@pytest.fixture
def foreign(neo4j_driver):
    """Write as another tool would: plain Cypher through the driver, not through the store."""
    def run(cypher: str, **params):
        return neo4j_driver.execute_query(cypher, params, database_=settings.NEO4J_DATABASE).records
    return run


@pytest.fixture(scope="module")
def probe_triggers(neo4j_driver):
    """Our trigger for the probe labels under its own name, installed once for this module.

    Triggers live in the system database and outlast the test, so they are removed (and the removal
    awaited) even when a test fails.
    """
    probe = new_store(trigger_name="nightingale_sync_test")
    probe.ensure_schema(PROBE_LABELS)
    try:
        assert probe.install_triggers(PROBE_LABELS)
        assert probe.wait_for_triggers(), "the trigger was not loaded within 10 s"
        yield probe
    finally:
        probe.remove_triggers()
        probe.wait_for_triggers()
        probe.close()


@pytest.fixture
def probe(store, probe_triggers):
    return probe_triggers


def walk(store, labels, page_size, after=None) -> list[Change]:
    """Every change after `after`, as change capture pages through them."""
    seen: list[Change] = []
    while page := store.changes_since(labels, after, page_size):
        seen.extend(page)
        after = (page[-1].updated_at, f"{page[-1].label}:{page[-1].uid}")
    return seen


def one(store, label, uid):
    return store.get_entities([(label, uid)]).get((label, uid))


def operators(plan) -> list[str]:
    return [plan["operatorType"].split("@")[0]] + [op for child in plan.get("children", [])
                                                  for op in operators(child)]


def db_hits(plan) -> int:
    return plan.get("dbHits", 0) + sum(db_hits(child) for child in plan.get("children", []))


# --- schema -----------------------------------------------------------------------------------------

def test_it_ensures_schema_idempotently(store, neo4j_driver):
    store.ensure_schema(LABELS)
    store.ensure_schema(LABELS)
    records, _, _ = neo4j_driver.execute_query(
        "SHOW INDEXES YIELD name, type, labelsOrTypes, properties, owningConstraint, state "
        "WHERE name STARTS WITH 'sync_' RETURN *")
    found = {r["name"]: r for r in records}
    assert found["sync_Actor_uid"]["owningConstraint"] == "sync_Actor_uid"
    assert found["sync_Actor_updated_at"]["properties"] == ["updated_at"]
    assert found["sync_tombstone_key"]["properties"] == ["label", "uid"]
    assert found["sync_tombstone_updated_at"]["labelsOrTypes"] == ["_SyncTombstone"]
    assert {r["state"] for r in records} == {"ONLINE"}
    assert len([name for name in found if name.startswith("sync_Actor_")]) == 2


# --- writes and reads -------------------------------------------------------------------------------

def test_it_writes_and_reads_back_an_entity(store):
    before = store.server_time()
    first_seen = datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    previous, entity = store.write_entity(
        "Actor", "apt29", {"name": "APT29", "aliases": ["Cozy Bear", "The Dukes"], "active": True,
                           "first_seen": first_seen, "reported_on": date(2024, 5, 2), "score": 7.5},
        source="mitre", confidence=0.8)

    assert previous is None
    assert entity == one(store, "Actor", "apt29")
    assert (entity.label, entity.uid, entity.version) == ("Actor", "apt29", 1)
    assert entity.updated_at.tzinfo is not None and entity.updated_at.utcoffset() == timedelta(0)
    assert before <= entity.updated_at <= store.server_time()
    assert entity.properties == {
        "uid": "apt29", "version": 1, "updated_at": entity.updated_at, "source": "mitre", "confidence": 0.8,
        "name": "APT29", "aliases": ["Cozy Bear", "The Dukes"], "active": True,
        "first_seen": first_seen, "reported_on": date(2024, 5, 2), "score": 7.5,
    }
    assert isinstance(entity.properties["first_seen"], datetime)


def test_it_increments_the_version_and_merges_properties(store):
    _, first = store.write_entity("Actor", "apt28", {"name": "APT28", "motive": "espionage"}, source="a")
    previous, second = store.write_entity("Actor", "apt28", {"name": "Fancy Bear", "motive": None,
                                                             "country": "RU"})

    assert previous == first
    assert second.version == 2
    assert second.updated_at > first.updated_at
    assert {k: v for k, v in second.properties.items() if k not in ("updated_at",)} == {
        "uid": "apt28", "version": 2, "source": "a", "name": "Fancy Bear", "country": "RU"}


def test_it_converts_foreign_temporal_values_to_plain_python(store, foreign):
    foreign("CREATE (:Actor {uid: 'odd', seen: localdatetime('2024-01-02T03:04:05'), span: duration('P1DT2H'), "
            "at: time('12:00:00Z'), updated_at: localdatetime('2024-01-02T03:04:05')})")

    entity = one(store, "Actor", "odd")

    assert entity.properties["seen"] == datetime(2024, 1, 2, 3, 4, 5)
    assert entity.properties["span"] == "P1DT2H"
    assert entity.properties["at"] == "12:00:00.000000000+00:00"
    # A zone-less updated_at from another tool is read as UTC; a missing version as 0.
    assert entity.updated_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert entity.version == 0


def test_bulk_reads_give_updated_at_exactly_in_utc(store, foreign):
    # Bulk reads send a zoned updated_at as epoch seconds + nanoseconds; the result must be the
    # very instant the driver would hydrate (to the microsecond), in UTC.
    foreign("CREATE (:Actor {uid: 'zoned', version: 4, updated_at: datetime('2024-01-02T03:04:05.123456789+02:00')})")
    foreign("CREATE (:Actor {uid: 'named', version: 1, updated_at: datetime('2024-07-01T12:00:00.5[Europe/Paris]')})")
    foreign("CREATE (:Actor {uid: 'text', version: 1, updated_at: 'yesterday'})")

    expected = {"zoned": datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=UTC),
                "named": datetime(2024, 7, 1, 10, 0, 0, 500000, tzinfo=UTC), "text": None}
    scanned = {e.uid: e for e in store.scan_label("Actor", None, 10)}
    for uid, at in expected.items():
        entity = one(store, "Actor", uid)
        assert entity == scanned[uid]
        assert entity.updated_at == at
        assert entity.properties["updated_at"] == (at if at else "yesterday")


def test_it_restarts_a_non_integer_version_left_by_another_tool(store, foreign):
    foreign("CREATE (:Actor {uid: 'junk', version: '3'})")

    previous, entity = store.write_entity("Actor", "junk", {"name": "fixed"})

    assert previous.version == 0 and previous.properties["version"] == "3"
    assert entity.version == 1 and entity.properties["version"] == 1


@pytest.mark.parametrize("properties", [
    {"uid": "other"}, {"version": 9}, {"updated_at": datetime.now(UTC)},
    {"nested": {"a": 1}}, {"records": [{"a": 1}]}, {"mixed": [1, "a"]}, {"holes": ["a", None]},
    {"lists": [[1], [2]]}, {"huge": 2**70}, {"": "empty key"}, {"obj": object()},
])
def test_it_refuses_properties_neo4j_cannot_store_or_we_manage(store, properties):
    with pytest.raises(ValueError):
        store.write_entity("Actor", "refused", properties)
    if "uid" not in properties:  # in an import row, uid is the row's key
        with pytest.raises(ValueError):
            store.import_entities("Actor", [{"uid": "refused", **properties}], source="t")
    assert one(store, "Actor", "refused") is None


@pytest.mark.parametrize("label", ["", "1Actor", "Actor-X", "Actor`) DETACH DELETE (n", "Ac tor",
                                   "_SyncTombstone", "A" * 65, "Akteur\u00e9", "Actor\n", None])
def test_it_rejects_labels_that_are_not_plain_identifiers(store, label):
    calls = [
        lambda: store.write_entity(label, "x", {}),
        lambda: store.get_entities([(label, "x")]),
        lambda: store.changes_since([label], None, 10),
        lambda: store.scan_label(label, None, 10),
        lambda: store.count_label(label),
        lambda: store.delete_entity(label, "x"),
        lambda: store.import_entities(label, [{"uid": "x"}], source="t"),
        lambda: store.import_relationships(label, [("Actor", "a", "Actor", "b", {})]),
        lambda: store.import_relationships("LINKS", [(label, "a", "Actor", "b", {})]),
        lambda: store.ensure_schema([label]),
        lambda: store.install_triggers([label]),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("uid", ["", None, 42, b"bytes"])
def test_it_rejects_uids_that_are_not_non_empty_strings(store, uid):
    for call in (lambda: store.write_entity("Actor", uid, {}), lambda: store.get_entities([("Actor", uid)]),
                 lambda: store.delete_entity("Actor", uid),
                 lambda: store.import_entities("Actor", [{"uid": uid}], source="t")):
        with pytest.raises(ValueError):
            call()


def test_it_round_trips_awkward_uids(store):
    for uid in AWKWARD_UIDS:
        store.write_entity("Actor", uid, {"name": uid})

    found = store.get_entities([("Actor", uid) for uid in AWKWARD_UIDS])
    scanned = []
    after = None
    while page := store.scan_label("Actor", after, 3):
        scanned.extend(entity.uid for entity in page)
        after = page[-1].uid
    changed = [change.uid for change in walk(store, ["Actor"], 3)]

    assert {uid: e.properties["name"] for (_, uid), e in found.items()} == {u: u for u in AWKWARD_UIDS}
    assert sorted(scanned) == sorted(AWKWARD_UIDS)
    assert sorted(changed) == sorted(AWKWARD_UIDS)
    deleted = store.delete_entity("Actor", 'say "hi"')
    assert deleted.uid == 'say "hi"'
    assert [(c.uid, c.deleted) for c in walk(store, ["Actor"], 50) if c.deleted] == [('say "hi"', True)]


# --- optimistic concurrency -------------------------------------------------------------------------

def test_it_enforces_the_expected_version(store):
    with pytest.raises(VersionConflict) as missing:
        store.write_entity("Actor", "turla", {"name": "Turla"}, expected_version=1)
    assert (missing.value.expected, missing.value.actual) == (1, None)
    assert one(store, "Actor", "turla") is None

    _, created = store.write_entity("Actor", "turla", {"name": "Turla"}, expected_version=0)
    with pytest.raises(VersionConflict) as exists:
        store.write_entity("Actor", "turla", {"name": "Snake"}, expected_version=0)
    with pytest.raises(VersionConflict) as stale:
        store.write_entity("Actor", "turla", {"name": "Snake"}, expected_version=5)
    _, updated = store.write_entity("Actor", "turla", {"name": "Snake"}, expected_version=1)

    assert created.version == 1
    assert (exists.value.actual, stale.value.actual) == (1, 1)
    assert (updated.version, updated.properties["name"]) == (2, "Snake")


def test_it_loses_no_update_under_concurrent_writers(store):
    store.write_entity("Actor", "hot", {"count": 0})

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda i: store.write_entity("Actor", "hot", {f"k{i}": i}), range(24)))
    entity = one(store, "Actor", "hot")

    assert entity.version == 25
    assert {f"k{i}" for i in range(24)} <= entity.properties.keys()

    barrier = threading.Barrier(6)

    def guarded(i: int) -> str:
        barrier.wait()
        try:
            store.write_entity("Actor", "hot", {"winner": i}, expected_version=25)
        except VersionConflict as exc:
            return f"conflict@{exc.actual}"
        return "won"

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = sorted(pool.map(guarded, range(6)))
    assert outcomes == ["conflict@26"] * 5 + ["won"]


# --- saga compensation ------------------------------------------------------------------------------

def test_it_restores_the_previous_state_exactly(store):
    _, v1 = store.write_entity("Actor", "lazarus", {"name": "Lazarus", "motive": "money"}, source="a",
                               confidence=0.5)
    previous, v2 = store.write_entity("Actor", "lazarus", {"name": "Hidden Cobra", "motive": None,
                                                           "added": ["x"]}, source="b")

    restored = store.restore_entity(previous, label="Actor", uid="lazarus", expected_version=2)

    assert restored == one(store, "Actor", "lazarus")
    assert restored.version == 3  # versions never go backwards, even when undoing
    assert restored.updated_at > v2.updated_at  # capture must read the restored state again
    assert {k: v for k, v in restored.properties.items() if k not in ("updated_at", "version")} == \
        {k: v for k, v in v1.properties.items() if k not in ("updated_at", "version")}
    assert [(c.uid, c.version) for c in walk(store, ["Actor"], 10, after=(v2.updated_at, "Actor:lazarus"))] \
        == [("lazarus", 3)]


def test_it_does_not_restore_over_a_newer_write(store):
    store.write_entity("Actor", "kimsuky", {"name": "Kimsuky"})
    previous, _ = store.write_entity("Actor", "kimsuky", {"name": "Velvet Chollima"})
    store.write_entity("Actor", "kimsuky", {"name": "Thallium"}, source="someone else")

    with pytest.raises(VersionConflict) as conflict:
        store.restore_entity(previous, label="Actor", uid="kimsuky", expected_version=2)
    with pytest.raises(ValueError):
        store.restore_entity(previous, label="Actor", uid="another", expected_version=3)

    assert conflict.value.actual == 3
    assert one(store, "Actor", "kimsuky").properties["name"] == "Thallium"


def test_it_compensates_a_create_by_deleting_the_node_with_a_tombstone(store):
    previous, created = store.write_entity("Actor", "fresh", {"name": "New"}, expected_version=0)

    assert store.restore_entity(previous, label="Actor", uid="fresh", expected_version=created.version) is None

    assert one(store, "Actor", "fresh") is None
    assert [(c.uid, c.deleted, c.version) for c in walk(store, ["Actor"], 10)] == [("fresh", True, 2)]
    with pytest.raises(VersionConflict):
        store.restore_entity(None, label="Actor", uid="fresh", expected_version=1)


# --- deletes and tombstones ------------------------------------------------------------------------

def test_it_deletes_with_a_tombstone_that_capture_reads_and_purges(store, foreign):
    store.write_entity("Actor", "a", {"name": "A"})
    _, b = store.write_entity("Dossier", "b", {"title": "B"})
    foreign("MATCH (a:Actor {uid: 'a'}), (b:Dossier {uid: 'b'}) CREATE (b)-[:ABOUT]->(a)")

    with pytest.raises(VersionConflict):
        store.delete_entity("Dossier", "b", expected_version=7)
    deleted = store.delete_entity("Dossier", "b", expected_version=1)
    changes = walk(store, LABELS, 10)

    assert deleted == b
    assert store.delete_entity("Dossier", "b") is None
    assert one(store, "Dossier", "b") is None
    assert [(c.label, c.uid, c.deleted, c.version, c.entity is None) for c in changes] == [
        ("Actor", "a", False, 1, False), ("Dossier", "b", True, 2, True)]
    assert changes[1].updated_at > b.updated_at

    # Change capture reads keys only: the same changes, at the same times, with no entity.
    keys = store.changes_since(LABELS, None, 10, entities=False)
    assert [(c.label, c.uid, c.deleted, c.version, c.updated_at) for c in keys] == [
        (c.label, c.uid, c.deleted, c.version, c.updated_at) for c in changes]
    assert all(c.entity is None for c in keys)

    assert store.purge_tombstones(changes) == 1
    assert [c.uid for c in walk(store, LABELS, 10)] == ["a"]
    assert store.purge_tombstones(changes) == 0


def test_it_keeps_a_newer_tombstone_when_purging_an_older_delete(store):
    store.write_entity("Actor", "phoenix", {"name": "v1"})
    store.delete_entity("Actor", "phoenix")
    [old_delete] = walk(store, ["Actor"], 10)
    store.write_entity("Actor", "phoenix", {"name": "back"})
    store.delete_entity("Actor", "phoenix")

    assert store.purge_tombstones([old_delete]) == 0
    assert [(c.uid, c.deleted, c.version) for c in walk(store, ["Actor"], 10)] == [("phoenix", True, 4)]


def test_it_continues_versions_when_a_deleted_key_is_written_again(store):
    store.write_entity("Actor", "phoenix", {"name": "v1"})
    store.delete_entity("Actor", "phoenix")

    previous, reborn = store.write_entity("Actor", "phoenix", {"name": "again"}, expected_version=0)

    assert previous is None
    assert reborn.version == 3
    # The live node supersedes its tombstone: a key is either live or tombstoned.
    assert [(c.uid, c.deleted, c.version) for c in walk(store, ["Actor"], 10)] == [("phoenix", False, 3)]
    assert store.import_entities("Actor", [{"uid": "phoenix"}], source="t") == 1
    assert one(store, "Actor", "phoenix").version == 4


# --- change capture --------------------------------------------------------------------------------

def test_it_pages_through_many_ties_without_loss_or_duplicates(store, foreign):
    store.import_entities("Actor", [{"uid": f"actor-{i:03d}"} for i in range(250)], source="bulk")
    store.import_entities("Dossier", [{"uid": f"d-{i}"} for i in range(20)], source="bulk")
    for uid in ("d-3", "d-7"):
        store.delete_entity("Dossier", uid)
    # A tie across both labels and the tombstones, as another tool could write it.
    tie = store.server_time() + timedelta(seconds=1)
    foreign("UNWIND range(0, 39) AS i CREATE (:Actor {uid: 'tie-' + i, version: 1, updated_at: $t}), "
            "(:Dossier {uid: 'tie-' + i, version: 1, updated_at: $t}), "
            "(:_SyncTombstone {label: 'Actor', uid: 'gone-' + i, version: 2, updated_at: $t})", t=tie)

    changes = walk(store, LABELS, 7)

    keys = [(c.updated_at, f"{c.label}:{c.uid}") for c in changes]
    assert all(a < b for a, b in zip(keys, keys[1:], strict=False)), "not strictly increasing"
    expected = ({f"Actor:actor-{i:03d}" for i in range(250)} | {f"Dossier:d-{i}" for i in range(20)}
                | {f"{label}:tie-{i}" for label in LABELS for i in range(40)} | {f"Actor:gone-{i}" for i in range(40)})
    assert len(keys) == len(expected) and {key for _, key in keys} == expected
    assert len({c.updated_at for c in changes if c.uid.startswith("actor-")}) == 1, "the import was one tie"
    assert sum(1 for c in changes if c.updated_at == tie) == 120
    assert {(c.uid, c.deleted) for c in changes if c.label == "Dossier" and c.uid in ("d-3", "d-7")} == {
        ("d-3", True), ("d-7", True)}


def test_it_reads_strictly_after_the_cursor_and_sees_a_quick_rewrite(store):
    _, first = store.write_entity("Actor", "quick", {"n": 1})
    [change] = store.changes_since(LABELS, None, 10)
    cursor = (change.updated_at, "Actor:quick")

    assert store.changes_since(LABELS, cursor, 10) == []
    # However fast the rewrite, its stamp passes the cursor (the server clock ticks in milliseconds).
    _, second = store.write_entity("Actor", "quick", {"n": 2})
    assert [(c.uid, c.version) for c in store.changes_since(LABELS, cursor, 10)] == [("quick", 2)]
    assert second.updated_at > first.updated_at


def test_it_refuses_a_naive_cursor(store):
    with pytest.raises(ValueError):
        store.changes_since(LABELS, (datetime(2024, 1, 1), "Actor:x"), 10)
    with pytest.raises(ValueError):
        store.changes_since(LABELS, None, 0)


def test_it_reads_a_change_page_through_the_updated_at_indexes(store, neo4j_driver):
    for batch in range(20):
        store.import_entities("Actor", [{"uid": f"a-{batch:02d}-{i:03d}"} for i in range(100)], source="t")
    middle = store.changes_since(LABELS, None, 1000)[-1]

    result = neo4j_driver.execute_query(
        "PROFILE " + changes_cypher(LABELS),
        since=middle.updated_at, key=f"Actor:{middle.uid}", limit=10, labels=LABELS, props=True)

    plan = result.summary.profile
    assert len(result.records[0]["rows"]) == 10
    assert operators(plan).count("NodeIndexSeekByRange") == 3  # Actor, Dossier, tombstones
    assert "NodeByLabelScan" not in operators(plan) and "Sort" not in operators(plan)
    assert db_hits(plan) < 1000, "a page must not read the 1000 changes after the cursor"


# --- scanning ---------------------------------------------------------------------------------------

def test_it_scans_a_label_in_uid_order_through_the_uid_index(store, neo4j_driver):
    store.import_entities("Actor", [{"uid": f"u{i:04d}"} for i in range(2000)], source="t")

    pages = []
    after = None
    while page := store.scan_label("Actor", after, 700):
        pages.append([e.uid for e in page])
        after = page[-1].uid
    result = neo4j_driver.execute_query(
        "PROFILE MATCH (n:Actor) WHERE n.uid > $after RETURN properties(n) AS props ORDER BY n.uid LIMIT $limit",
        after="u1000", limit=10)

    assert [len(p) for p in pages] == [700, 700, 600]
    assert [uid for page in pages for uid in page] == [f"u{i:04d}" for i in range(2000)]
    assert store.count_label("Actor") == 2000
    assert "NodeUniqueIndexSeekByRange" in operators(result.summary.profile)
    assert db_hits(result.summary.profile) < 200


# --- names ------------------------------------------------------------------------------------------

NAMES = ["Cozy Bear", "COZYBEAR-2", "APT29 (The Dukes)", "Fancy.Bear", "O'Neil group", "cve-2024-3094 exploit",
         "x_y_z", "Ünïcode Pända", "中国 APT10", "Sandworm", "", "   spaced   out   "]


def test_names_are_found_through_the_name_index_as_the_scan_finds_them(store, neo4j_driver):
    rows = [{"uid": f"a{i:03d}", "name": name} for i, name in enumerate(NAMES)]
    rows += [{"uid": f"t{i:03d}", "title": name.upper()} for i, name in enumerate(NAMES)]
    store.import_entities("Actor", rows, source="t")
    store.import_entities("Dossier", [{"uid": "d1", "title": "Cozy Bear report"}],
                          source="t")
    needles = ["cozy", "COZY BEAR", "zy be", "bear-2", "apt29 (the", "(the dukes)", "y.b", "o'neil", "'ne",
               "2024-30", "cve-2024-3094 exploit", "_y_", "x_y", "nïc", "pända", "apt10", "中国", "sand",
               "worm", "spaced   out", "ed   o", "zzz", "---", "a", "29"]

    result = neo4j_driver.execute_query(
        f"PROFILE CALL db.index.fulltext.queryNodes('{NAME_INDEX}', '*cozy*') YIELD node RETURN node.uid")
    assert store._name_index_labels(online=True) >= set(LABELS)  # what find_by_name asks first
    for needle in needles:
        assert store.find_by_name(LABELS, needle, 50) == store._scan_names(LABELS, needle.lower(), 50), needle
    assert store.find_by_name(LABELS, "cozy", 50) == [("Actor", "a000"), ("Actor", "a001"), ("Actor", "t000"),
                                                      ("Actor", "t001"), ("Dossier", "d1")]
    assert store.find_by_name(["Dossier", "Actor"], "cozy", 2) == [("Dossier", "d1"), ("Actor", "a000")]
    assert "NodeByLabelScan" not in operators(result.summary.profile)


def test_the_name_index_grows_with_the_labels_and_is_not_needed(store, neo4j_driver):
    store.import_entities("Actor", [{"uid": "a1", "name": "Cozy Bear"}], source="t")
    store.ensure_schema(["Newcomer"])  # the index now covers Actor, Dossier and Newcomer
    records, _, _ = neo4j_driver.execute_query(
        "SHOW FULLTEXT INDEXES YIELD name, labelsOrTypes, state WHERE name = $name RETURN *", name=NAME_INDEX)
    assert set(records[0]["labelsOrTypes"]) >= {"Actor", "Dossier", "Newcomer"}
    assert records[0]["state"] == "ONLINE"
    assert store.find_by_name(["Actor"], "cozy") == [("Actor", "a1")]
    neo4j_driver.execute_query(f"DROP INDEX {NAME_INDEX}")
    try:
        assert store.find_by_name(["Actor"], "cozy") == [("Actor", "a1")]  # scanned instead
    finally:
        store.ensure_schema(LABELS)


# --- bulk import ------------------------------------------------------------------------------------

def test_it_imports_entities_and_relationships_in_bulk(store, neo4j_driver):
    rows = [{"uid": f"cve-{i}", "title": f"Vuln {i}", "tags": ["rce"]} for i in range(3000)]

    assert store.import_entities("Actor", rows, source="loader") == 3000
    assert store.import_entities("Dossier", [{"uid": f"d{i}"} for i in range(3)], source="loader") == 3
    again = store.import_entities("Actor", [{"uid": "cve-1", "title": "Renamed", "tags": None}], source="fix")
    links = [("Dossier", f"d{i % 3}", "Actor", f"cve-{i}", {"weight": 0.5}) for i in range(1500)]
    written = store.import_relationships("MENTIONS", [*links, ("Dossier", "d0", "Actor", "no-such", {})])
    rewritten = store.import_relationships("MENTIONS", links[:10])

    entities = store.get_entities([("Actor", f"cve-{i}") for i in range(3000)])
    assert again == 1 and written == 1500 and rewritten == 10
    assert store.count_label("Actor") == 3000 and len(entities) == 3000
    assert {e.version for e in entities.values()} == {1, 2}
    assert entities[("Actor", "cve-0")].properties["source"] == "loader"
    assert entities[("Actor", "cve-0")].properties["tags"] == ["rce"]
    renamed = entities[("Actor", "cve-1")]
    assert (renamed.version, renamed.properties["title"], renamed.properties["source"]) == (2, "Renamed", "fix")
    assert "tags" not in renamed.properties
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (:Dossier)-[r:MENTIONS]->(:Actor) RETURN count(r) AS n, collect(DISTINCT r.weight) AS w")
    assert (records[0]["n"], records[0]["w"]) == (1500, [0.5])


# --- errors -----------------------------------------------------------------------------------------

def test_it_reports_an_unreachable_server_as_retryable():
    store = Neo4jGraphStore("bolt://127.0.0.1:9", "neo4j", "whatever", retry_time=0.5)
    try:
        with pytest.raises(RetryableStoreError):
            store.ping()
    finally:
        store.close()


def test_it_reports_bad_credentials_and_constraint_failures_as_permanent(store, foreign):
    wrong = Neo4jGraphStore(settings.NEO4J_URI, settings.NEO4J_USER, "not-the-password")
    try:
        with pytest.raises(PermanentStoreError, match="credentials"):
            wrong.get_entities([("Actor", "x")])
    finally:
        wrong.close()

    foreign("CREATE (:Twin {uid: 'same'}), (:Twin {uid: 'same'})")
    with pytest.raises(PermanentStoreError):
        store.ensure_schema(["Twin"])


# --- APOC triggers ----------------------------------------------------------------------------------

def test_it_installs_triggers_idempotently_and_removes_them(graph, neo4j_driver):
    own = new_store(trigger_name="nightingale_sync_install_test")
    try:
        assert own.apoc_available()
        assert own.install_triggers(["ProbeOther"]) and own.install_triggers(["ProbeOther"])
        stored, _, _ = neo4j_driver.execute_query("CALL apoc.trigger.show($db) YIELD name, params RETURN *",
                                                  db=settings.NEO4J_DATABASE, database_="system")
        assert [r["params"] for r in stored if r["name"] == own.trigger_name] == [{"labels": ["ProbeOther"]}]
        assert own.wait_for_triggers()
        assert own.remove_triggers() is True
        assert own.remove_triggers() is False
        assert own.wait_for_triggers()
        loaded, _, _ = neo4j_driver.execute_query("CALL apoc.trigger.list() YIELD name RETURN name")
        assert own.trigger_name not in {r["name"] for r in loaded}
    finally:
        own.remove_triggers()
        own.close()


def test_the_trigger_stamps_foreign_creates_and_updates(probe, foreign):
    before = probe.server_time()
    foreign("CREATE (:ProbeActor {uid: 'fancy-bear', name: 'Fancy Bear'}), (:ProbeOther {uid: 'left-alone'})")
    created = one(probe, "ProbeActor", "fancy-bear")
    foreign("MATCH (n:ProbeActor {uid: 'fancy-bear'}) SET n.name = 'APT28'")
    updated = one(probe, "ProbeActor", "fancy-bear")

    assert created.version == 1 and created.updated_at >= before
    assert updated.version == 2 and updated.updated_at > created.updated_at
    assert updated.properties["name"] == "APT28"
    [other] = foreign("MATCH (n:ProbeOther) RETURN n.version AS version, n.updated_at AS at")
    assert (other["version"], other["at"]) == (None, None)


def test_the_trigger_leaves_our_own_writes_alone(probe, foreign):
    _, first = probe.write_entity("ProbeActor", "ours", {"name": "A"})
    _, second = probe.write_entity("ProbeActor", "ours", {"name": "B"})
    probe.import_entities("ProbeReport", [{"uid": "r1"}], source="t")
    foreign("MATCH (n:ProbeActor {uid: 'ours'}) SET n.note = 'foreign'")

    assert (first.version, second.version) == (1, 2)
    assert one(probe, "ProbeReport", "r1").version == 1
    stamped = one(probe, "ProbeActor", "ours")  # proves the trigger is live while we write
    assert stamped.version == 3 and stamped.updated_at > second.updated_at


def test_the_trigger_records_foreign_deletes_as_tombstones(probe, foreign):
    _, sandworm = probe.write_entity("ProbeActor", "sandworm", {"name": "Sandworm"})
    foreign("MATCH (n:ProbeActor {uid: 'sandworm'}) DETACH DELETE n")
    probe.write_entity("ProbeActor", "turla", {"name": "Turla"})
    probe.delete_entity("ProbeActor", "turla")

    changes = walk(probe, PROBE_LABELS, 10)

    assert [(c.uid, c.deleted, c.version) for c in changes] == [("sandworm", True, 2), ("turla", True, 2)]
    assert changes[0].updated_at > sandworm.updated_at
    [row] = foreign("MATCH (t:_SyncTombstone {uid: 'turla'}) RETURN count(t) AS n")
    assert row["n"] == 1


def test_the_trigger_handles_bulk_foreign_deletes_and_re_creates(probe, foreign):
    count = 48
    probe.write_entity("ProbeActor", "bulk-1", {"name": "ours first"})
    foreign("UNWIND range(2, $n) AS i CREATE (:ProbeActor {uid: 'bulk-' + i})", n=count)
    foreign("MATCH (n:ProbeActor) DETACH DELETE n")
    deleted = walk(probe, PROBE_LABELS, 100)
    foreign("UNWIND range(1, $n) AS i CREATE (:ProbeActor {uid: 'bulk-' + i})", n=count)
    recreated = walk(probe, PROBE_LABELS, 100)

    assert len(deleted) == count and all(c.deleted and c.version == 2 for c in deleted)
    assert len(recreated) == count and all(not c.deleted and c.version == 3 for c in recreated)


def test_bulk_deletes_do_not_grow_with_the_tombstones_kept(probe, foreign):
    # Tombstones stay (for their versions): a bulk delete must look up its own keys, not scan
    # them all. Scanning 6,000 ran a 1,000-node delete out of transaction memory.
    for batch in range(6):
        probe.import_entities("ProbeActor", [{"uid": f"old-{batch}-{n}"} for n in range(1000)], source="t")
        foreign("MATCH (n:ProbeActor) DETACH DELETE n")
    [kept] = foreign("MATCH (t:_SyncTombstone) RETURN count(t) AS n")
    assert kept["n"] == 6000
    probe.import_entities("ProbeActor", [{"uid": f"old-0-{n}"} for n in range(1000)], source="t")
    [row] = foreign("MATCH (n:ProbeActor) RETURN min(n.version) AS low")
    assert row["low"] == 3  # each re-created key continued from its tombstone (v2)
    foreign("MATCH (n:ProbeActor) DETACH DELETE n")
    [after] = foreign("MATCH (t:_SyncTombstone) RETURN count(t) AS n, max(t.version) AS top")
    assert (after["n"], after["top"]) == (6000, 4)


def test_the_trigger_treats_delete_and_re_create_in_one_transaction_as_an_update(probe, foreign):
    probe.write_entity("ProbeActor", "replaced", {"name": "old"})
    foreign("MATCH (n:ProbeActor {uid: 'replaced'}) DETACH DELETE n "
            "CREATE (:ProbeActor {uid: 'replaced', name: 'new'})")

    [change] = walk(probe, PROBE_LABELS, 10)

    assert (change.uid, change.deleted, change.version) == ("replaced", False, 3)
    assert change.entity.properties["name"] == "new"


def test_the_trigger_records_renamed_uids_and_removed_labels(probe, foreign):
    foreign("CREATE (:ProbeActor:ProbeReport {uid: 'r1'})")
    foreign("MATCH (n:ProbeActor {uid: 'r1'}) SET n.uid = 'r2'")
    renamed = {(c.label, c.uid, c.deleted, c.version) for c in walk(probe, PROBE_LABELS, 10)}
    foreign("MATCH (n:ProbeActor {uid: 'r2'}) REMOVE n:ProbeReport")
    unlabelled = {(c.label, c.uid, c.deleted, c.version) for c in walk(probe, PROBE_LABELS, 10)}

    assert renamed == {("ProbeActor", "r1", True, 2), ("ProbeReport", "r1", True, 2),
                       ("ProbeActor", "r2", False, 2), ("ProbeReport", "r2", False, 2)}
    assert unlabelled == {("ProbeActor", "r1", True, 2), ("ProbeReport", "r1", True, 2),
                          ("ProbeReport", "r2", True, 3), ("ProbeActor", "r2", False, 3)}
