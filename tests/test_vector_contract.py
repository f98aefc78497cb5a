"""The contract every vector adapter keeps: the engine must not be able to tell them apart.

Runs once per kind in tests/vector_stores.py (STORE_KINDS), each time on a fresh, empty store.
Expected answers are written out by hand or computed with numpy here, never taken from the
code under test.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sync.stores.base import VectorRecord, VectorStore
from tests.vector_stores import STORE_KINDS, make_store

DIM = 384


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    with make_store(request.param, tmp_path, DIM) as store:
        yield store


def random_vectors(count: int, seed: int = 0, scale: bool = True) -> np.ndarray:
    """Unnormalised on purpose (lengths 0.5-3): the store must compute cosine, not a dot product."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM))
    if scale:
        vectors *= rng.uniform(0.5, 3.0, size=(count, 1))
    return vectors


def cosine(matrix: np.ndarray, probe: np.ndarray) -> np.ndarray:
    matrix = matrix.astype(np.float32).astype(np.float64)  # the stores keep float32
    return matrix @ probe / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(probe))


def upsert_all(store: VectorStore, records: list[VectorRecord]) -> None:
    result = store.upsert(records)
    assert result.failed == {}
    assert result.written == len(records)


# -- an empty store ---------------------------------------------------------------------------------

def test_it_starts_empty(store):
    stats = store.stats()
    assert (stats.dimension, stats.total) == (DIM, 0)
    assert store.fetch(["Report:r1"]) == {}
    assert list(store.list_ids()) == []
    assert store.query(random_vectors(1)[0], top_k=5) == []
    assert store.delete(["Report:r1"]) == 0
    assert store.upsert([]).written == 0


def test_it_pings(store):
    answer = store.ping()
    assert isinstance(answer, str) and answer.strip()


# -- writes and reads -------------------------------------------------------------------------------

def test_it_round_trips_values_and_metadata(store):
    vectors = random_vectors(3)
    metadata = [
        {"label": "ThreatActor", "uid": "apt29", "version": 3, "aliases": ["Cozy Bear", "The Dukes"],
         "confidence": 0.85, "active": True, "text": "Ünïcode — snippet ✓"},
        {"label": "Vulnerability", "uid": "CVE-2024-3400", "cvss_score": 10, "kev": False},
        {},
    ]
    ids = ["ThreatActor:apt29", "Vulnerability:CVE-2024-3400", "Report:r%2F1#0"]
    upsert_all(store, [VectorRecord(i, v.tolist(), m) for i, v, m in zip(ids, vectors, metadata, strict=True)])

    fetched = store.fetch(ids + ["Report:unknown"])

    assert set(fetched) == set(ids)
    for vector_id, values, expected in zip(ids, vectors, metadata, strict=True):
        record = fetched[vector_id]
        assert record.id == vector_id
        assert record.metadata == expected
        np.testing.assert_allclose(record.values, values.astype(np.float32), rtol=1e-6, atol=1e-7)
    assert type(fetched["ThreatActor:apt29"].metadata["version"]) is int
    assert type(fetched["ThreatActor:apt29"].metadata["active"]) is bool

    only_metadata = store.fetch_metadata(ids + ["Report:unknown", "not an id"])
    assert only_metadata == {vector_id: fetched[vector_id].metadata for vector_id in ids}
    assert type(only_metadata["ThreatActor:apt29"]["version"]) is int


def test_metadata_is_fetched_in_pages_for_many_ids(store):
    records = [VectorRecord(f"Report:r{n}", v.tolist(), {"n": n}) for n, v in enumerate(random_vectors(2500))]
    upsert_all(store, records)
    found = store.fetch_metadata([r.id for r in records])
    assert found == {r.id: {"n": n} for n, r in enumerate(records)}


def test_it_takes_numpy_arrays_as_values(store):
    vectors = random_vectors(2).astype(np.float32)
    upsert_all(store, [VectorRecord("Report:a", vectors[0]), VectorRecord("Report:b", vectors[1])])
    np.testing.assert_allclose(store.fetch(["Report:b"])["Report:b"].values, vectors[1], rtol=1e-6)


def test_an_upsert_overwrites_the_whole_record(store):
    first, second = random_vectors(2)
    upsert_all(store, [VectorRecord("Report:r1", first.tolist(), {"a": "old", "b": 1})])
    upsert_all(store, [VectorRecord("Report:r1", second.tolist(), {"c": "new"})])

    record = store.fetch(["Report:r1"])["Report:r1"]

    assert record.metadata == {"c": "new"}
    np.testing.assert_allclose(record.values, second.astype(np.float32), rtol=1e-6)
    assert store.stats().total == 1


def test_the_last_of_repeated_ids_in_one_batch_wins(store):
    vectors = random_vectors(3)
    result = store.upsert([VectorRecord("Report:r1", vectors[0].tolist(), {"n": 0}),
                           VectorRecord("Report:r2", vectors[1].tolist(), {"n": 1}),
                           VectorRecord("Report:r1", vectors[2].tolist(), {"n": 2})])

    assert result.failed == {}
    assert result.written == 2
    record = store.fetch(["Report:r1"])["Report:r1"]
    assert record.metadata == {"n": 2}
    np.testing.assert_allclose(record.values, vectors[2].astype(np.float32), rtol=1e-6)
    assert store.stats().total == 2


def test_bad_records_fail_alone_and_the_rest_is_written(store):
    good = random_vectors(3, seed=1)
    base = random_vectors(1, seed=2)[0]
    nan, inf = base.copy(), base.copy()
    nan[7], inf[9] = math.nan, math.inf
    at_limit = {"text": "x" * (40960 - len('{"text":""}'))}  # exactly 40 KB as compact JSON
    bad = {
        "Report:short": VectorRecord("Report:short", base[:-1].tolist()),
        "Report:long": VectorRecord("Report:long", [*base.tolist(), 0.5]),
        "Report:nan": VectorRecord("Report:nan", nan.tolist()),
        "Report:inf": VectorRecord("Report:inf", inf.tolist()),
        "Report:zero": VectorRecord("Report:zero", [0.0] * DIM),
        "Report:é": VectorRecord("Report:é", base.tolist()),
        "Report:tab\t": VectorRecord("Report:tab\t", base.tolist()),
        "x" * 513: VectorRecord("x" * 513, base.tolist()),
        "": VectorRecord("", base.tolist()),
        "Report:big": VectorRecord("Report:big", base.tolist(), {"text": at_limit["text"] + "x"}),
        "Report:dollar": VectorRecord("Report:dollar", base.tolist(), {"$label": "x"}),
        "Report:nested": VectorRecord("Report:nested", base.tolist(), {"source": {"name": "x"}}),
        "Report:nanmeta": VectorRecord("Report:nanmeta", base.tolist(), {"score": math.nan}),
        "Report:hugeint": VectorRecord("Report:hugeint", base.tolist(), {"n": 2**53 + 1}),
    }
    fine = [VectorRecord("Report:ok1", good[0].tolist(), {"n": 1}),
            VectorRecord("y" * 512, good[1].tolist()),
            VectorRecord("Report:at-limit", good[2].tolist(), at_limit)]
    batch = [fine[0], *list(bad.values())[:7], fine[1], *list(bad.values())[7:], fine[2]]

    result = store.upsert(batch)

    assert set(result.failed) == set(bad)
    assert all(message for message in result.failed.values())
    assert result.written == 3
    assert set(store.fetch([r.id for r in fine] + list(bad))) == {r.id for r in fine}
    assert store.stats().total == 3


def test_metadata_is_coerced_to_pinecone_types(store):
    vector = random_vectors(1)[0].tolist()
    written_at = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC)
    upsert_all(store, [VectorRecord("Report:r1", vector, {
        "dropped": None,
        "tuple": ("b", "a"),
        "set": {"b", "c", "a"},
        "flag": False,
        "count": 7,
        "integral_float": 2.0,
        "ratio": 2.5,
        "negative": -3,
        "published": dt.date(2026, 3, 1),
        "updated_at": written_at,
        "mixed": ["x", None, 3, 1.5, True],
    })])

    metadata = store.fetch(["Report:r1"])["Report:r1"].metadata

    assert metadata == {
        "tuple": ["b", "a"], "set": ["a", "b", "c"], "flag": False, "count": 7,
        "integral_float": 2, "ratio": 2.5, "negative": -3, "published": "2026-03-01",
        "updated_at": "2026-03-01T12:30:00+00:00", "mixed": ["x", "3", "1.5", "true"],
    }
    assert type(metadata["flag"]) is bool
    assert type(metadata["count"]) is int and type(metadata["integral_float"]) is int
    assert type(metadata["ratio"]) is float


# -- update_metadata --------------------------------------------------------------------------------

def test_update_metadata_replaces_metadata_and_keeps_values(store):
    vectors = random_vectors(3)
    upsert_all(store, [VectorRecord(f"Report:r{n}", v.tolist(), {"n": n, "old": "yes"})
                       for n, v in enumerate(vectors)])

    result = store.update_metadata({
        "Report:r0": {"n": 10, "tags": ("b", "a"), "gone": None},
        "Report:r1": {},
        "Report:r2": {"$bad": 1},
        "Report:missing": {"n": 1},
        "Report:é": {"n": 1},
    })

    assert result.written == 2
    assert set(result.failed) == {"Report:r2", "Report:missing", "Report:é"}
    fetched = store.fetch(["Report:r0", "Report:r1", "Report:r2", "Report:missing"])
    assert set(fetched) == {"Report:r0", "Report:r1", "Report:r2"}
    assert fetched["Report:r0"].metadata == {"n": 10, "tags": ["b", "a"]}
    assert fetched["Report:r1"].metadata == {}
    assert fetched["Report:r2"].metadata == {"n": 2, "old": "yes"}
    for n, values in enumerate(vectors):
        np.testing.assert_allclose(fetched[f"Report:r{n}"].values, values.astype(np.float32), rtol=1e-6)
    assert store.stats().total == 3


def test_update_metadata_after_an_upsert_keeps_the_new_values(store):
    old, new = random_vectors(2)
    upsert_all(store, [VectorRecord("Report:r1", old.tolist(), {"v": 1})])
    store.fetch(["Report:r1"])
    upsert_all(store, [VectorRecord("Report:r1", new.tolist(), {"v": 2})])

    assert store.update_metadata({"Report:r1": {"v": 3}}).written == 1

    record = store.fetch(["Report:r1"])["Report:r1"]
    assert record.metadata == {"v": 3}
    np.testing.assert_allclose(record.values, new.astype(np.float32), rtol=1e-6)


def test_update_metadata_of_a_deleted_vector_fails_without_bringing_it_back(store):
    upsert_all(store, [VectorRecord("Report:r1", random_vectors(1)[0].tolist(), {"v": 1})])
    store.fetch(["Report:r1"])
    assert store.delete(["Report:r1"]) == 1

    result = store.update_metadata({"Report:r1": {"v": 2}})

    assert set(result.failed) == {"Report:r1"}
    assert result.written == 0
    assert store.fetch(["Report:r1"]) == {}


# -- delete -----------------------------------------------------------------------------------------

def test_delete_counts_the_vectors_that_existed(store):
    vectors = random_vectors(4)
    upsert_all(store, [VectorRecord(f"Report:r{n}", v.tolist()) for n, v in enumerate(vectors)])

    removed = store.delete(["Report:r1", "Report:r3", "Report:unknown", "Report:r1", "Report:é", ""])

    assert removed == 2
    assert set(store.fetch([f"Report:r{n}" for n in range(4)])) == {"Report:r0", "Report:r2"}
    assert store.stats().total == 2
    assert store.delete(["Report:r1"]) == 0
    assert store.delete([]) == 0


# -- list_ids ---------------------------------------------------------------------------------------

LISTED_IDS = (
    [f"Report:{n}" for n in range(130)]  # not zero-padded: bytewise order is 1, 10, 100, 101, ...
    + ["Report:A", "Report:Z", "Report:_x", "Report:~", "Report:%41", "Report: space", "Report:a#0",
       "Report:a#1", "Report:a#10", "Report:a#2", "Report:o'neil", "Report:back\\slash",
       "ReportX:1", "Reports:1", "Repo:1", "ThreatActor:apt29", "ThreatActor:apt29#0", "~tilde"]
)


def test_list_ids_yields_ids_by_prefix_in_bytewise_order(store):
    vectors = random_vectors(len(LISTED_IDS))
    upsert_all(store, [VectorRecord(i, v.tolist()) for i, v in zip(LISTED_IDS, vectors, strict=True)])

    def bytewise(ids):
        return sorted(ids, key=lambda vector_id: vector_id.encode("ascii"))

    assert list(store.list_ids()) == bytewise(LISTED_IDS)
    assert list(store.list_ids("")) == bytewise(LISTED_IDS)
    reports = list(store.list_ids("Report:"))
    assert len(reports) == 142
    assert reports == bytewise(i for i in LISTED_IDS if i.startswith("Report:"))
    assert reports[:4] == ["Report: space", "Report:%41", "Report:0", "Report:1"]
    assert list(store.list_ids("Report:a#")) == ["Report:a#0", "Report:a#1", "Report:a#10", "Report:a#2"]
    assert list(store.list_ids("Report:o'")) == ["Report:o'neil"]
    assert list(store.list_ids("ThreatActor:apt29")) == ["ThreatActor:apt29", "ThreatActor:apt29#0"]
    assert list(store.list_ids("~")) == ["~tilde"]
    assert list(store.list_ids("Nothing:")) == []
    assert list(store.list_ids("Report:é")) == []


def test_list_ids_is_lazy(store):
    upsert_all(store, [VectorRecord(f"Report:{n:03d}", v.tolist()) for n, v in enumerate(random_vectors(150))])

    listing = store.list_ids("Report:")

    assert not isinstance(listing, (list, tuple))
    assert list(itertools.islice(listing, 3)) == ["Report:000", "Report:001", "Report:002"]


# -- more than one request's worth ------------------------------------------------------------------

def test_large_batches_are_split_internally(store):
    count = 2500
    vectors = random_vectors(count, seed=3)
    ids = [f"Report:r{n:05d}" for n in range(count)]
    upsert_all(store, [VectorRecord(i, v.tolist(), {"n": n, "text": "lorem ipsum " * 20})
                       for n, (i, v) in enumerate(zip(ids, vectors, strict=True))])
    assert store.stats().total == count

    fetched = store.fetch(ids + ["Report:unknown"])
    assert set(fetched) == set(ids)
    assert fetched["Report:r02222"].metadata["n"] == 2222
    np.testing.assert_allclose(fetched["Report:r01999"].values, vectors[1999].astype(np.float32), rtol=1e-6)

    updated = store.update_metadata({i: {"n": -1} for i in ids[:1200]})
    assert updated.failed == {} and updated.written == 1200
    assert {r.metadata["n"] for r in store.fetch(ids[:1200]).values()} == {-1}
    assert store.fetch([ids[1200]])[ids[1200]].metadata["n"] == 1200

    assert list(store.list_ids("Report:")) == ids
    assert store.delete(ids[:1500]) == 1500
    assert store.stats().total == count - 1500
    assert list(store.list_ids()) == ids[1500:]


# -- query ------------------------------------------------------------------------------------------

def test_query_ranks_by_cosine_similarity(store):
    vectors = random_vectors(300, seed=4)
    ids = [f"Report:r{n:03d}" for n in range(300)]
    upsert_all(store, [VectorRecord(i, v.tolist(), {"n": n}) for n, (i, v) in enumerate(zip(ids, vectors, strict=True))])
    probe = random_vectors(1, seed=5)[0] * 7.0

    matches = store.query(probe.tolist(), top_k=10)

    scores = cosine(vectors, probe)
    best = np.argsort(-scores)[:10]
    assert [m.id for m in matches] == [ids[n] for n in best]
    np.testing.assert_allclose([m.score for m in matches], scores[best], atol=1e-5)
    assert [m.metadata for m in matches] == [{"n": int(n)} for n in best]
    assert all(m.values is None for m in matches)


def test_query_returns_values_when_asked(store):
    vectors = random_vectors(20, seed=6)
    upsert_all(store, [VectorRecord(f"Report:r{n}", v.tolist()) for n, v in enumerate(vectors)])

    matches = store.query(vectors[3].tolist(), top_k=2, include_values=True)

    assert matches[0].id == "Report:r3"
    assert matches[0].score == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(matches[0].values, vectors[3].astype(np.float32), rtol=1e-6)
    assert matches[1].values is not None and len(matches[1].values) == DIM


def test_query_with_top_k_above_the_count_returns_everything(store):
    vectors = random_vectors(5, seed=7)
    upsert_all(store, [VectorRecord(f"Report:r{n}", v.tolist()) for n, v in enumerate(vectors)])

    matches = store.query(vectors[0].tolist(), top_k=50)

    assert len(matches) == 5
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)


@pytest.mark.parametrize("top_k", [0, -1, 10_001])
def test_query_refuses_a_top_k_out_of_range(store, top_k):
    with pytest.raises(ValueError):
        store.query(random_vectors(1)[0].tolist(), top_k=top_k)


@pytest.mark.parametrize("probe", [[1.0] * (DIM - 1), [math.nan] + [1.0] * (DIM - 1)])
def test_query_refuses_a_bad_vector(store, probe):
    with pytest.raises(ValueError):
        store.query(probe, top_k=3)


# Metadata chosen so that each operator has records on both sides, and type mixing is tested:
# "score" is a string in r06, "active" a string in r06, "severity" differs only in case in r09.
FILTER_RECORDS = {
    "r01": {"label": "ThreatActor", "severity": "high", "score": 9.5, "active": True, "tags": ["apt", "russia"],
            "year": 2021},
    "r02": {"label": "ThreatActor", "severity": "low", "score": 2, "active": False, "tags": ["crime"], "year": 2019},
    "r03": {"label": "Vulnerability", "severity": "high", "score": 7.5, "tags": ["kev"], "year": 2023},
    "r04": {"label": "Vulnerability", "severity": "medium", "score": 5, "active": True, "year": 2022},
    "r05": {"label": "Report", "severity": "high", "tags": [], "year": 2020},
    "r06": {"label": "Report", "score": "9.5", "active": "true", "year": 2024},
    "r07": {"label": "Prospect", "severity": "high", "score": 10, "active": True, "tags": ["apt", "kev"]},
    "r08": {},
    "r09": {"label": "ThreatActor", "severity": "High", "score": -1.5, "year": 2021},
    "r10": {"label": "Vulnerability", "score": 0, "active": False, "tags": ["apt"], "year": 2023},
}

FILTER_CASES = [
    ({"label": "ThreatActor"}, {"r01", "r02", "r09"}),
    ({"label": {"$eq": "Vulnerability"}}, {"r03", "r04", "r10"}),
    ({"severity": {"$ne": "high"}}, {"r02", "r04", "r09"}),  # records without severity do not match
    ({"score": {"$gt": 5}}, {"r01", "r03", "r07"}),  # the string "9.5" is not a number
    ({"score": {"$gte": 5}}, {"r01", "r03", "r04", "r07"}),
    ({"score": {"$lt": 2}}, {"r09", "r10"}),
    ({"score": {"$lte": 2}}, {"r02", "r09", "r10"}),
    ({"score": {"$gte": 2, "$lt": 9.5}}, {"r02", "r03", "r04"}),
    ({"severity": {"$in": ["high", "medium"]}}, {"r01", "r03", "r04", "r05", "r07"}),
    ({"severity": {"$nin": ["high", "medium"]}}, {"r02", "r09"}),
    ({"tags": "apt"}, {"r01", "r07", "r10"}),  # a list matches when it holds the value
    ({"tags": {"$in": ["kev", "crime"]}}, {"r02", "r03", "r07"}),
    ({"tags": {"$nin": ["apt"]}}, {"r02", "r03", "r05"}),
    ({"tags": {"$ne": "kev"}}, {"r01", "r02", "r05", "r10"}),
    ({"active": True}, {"r01", "r04", "r07"}),  # not the string "true"
    ({"active": {"$eq": False}}, {"r02", "r10"}),
    ({"active": {"$ne": True}}, {"r02", "r06", "r10"}),
    ({"active": {"$eq": 1}}, set()),  # True is not 1
    ({"score": 10}, {"r07"}),
    ({"score": 10.0}, {"r07"}),
    ({"score": {"$eq": "9.5"}}, {"r06"}),
    ({"year": {"$in": [2021, 2023]}}, {"r01", "r03", "r09", "r10"}),
    ({"tags": {"$exists": True}}, {"r01", "r02", "r03", "r05", "r07", "r10"}),
    ({"tags": {"$exists": False}}, {"r04", "r06", "r08", "r09"}),
    ({"nothing": {"$exists": False}}, set(FILTER_RECORDS)),
    ({"label": "Nothing"}, set()),
    ({"label": "Report", "year": {"$gte": 2021}}, {"r06"}),  # several keys: all must hold
    ({"$and": [{"label": "ThreatActor"}, {"year": 2021}]}, {"r01", "r09"}),
    ({"$or": [{"label": "Prospect"}, {"score": {"$lt": 0}}]}, {"r07", "r09"}),
    ({"$or": [{"$and": [{"label": "Vulnerability"}, {"tags": "apt"}]},
              {"$and": [{"label": "ThreatActor"}, {"active": False}]}]}, {"r02", "r10"}),
    ({"$and": [{"severity": "high"}, {"$or": [{"tags": "kev"}, {"score": {"$gt": 9}}]}]},
     {"r01", "r03", "r07"}),
]


@pytest.mark.parametrize(("condition", "expected"), FILTER_CASES, ids=[str(c) for c, _ in FILTER_CASES])
def test_query_filters_by_metadata(store, condition, expected):
    vectors = random_vectors(len(FILTER_RECORDS), seed=8)
    names = list(FILTER_RECORDS)
    upsert_all(store, [VectorRecord(f"Report:{name}", v.tolist(), FILTER_RECORDS[name])
                       for name, v in zip(names, vectors, strict=True)])
    probe = random_vectors(1, seed=9)[0]

    matches = store.query(probe.tolist(), top_k=20, filter=condition)

    scores = cosine(vectors, probe)
    wanted = sorted((n for n, name in enumerate(names) if name in expected), key=lambda n: -scores[n])
    assert [m.id for m in matches] == [f"Report:{names[n]}" for n in wanted]
    np.testing.assert_allclose([m.score for m in matches], scores[wanted], atol=1e-5)
    assert all(m.metadata == FILTER_RECORDS[m.id.removeprefix("Report:")] for m in matches)


@pytest.mark.parametrize("condition", [
    {"label": "Rare"},
    {"n": {"$gte": 395}},
    {"$or": [{"label": "Rare"}, {"n": 0}]},
])
def test_a_filtered_query_is_exact_when_matches_are_rare(store, condition):
    # The probe is closest to the common records, so the few matches rank last without a filter.
    rng = np.random.default_rng(10)
    probe = rng.standard_normal(DIM)
    common = probe + 0.3 * rng.standard_normal((395, DIM))
    rare = rng.standard_normal((5, DIM))
    vectors = np.vstack([common, rare])
    labels = ["Common"] * 395 + ["Rare"] * 5
    upsert_all(store, [VectorRecord(f"Report:r{n:03d}", v.tolist(), {"label": label, "n": n})
                       for n, (v, label) in enumerate(zip(vectors, labels, strict=True))])

    matches = store.query(probe.tolist(), top_k=3, filter=condition)

    def selected(n):
        if "label" in condition:
            return labels[n] == "Rare"
        if "n" in condition:
            return n >= 395
        return labels[n] == "Rare" or n == 0

    scores = cosine(vectors, probe)
    wanted = sorted((n for n in range(400) if selected(n)), key=lambda n: -scores[n])[:3]
    assert [m.id for m in matches] == [f"Report:r{n:03d}" for n in wanted]
    np.testing.assert_allclose([m.score for m in matches], scores[wanted], atol=1e-5)


def test_filters_match_keys_and_values_with_special_characters(store):
    tricky = ["it's", 'say "hi"', "100%", "a_b", "back\\slash", "é ✓", "ab", "%", "_", "'"]
    vectors = random_vectors(len(tricky), seed=14)
    upsert_all(store, [VectorRecord(f"Report:r{n}", v.tolist(), {"k'%_\"é": value, "list": [value, "other"]})
                       for n, (value, v) in enumerate(zip(tricky, vectors, strict=True))])

    for n, value in enumerate(tricky):
        for condition in ({"k'%_\"é": value}, {"list": value}, {"list": {"$in": ["nothing", value]}}):
            assert [m.id for m in store.query(vectors[n].tolist(), top_k=20, filter=condition)] == [f"Report:r{n}"]
    assert len(store.query(vectors[0].tolist(), top_k=20, filter={"k'%_\"é": {"$ne": "ab"}})) == len(tricky) - 1


def test_a_long_in_list_filters_exactly(store):
    vectors = random_vectors(50, seed=15)
    upsert_all(store, [VectorRecord(f"Report:r{n}", v.tolist(), {"uid": f"u{n}"}) for n, v in enumerate(vectors)])
    wanted = {f"u{n}" for n in range(0, 50, 7)}

    matches = store.query(vectors[0].tolist(), top_k=50,
                          filter={"uid": {"$in": sorted(wanted) + [f"absent{n}" for n in range(200)]}})

    assert {m.metadata["uid"] for m in matches} == wanted


def test_a_filtered_query_can_return_values(store):
    vectors = random_vectors(10, seed=11)
    upsert_all(store, [VectorRecord(f"Report:r{n}", v.tolist(), {"even": n % 2 == 0})
                       for n, v in enumerate(vectors)])

    matches = store.query(vectors[4].tolist(), top_k=2, filter={"even": True}, include_values=True)

    assert matches[0].id == "Report:r4"
    np.testing.assert_allclose(matches[0].values, vectors[4].astype(np.float32), rtol=1e-6)
    assert all(m.metadata == {"even": True} for m in matches)


@pytest.mark.parametrize("condition", [
    {"score": {"$regex": "a"}},
    {"$not": {"score": 1}},
    {"$nor": [{"score": 1}]},
    {"score": {"$gt": "5"}},
    {"score": {"$lt": True}},
    {"tags": ["a", "b"]},
    {"tags": {"$in": "apt"}},
    {"tags": {"$in": [["a"]]}},
    {"tags": {"$in": [f"v{n}" for n in range(10_001)]}},
    {"$and": {"a": 1}},
    {"$or": []},
    {"$and": [{}]},
    {"a": {"$exists": "yes"}},
    {"a": None},
    {"a": {}},
    {"a": {"b": 1}},
    {"a": {"$eq": ["x"]}},
    {"a": math.nan},
])
def test_an_invalid_filter_is_refused(store, condition):
    upsert_all(store, [VectorRecord("Report:r1", random_vectors(1)[0].tolist(), {"a": 1})])
    with pytest.raises(ValueError):
        store.query(random_vectors(1)[0].tolist(), top_k=3, filter=condition)


def test_an_empty_filter_selects_everything(store):
    vectors = random_vectors(4, seed=12)
    upsert_all(store, [VectorRecord(f"Report:r{n}", v.tolist()) for n, v in enumerate(vectors)])

    assert len(store.query(vectors[0].tolist(), top_k=10, filter={})) == 4


# -- stats ------------------------------------------------------------------------------------------

def test_stats_count_vectors(store):
    vectors = random_vectors(30, seed=13)
    upsert_all(store, [VectorRecord(f"Report:r{n}", v.tolist()) for n, v in enumerate(vectors)])
    upsert_all(store, [VectorRecord("Report:r0", vectors[1].tolist())])  # an overwrite adds none
    store.delete(["Report:r1", "Report:r2"])

    stats = store.stats()

    assert stats.dimension == DIM
    assert stats.total == 28
