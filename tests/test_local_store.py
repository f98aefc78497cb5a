"""What LanceVectorStore adds to the vector contract: upkeep, reopening, threads, processes.

Everything runs against real LanceDB tables under tmp_path; the table is inspected with lancedb
itself where the store's answers would not show what happened on disk.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from sync.stores.base import PermanentStoreError, VectorRecord
from sync.stores.filters import matches
from sync.stores.local_store import (
    ID_INDEX,
    ID_INDEX_MIN_ROWS,
    INDEX_REFRESH_MIN_ROWS,
    LanceVectorStore,
    sql_prefilter,
)
from tests.test_filters import MATCH_CASES, RECORD

DIM = 16
TABLE = "vectors"


def vectors(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)


def records(count: int, prefix: str = "Report:r", seed: int = 0, **metadata: object) -> list[VectorRecord]:
    return [VectorRecord(f"{prefix}{n:05d}", v, {"n": n, **metadata}) for n, v in enumerate(vectors(count, seed))]


def open_store(directory: Path, **options: object) -> LanceVectorStore:
    return LanceVectorStore(directory, table=TABLE, dimension=DIM, **options)  # type: ignore[arg-type]


def lance_table(directory: Path):
    """The table as LanceDB itself shows it, independent of the store."""
    return lancedb.connect(str(directory)).open_table(TABLE)


def fragments(directory: Path) -> int:
    return lance_table(directory).stats()["fragment_stats"]["num_fragments"]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "lancedb"


# -- opening ----------------------------------------------------------------------------------------

def test_it_keeps_vectors_across_instances(directory):
    first = open_store(directory)
    first.upsert(records(5))
    first.close()

    second = open_store(directory)

    assert second.stats().total == 5
    assert second.fetch(["Report:r00003"])["Report:r00003"].metadata == {"n": 3}


def test_it_refuses_a_table_of_another_dimension(directory):
    open_store(directory).upsert(records(1))
    with pytest.raises(PermanentStoreError, match="dimension 16, but this store expects 8"):
        LanceVectorStore(directory, table=TABLE, dimension=8)


def test_it_refuses_a_table_it_did_not_make(directory):
    db = lancedb.connect(str(directory))
    db.create_table(TABLE, schema=pa.schema([pa.field("id", pa.string()), pa.field("text", pa.string())]))
    with pytest.raises(PermanentStoreError, match="not made by this store"):
        open_store(directory)


def test_an_unusable_directory_is_a_permanent_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(PermanentStoreError, match="LanceDB open"):
        open_store(blocker / "lancedb")


def test_a_closed_store_refuses_every_call(directory):
    store = open_store(directory)
    store.upsert(records(2))
    store.close()

    for call in (lambda: store.fetch(["Report:r00000"]), lambda: store.upsert(records(1)),
                 lambda: list(store.list_ids()), store.stats, store.ping,
                 lambda: store.query(vectors(1)[0], top_k=1)):
        with pytest.raises(PermanentStoreError, match="closed"):
            call()


def test_ping_names_the_version_table_and_count(directory):
    store = open_store(directory)
    store.upsert(records(3))
    assert store.ping() == f"LanceDB {lancedb.__version__}, table {TABLE}, 3 vectors"


# -- upkeep -----------------------------------------------------------------------------------------

def test_compaction_merges_files_and_drops_old_versions(directory):
    store = open_store(directory, compact_every=None)
    for n in range(12):
        store.upsert(records(10, prefix=f"Report:b{n:02d}-", seed=n))
    store.update_metadata({"Report:b00-00001": {"updated": True}})
    store.delete(["Report:b01-00002"])
    before = fragments(directory)

    result = store.compact(keep_versions=timedelta(0))

    assert before >= 12
    assert result.fragments_before == before
    assert result.fragments_after == fragments(directory) < before
    assert result.versions_removed >= 12
    assert f"{before} -> {result.fragments_after} data fragments" in str(result)
    assert store.stats().total == 119
    assert store.fetch(["Report:b00-00001"])["Report:b00-00001"].metadata == {"updated": True}
    assert len(list(store.list_ids())) == 119


def test_it_compacts_by_itself_every_few_commits(directory):
    store = open_store(directory, compact_every=5)
    for n in range(12):
        store.upsert(records(3, prefix=f"Report:b{n:02d}-", seed=n))

    # 12 commits, compacted after the 5th and the 10th: two fragments since, plus the compacted one.
    assert fragments(directory) <= 3
    assert store.stats().total == 36


def test_it_indexes_ids_once_the_table_is_big_enough(directory):
    store = open_store(directory, compact_every=None)
    store.upsert(records(ID_INDEX_MIN_ROWS - 1))
    assert [i.name for i in lance_table(directory).list_indices()] == []

    store.upsert(records(1, prefix="Report:x"))
    assert [i.name for i in lance_table(directory).list_indices()] == [ID_INDEX]

    for n in range(6):  # 3,000 rows more, in batches smaller than the refresh threshold
        store.upsert(records(500, prefix=f"Report:more{n}-", seed=n))
    assert lance_table(directory).index_stats(ID_INDEX).num_unindexed_rows < INDEX_REFRESH_MIN_ROWS
    assert len(store.fetch([f"Report:more5-{n:05d}" for n in range(500)])) == 500


def test_metadata_updates_work_on_an_indexed_table_with_its_primary_key(directory):
    """The three together: the unenforced primary key on `id`, the BTREE index on it, and
    update_metadata's conditional merge (`target.rev = source.rev`). lancedb 0.41 refuses that
    merge ("Primary key column ... must not be nullable"), which is why requirements.txt stops
    before it; this keeps the combination tested whatever the index threshold becomes."""
    store = open_store(directory, compact_every=None)
    store.upsert(records(ID_INDEX_MIN_ROWS))
    table = lance_table(directory)
    assert [i.name for i in table.list_indices()] == [ID_INDEX]
    assert b"lance-schema:unenforced-primary-key:position" in (table.schema.field("id").metadata or {})

    ids = [f"Report:r{n:05d}" for n in range(0, ID_INDEX_MIN_ROWS, 7)]
    updated = store.update_metadata({i: {"n": -1, "reviewed": True} for i in ids})
    assert updated.failed == {} and updated.written == len(ids)
    assert {r.metadata["n"] for r in store.fetch(ids).values()} == {-1}
    assert store.fetch(["Report:r00001"])["Report:r00001"].metadata["n"] == 1


def test_list_ids_pages_through_the_table(directory):
    store = open_store(directory, list_page_size=7)
    ids = [f"Report:{n}" for n in range(50)] + [f"Other:{n}" for n in range(10)]
    store.upsert([VectorRecord(i, v) for i, v in zip(ids, vectors(len(ids)), strict=True)])

    assert list(store.list_ids()) == sorted(ids)
    assert list(store.list_ids("Report:")) == sorted(i for i in ids if i.startswith("Report:"))
    assert list(store.list_ids("Report:4")) == ["Report:4"] + [f"Report:4{n}" for n in range(10)]


# -- filters ----------------------------------------------------------------------------------------

PREFILTER_RECORDS = [
    RECORD,
    {},
    {"label": "Report", "tags": ["apt", "x%_y"], "score": "7.5", "active": "true"},
    {"label": "ThreatActor", "severity": "low", "count": 3.5, "tags": []},
    {"missing": "x", "label": ["ThreatActor"], "quote's": 'say "hi"'},
    {"text": 'contains "label":"ThreatActor" inside a string', "active": False},
]


@pytest.mark.parametrize(("condition", "_"), MATCH_CASES, ids=[str(c) for c, _ in MATCH_CASES])
def test_the_sql_prefilter_never_holds_back_a_match(directory, condition, _):
    # The prefilter may let extra records through (the exact filter follows); missing one would
    # silently drop a result.
    store = open_store(directory)
    store.upsert([VectorRecord(f"Report:r{n}", v, m)
                  for n, (v, m) in enumerate(zip(vectors(len(PREFILTER_RECORDS)), PREFILTER_RECORDS, strict=True))])
    where = sql_prefilter(condition)
    if where is None:
        return
    table = lance_table(directory)
    passed = set(table.search().where(where).select(["id"]).limit(None).to_arrow()["id"].to_pylist())
    for n, metadata in enumerate(PREFILTER_RECORDS):
        if matches(metadata, condition):
            assert f"Report:r{n}" in passed, (condition, metadata, where)


def test_the_sql_prefilter_narrows_equality_on_strings():
    where = sql_prefilter({"label": "ThreatActor", "tags": {"$in": ["apt", "kev"]}})
    assert where is not None
    assert '"label":' in where and '"ThreatActor"' in where and '"apt"' in where and '"kev"' in where
    assert sql_prefilter({"n": {"$exists": False}}) is None
    assert sql_prefilter({"$or": [{"a": "x"}, {"b": {"$exists": False}}]}) is None
    assert sql_prefilter({}) is None


# -- concurrency ------------------------------------------------------------------------------------

def test_update_metadata_never_restores_values_another_writer_replaced(directory):
    # Two instances stand for two processes: each has its own memory of recently read rows.
    web, worker = open_store(directory), open_store(directory)
    old, new = vectors(2)
    web.upsert([VectorRecord("Report:r1", old, {"v": 1})])
    assert web.fetch(["Report:r1"])  # the web process now remembers the old values

    worker.upsert([VectorRecord("Report:r1", new, {"v": 2})])
    result = web.update_metadata({"Report:r1": {"v": 3}})

    assert result.written == 1 and result.failed == {}
    record = worker.fetch(["Report:r1"])["Report:r1"]
    assert record.metadata == {"v": 3}
    np.testing.assert_array_equal(np.asarray(record.values, dtype=np.float32), new)


def test_threads_can_share_one_store(directory):
    store = open_store(directory, compact_every=7)

    def work(thread: int) -> None:
        prefix = f"T{thread}:"
        batch = records(120, prefix=prefix, seed=thread)
        for start in range(0, 120, 30):
            assert store.upsert(batch[start:start + 30]).written == 30
        ids = [r.id for r in batch]
        assert store.update_metadata({i: {"thread": thread} for i in ids[:60]}).written == 60
        assert store.delete(ids[60:90]) == 30
        assert len(store.query(batch[0].values, top_k=5, filter={"thread": thread})) == 5
        assert list(store.list_ids(prefix)) == ids[:60] + ids[90:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(work, thread) for thread in range(4)]:
            future.result()

    assert store.stats().total == 4 * 90
    assert {r.metadata.get("thread") for r in store.fetch([f"T2:{n:05d}" for n in range(60)]).values()} == {2}


def test_two_stores_on_one_table_retry_each_others_commits(directory):
    # Separate instances do not share the write lock, so their commits really race; LanceDB
    # refuses the losers and the store retries them.
    writer, compactor = open_store(directory, compact_every=None), open_store(directory, compact_every=None)
    base = records(40, prefix="Base:")
    writer.upsert(base)
    errors: list[BaseException] = []

    def keep_writing() -> None:
        try:
            for n in range(25):
                writer.update_metadata({r.id: {"round": n} for r in base})
                writer.upsert(records(5, prefix=f"W{n:02d}:", seed=n))
                writer.delete([f"W{n:02d}:00000"])
        except BaseException as exc:
            errors.append(exc)

    def keep_compacting() -> None:
        try:
            for n in range(25):
                compactor.upsert(records(3, prefix=f"C{n:02d}:", seed=100 + n))
                compactor.delete([f"C{n:02d}:00001"])
                compactor.compact()  # a long rewrite, the commit most likely to lose a race
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=keep_writing), threading.Thread(target=keep_compacting)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    listed = list(writer.list_ids())
    assert len(listed) == len(set(listed)) == writer.stats().total == 40 + 25 * 4 + 25 * 2
    assert {r.metadata["round"] for r in compactor.fetch([r.id for r in base]).values()} == {24}


def test_racing_inserts_of_the_same_ids_do_not_duplicate_them(directory):
    stores = [open_store(directory, compact_every=None) for _ in range(3)]
    start = threading.Barrier(len(stores))

    def insert(store: LanceVectorStore, seed: int) -> None:
        start.wait()
        for n in range(15):
            assert store.upsert(records(20, prefix=f"Same{n:02d}:", seed=seed)).written == 20

    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        for future in [pool.submit(insert, store, seed) for seed, store in enumerate(stores)]:
            future.result()

    listed = list(stores[0].list_ids())
    assert len(listed) == len(set(listed)) == stores[0].stats().total == 15 * 20


def _child_process(directory: str, ready: Any, go: Any) -> None:
    store = open_store(Path(directory))
    ready.set()
    go.wait(30)
    for n in range(20):
        store.upsert(records(10, prefix=f"Child{n:02d}:", seed=n))
        store.update_metadata({f"Shared:{m:05d}": {"by": "child", "round": n} for m in range(0, 20, 2)})


def test_two_processes_share_a_directory(directory):
    store = open_store(directory)
    store.upsert(records(20, prefix="Shared:"))
    context = multiprocessing.get_context("spawn")
    ready, go = context.Event(), context.Event()
    child = context.Process(target=_child_process, args=(str(directory), ready, go))
    child.start()
    try:
        assert ready.wait(60), "the child process did not open the store"
        go.set()
        for n in range(20):
            store.upsert(records(10, prefix=f"Parent{n:02d}:", seed=50 + n))
            store.update_metadata({f"Shared:{m:05d}": {"by": "parent", "round": n} for m in range(1, 20, 2)})
        child.join(120)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0

    # The parent sees the child's writes without reopening, and no id was written twice.
    listed = list(store.list_ids())
    assert len(listed) == len(set(listed)) == store.stats().total == 20 + 200 + 200
    shared = store.fetch([f"Shared:{m:05d}" for m in range(20)])
    assert {r.metadata["by"] for i, r in shared.items() if int(i[-5:]) % 2 == 0} == {"child"}
    assert {r.metadata["by"] for i, r in shared.items() if int(i[-5:]) % 2 == 1} == {"parent"}
    assert {r.metadata["round"] for r in shared.values()} == {19}
