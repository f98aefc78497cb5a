"""The embedded vector store: one LanceDB table per index, behaving like a Pinecone namespace.

Records follow Pinecone's rules (sync.stores.metadata), and filters Pinecone's language
(sync.stores.filters), so the engine cannot tell this store from Pinecone except by speed.

Table layout: `id` (string), `vector` (fixed-size list of float32), `metadata` (compact JSON of
Pinecone-typed metadata) and `rev` (a random int64 drawn anew by every upsert).

Queries are exact: LanceDB scans every vector (no approximate index is built) and ranks by cosine.
A filter is first narrowed in SQL (`sql_prefilter`: text a match must contain), then decided in
Python by sync.stores.filters, fetching more candidates until top_k pass or none are left.

Metadata updates. LanceDB has no cheap partial-row update (rewriting one column rewrites it for
whole data files and voids the id index), so `update_metadata` writes whole rows back: values
it has read (or just fetched or written: a small memory of recent rows saves the read the engine
has usually just done), new metadata, and the `rev` it read. The merge only replaces rows whose
`rev` is unchanged, so values another writer upserted meanwhile are never overwritten with old
ones; such rows are read again and retried.

Concurrency. Writes within one process are serialised by a lock; reads are not. Several
processes may share the directory: every read checks for the newest table version, LanceDB
commits optimistically, and a commit that loses a race is retried a few times before it becomes
a RetryableStoreError. `id` is the table's (unenforced) primary key: that is what makes LanceDB
see two writers inserting the same new id as a conflict, instead of keeping two rows.

Upkeep. Every LanceDB write adds a data file and a table version, and rows written since the id
index was built are found by scanning: both slow every later call. So after writes this store
refreshes the BTREE index on `id` once enough rows are unindexed, and compacts every
`compact_every` commits (merging data files, updating the index, dropping versions older than
`keep_versions`). `compact()` does the same on demand, e.g. from a scheduled task.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import lancedb
import numpy as np
import orjson
import pyarrow as pa
from lancedb.index import BTree
from lancedb.query import ColumnOrdering

from sync.stores.base import (
    IndexStats,
    Metadata,
    PermanentStoreError,
    QueryMatch,
    RetryableStoreError,
    StoreError,
    VectorRecord,
    WriteResult,
)
from sync.stores.filters import Predicate, compile_filter
from sync.stores.metadata import (
    MAX_ID_LENGTH,
    MAX_IDS_PER_REQUEST,
    MAX_TOP_K,
    check_metadata_size,
    check_values,
    check_vectors,
    coerce_metadata,
    is_valid_vector_id,
    validate_vector_id,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

ID_INDEX = "id_idx"
# Below this many rows a scan of the id column costs about what the index lookup does.
ID_INDEX_MIN_ROWS = 1_000
# Rows written since the id index was built are scanned by every lookup (about 3 ms per 1,000
# rows), while a rebuild costs about 1 ms per 1,000 rows of the table: rebuilding after about
# 4 * sqrt(rows) new rows balances the two (measured at 100k rows of 384 dims).
INDEX_REFRESH_MIN_ROWS = 1_000
INDEX_REFRESH_FACTOR = 4
COMPACT_EVERY = 100
# Each page of a listing sorts the ids after the cursor: 50,000 ids a page (about 4 MB) listed a
# million ids in 1.8 s, 5,000 a page in 10.6 s.
LIST_PAGE_SIZE = 50_000
COMMIT_ATTEMPTS = 6
# A filtered query first asks LanceDB for this many times top_k nearest candidates, then four
# times more each round until top_k of them pass the filter or the table is exhausted.
FILTER_OVERFETCH = 10
FILTER_MIN_CANDIDATES = 100
UPDATE_METADATA_ATTEMPTS = 3
# Rows (vector and rev) kept from recent fetches and upserts for update_metadata: about 1.5 KB
# each at 384 dimensions.
RECENT_ROWS = 10_000
# Longer $in lists are left to the exact filter rather than spelled out as LIKE alternatives.
PREFILTER_MAX_IN = 64

# Schema metadata LanceDB puts on a primary-key column.
PRIMARY_KEY_MARK = b"lance-schema:unenforced-primary-key:position"
# Substrings of LanceDB/OS errors that a later attempt may not meet.
# A full or read-only filesystem is one of them: someone frees space or remounts it, and the queued
# work resumes by itself (the ping says meanwhile what is wrong, which opens an alert).
_TRANSIENT_MARKERS = ("conflict", "retry", "too many open files", "no space left", "read-only file system",
                      "timed out", "timeout", "temporarily unavailable", "resource busy", "connection reset")
# Below this much free space a commit (a data file and a manifest) may not fit: the ping fails.
MIN_FREE_BYTES = 1 << 20
# Errors LanceDB and the OS raise from the calls this module makes; anything else is a bug here.
_LANCE_ERRORS = (OSError, RuntimeError, ValueError, pa.ArrowException)


@dataclass(frozen=True)
class CompactionResult:
    """What a compaction changed, counted from the table before and after."""

    fragments_before: int
    fragments_after: int
    versions_before: int
    versions_after: int
    seconds: float

    @property
    def fragments_merged(self) -> int:
        return max(self.fragments_before - self.fragments_after, 0)

    @property
    def versions_removed(self) -> int:
        return max(self.versions_before - self.versions_after, 0)

    def __str__(self) -> str:
        return (f"{self.fragments_before} -> {self.fragments_after} data fragments, "
                f"{self.versions_removed} old versions removed, in {self.seconds:.2f} s")


class LanceVectorStore:
    """A Pinecone-shaped vector index in a LanceDB directory (see the module docstring)."""

    name = "local"

    def __init__(self, directory: str | Path, table: str = "nightingale", dimension: int = 384, *,
                 compact_every: int | None = COMPACT_EVERY, keep_versions: timedelta = timedelta(minutes=1),
                 list_page_size: int = LIST_PAGE_SIZE):
        if dimension < 1:
            raise ValueError(f"dimension must be positive, got {dimension}")
        if list_page_size < 1:
            raise ValueError(f"list_page_size must be positive, got {list_page_size}")
        self.directory = Path(directory)
        self.table_name = table
        self.dimension = dimension
        self.compact_every = compact_every
        self.keep_versions = keep_versions
        self.list_page_size = list_page_size
        self._vector_type = pa.list_(pa.float32(), dimension)
        self._schema = pa.schema([
            pa.field("id", pa.string(), nullable=False),
            pa.field("vector", self._vector_type, nullable=False),
            pa.field("metadata", pa.string(), nullable=False),
            pa.field("rev", pa.int64(), nullable=False),
        ])
        self._write_lock = threading.RLock()
        self._commits_since_compaction = 0
        self._rows_since_indexing = 0
        self._closed = False
        self._recent = _RecentRows(RECENT_ROWS)
        self._table = self._open()
        self._has_id_index = self._find_id_index()

    def __repr__(self) -> str:
        return (f"LanceVectorStore({str(self.directory)!r}, table={self.table_name!r}, "
                f"dimension={self.dimension})")

    # -- writes ------------------------------------------------------------------------------------

    def upsert(self, records: Sequence[VectorRecord]) -> WriteResult:
        """Insert or overwrite records whole, in one commit; refused records go to `failed`.

        A repeated id is written once, from its last record (as Pinecone does); `written` counts
        the distinct ids written.
        """
        result = WriteResult()
        matrix, vector_errors = check_vectors([record.values for record in records], self.dimension)
        accepted: dict[str, tuple[int, str]] = {}  # id -> (row of matrix, metadata JSON)
        for row, record in enumerate(records):
            vector_id = str(record.id)
            try:
                # check_record's rules, with the values checked for the whole batch at once.
                validate_vector_id(record.id)
                if vector_errors[row] is not None:
                    raise ValueError(vector_errors[row])
                text = check_metadata_size(coerce_metadata(record.metadata))
            except ValueError as exc:
                result.failed[vector_id] = str(exc)
                accepted.pop(vector_id, None)
                continue
            result.failed.pop(vector_id, None)
            accepted[vector_id] = (row, text)
        if not accepted:
            return result
        ids = list(accepted)
        rows = [row for row, _ in accepted.values()]
        if len(rows) < len(matrix):
            matrix = matrix[rows]
        data = self._rows(ids, matrix, [text for _, text in accepted.values()],
                          np.frombuffer(os.urandom(8 * len(ids)), dtype=np.int64))
        with self._write_lock:
            table = self._open_table()
            merged = self._commit("upsert", lambda: table.merge_insert("id")
                                  .when_matched_update_all()
                                  .when_not_matched_insert_all()
                                  .execute(data))
            self._recent.remember(ids, matrix, data["rev"].to_numpy())
            self._after_write(merged.num_inserted_rows + merged.num_updated_rows)
        result.written = len(ids)
        return result

    def update_metadata(self, metadata: dict[str, Metadata]) -> WriteResult:
        """Replace the whole metadata of existing vectors, keeping their values.

        Ids with no vector, invalid ids and metadata Pinecone would refuse go to `failed`.
        """
        result = WriteResult()
        pending: dict[str, str] = {}
        for vector_id, new_metadata in metadata.items():
            if not is_valid_vector_id(vector_id):
                result.failed[str(vector_id)] = f"not a valid vector id: {vector_id!r}"
                continue
            try:
                pending[vector_id] = check_metadata_size(coerce_metadata(new_metadata))
            except ValueError as exc:
                result.failed[vector_id] = str(exc)
        with self._write_lock:
            for attempt in range(UPDATE_METADATA_ATTEMPTS):
                if not pending:
                    break
                pending = self._update_metadata_once(pending, result, trust_recent=attempt == 0)
        for vector_id in pending:
            result.failed[vector_id] = ("its vector kept being replaced by other writers; "
                                        "the metadata was not written")
            result.retryable.add(vector_id)
        return result

    def _update_metadata_once(self, pending: dict[str, str], result: WriteResult,
                              trust_recent: bool) -> dict[str, str]:
        """One read + conditional merge; returns the ids an upsert overtook, to try again.

        With `trust_recent`, rows this store fetched or wrote lately are not read again (the
        engine fetches a batch just before updating its metadata): the rev condition makes a
        stale copy harmless, since its row is then skipped and retried from a fresh read.
        """
        current = self._recent.recall(pending) if trust_recent else {}
        unknown = [vector_id for vector_id in pending if vector_id not in current]
        current.update(self._read_rows(unknown, ["id", "vector", "rev"]))
        for vector_id in pending.keys() - current.keys():
            # Retryable, as in the Pinecone adapter: the vector may be gone only for now (a
            # concurrent delete or rewrite), and a retry re-reads the entity and writes it whole.
            result.failed[vector_id] = "no vector with this id"
            result.retryable.add(vector_id)
        ids = [vector_id for vector_id in pending if vector_id in current]
        if not ids:
            return {}
        rows = [current[vector_id] for vector_id in ids]
        matrix = np.stack([row["vector"] for row in rows])
        revs = np.asarray([row["rev"] for row in rows], dtype=np.int64)
        data = self._rows(ids, matrix, [pending[vector_id] for vector_id in ids], revs)
        table = self._open_table()
        # The rev condition skips a row an upsert replaced after our read, so its new values
        # are never overwritten with the old ones; the row is read again and retried.
        merged = self._commit("update_metadata", lambda: table.merge_insert("id")
                              .when_matched_update_all(where="target.rev = source.rev")
                              .execute(data))
        self._after_write(merged.num_updated_rows)
        if merged.num_updated_rows == len(ids):
            result.written += len(ids)
            return {}
        after = self._read_rows(ids, ["id", "rev"])
        retry: dict[str, str] = {}
        for vector_id, row in zip(ids, rows, strict=True):
            now = after.get(vector_id)
            if now is None:
                result.failed[vector_id] = "the vector was deleted while its metadata was updated"
                result.retryable.add(vector_id)
            elif now["rev"] == row["rev"]:
                result.written += 1
            else:
                retry[vector_id] = pending[vector_id]
        self._recent.forget(retry)
        return retry

    def delete(self, ids: Iterable[str]) -> int:
        """Delete vectors by id; returns how many existed. Unknown or invalid ids are ignored."""
        wanted = _possible_ids(ids)
        removed = 0
        with self._write_lock:
            table = self._open_table()
            for chunk in _chunks(wanted, MAX_IDS_PER_REQUEST):
                where = _id_in(chunk)
                deleted = self._commit("delete", lambda where=where: table.delete(where))
                self._recent.forget(chunk)
                removed += deleted.num_deleted_rows
                self._after_write(0)
        return removed

    # -- reads -------------------------------------------------------------------------------------

    def fetch(self, ids: Iterable[str]) -> dict[str, VectorRecord]:
        """The stored records among `ids` (unknown and invalid ids are simply absent)."""
        rows = self._read_rows(_possible_ids(ids), ["id", "vector", "metadata", "rev"])
        return {vector_id: VectorRecord(vector_id, row["vector"].tolist(), json.loads(row["metadata"]))
                for vector_id, row in rows.items()}

    def fetch_metadata(self, ids: Iterable[str]) -> dict[str, Metadata]:
        """The metadata of the stored records among `ids`; the vector column is not read."""
        rows = self._read_rows(_possible_ids(ids), ["id", "metadata"])
        # orjson: reconciliation and the workers decode every record they read.
        return {vector_id: orjson.loads(row["metadata"]) for vector_id, row in rows.items()}

    def list_ids(self, prefix: str = "") -> Iterator[str]:
        """Ids starting with `prefix`, in bytewise order, read a page of ids at a time.

        Each page is read from the newest table version, after the last id of the page before,
        so ids written while the listing runs may or may not appear, and none appears twice.
        """
        if not _is_possible_prefix(prefix):
            return
        bounds = [f"id >= {_sql_str(prefix)}", f"id < {_sql_str(_prefix_end(prefix))}"] if prefix else []
        after: str | None = None
        while True:
            where = " AND ".join(bounds + ([f"id > {_sql_str(after)}"] if after is not None else []))
            page = self._call("list_ids", lambda where=where: self._page_of_ids(where))
            yield from page
            if len(page) < self.list_page_size:
                return
            after = page[-1]

    def _page_of_ids(self, where: str) -> list[str]:
        query = (self._open_table().search().select(["id"])
                 .order_by([ColumnOrdering(column_name="id")]).limit(self.list_page_size))
        if where:
            query = query.where(where)
        return query.to_arrow()["id"].to_pylist()

    def query(self, vector: Sequence[float], top_k: int = 10, filter: Metadata | None = None,
              include_values: bool = False) -> list[QueryMatch]:
        """The top_k records by cosine similarity (exact: a full scan), best first.

        Scores are cosine similarities whether or not vectors are normalised. A filter is
        applied exactly: candidates are fetched in growing rounds until top_k pass it or none
        are left, so the answer equals a brute-force top_k over the records that match.
        """
        predicate = compile_filter(filter) if filter else None
        probe = np.asarray(check_values(vector, self.dimension), dtype=np.float32)
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        if predicate is None:
            columns = ["id", "metadata", "_distance"] + (["vector"] if include_values else [])
            rows = self._nearest(probe, top_k, columns)
            values = _vectors(rows) if include_values else None
            return [QueryMatch(vector_id, 1.0 - distance, json.loads(text),
                               values[i].tolist() if values is not None else None)
                    for i, (vector_id, text, distance) in enumerate(zip(
                        rows["id"].to_pylist(), rows["metadata"].to_pylist(),
                        rows["_distance"].to_pylist(), strict=True))]
        hits = self._filtered_nearest(probe, top_k, predicate, sql_prefilter(filter))
        if not include_values:
            return [QueryMatch(vector_id, 1.0 - distance, metadata)
                    for vector_id, metadata, distance in hits]
        stored = self._read_rows([vector_id for vector_id, _, _ in hits], ["id", "vector"])
        # A hit deleted since it was found is left out rather than returned without values.
        return [QueryMatch(vector_id, 1.0 - distance, metadata, stored[vector_id]["vector"].tolist())
                for vector_id, metadata, distance in hits if vector_id in stored]

    def _filtered_nearest(self, probe: np.ndarray, top_k: int, predicate: Predicate,
                          where: str | None) -> list[tuple[str, Metadata, float]]:
        verdicts: dict[str, tuple[Metadata, bool]] = {}  # metadata JSON -> (parsed, selected)
        limit = max(top_k * FILTER_OVERFETCH, FILTER_MIN_CANDIDATES)
        while True:
            rows = self._nearest(probe, limit, ["id", "metadata", "_distance"], where)
            hits: list[tuple[str, Metadata, float]] = []
            for vector_id, text, distance in zip(rows["id"].to_pylist(), rows["metadata"].to_pylist(),
                                                 rows["_distance"].to_pylist(), strict=True):
                verdict = verdicts.get(text)
                if verdict is None:
                    parsed = json.loads(text)
                    verdict = verdicts[text] = (parsed, predicate(parsed))
                if verdict[1]:
                    hits.append((vector_id, dict(verdict[0]), distance))
                    if len(hits) == top_k:
                        return hits
            if rows.num_rows < limit:
                return hits  # every record was a candidate
            limit *= 4

    def _nearest(self, probe: np.ndarray, limit: int, columns: list[str],
                 where: str | None = None) -> pa.Table:
        def search() -> pa.Table:
            # No vector index is ever built; bypassing one keeps the scan exact if someone does.
            query = (self._open_table().search(probe, vector_column_name="vector")
                     .distance_type("cosine").bypass_vector_index().select(columns).limit(limit))
            if where:
                query = query.where(where, prefilter=True)
            return query.to_arrow()

        return self._call("query", search)

    def stats(self) -> IndexStats:
        return IndexStats(dimension=self.dimension, total=self._count())

    def ping(self) -> str:
        """Answers when the table reads and its directory can take writes: a disk that is full or
        read-only fails every write while reads go on, and must not look healthy."""
        count = self._count()
        self._check_writable()
        return f"LanceDB {lancedb.__version__}, table {self.table_name}, {count} vectors"

    def _check_writable(self) -> None:
        """RetryableStoreError when the directory's filesystem is read-only or has less than
        MIN_FREE_BYTES left (statvfs: no write is tried, no table version made)."""
        try:
            disk = os.statvfs(self.directory)
        except OSError as exc:
            raise self._store_error("ping", exc) from exc
        if disk.f_flag & os.ST_RDONLY:
            raise RetryableStoreError(f"LanceDB directory {self.directory} is on a read-only file system: "
                                      "every write fails until it is writable again")
        free = disk.f_bavail * disk.f_frsize
        if free < MIN_FREE_BYTES:
            raise RetryableStoreError(f"LanceDB directory {self.directory} has {free} bytes of disk space "
                                      "left: writes fail (no space left on device) until space is freed")

    # -- upkeep ------------------------------------------------------------------------------------

    def compact(self, keep_versions: timedelta | None = None) -> CompactionResult:
        """Merge data files, bring the id index up to date and drop versions older than keep_versions.

        keep_versions (default: the store's) must outlast any read another process may be in the
        middle of: that read's files are among those dropped. Zero is for tests and for offline use.
        """
        keep = self.keep_versions if keep_versions is None else keep_versions
        started = time.monotonic()
        with self._write_lock:
            table = self._open_table()
            fragments_before = self._fragments()
            versions_before = self._call("compact", lambda: len(table.list_versions()))

            def optimize() -> None:
                if keep:
                    table.optimize(cleanup_older_than=keep)
                    return
                with warnings.catch_warnings():
                    # LanceDB warns that zero drops versions concurrent readers may use; the
                    # docstring above carries that warning to whoever passes zero.
                    warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
                    table.optimize(cleanup_older_than=keep)

            self._commit("compact", optimize)
            if not self._has_id_index:
                self._build_id_index()
            self._commits_since_compaction = 0
            self._rows_since_indexing = 0
            return CompactionResult(fragments_before, self._fragments(), versions_before,
                                    self._call("compact", lambda: len(table.list_versions())),
                                    time.monotonic() - started)

    def close(self) -> None:
        """Release the table. The store refuses every later call."""
        with self._write_lock:
            self._closed = True
            self._table = None

    def _after_write(self, rows_written: int) -> None:
        """Keep the table quick to read: refresh the id index or compact when due (lock held)."""
        self._commits_since_compaction += 1
        self._rows_since_indexing += rows_written
        try:
            if self.compact_every and self._commits_since_compaction >= self.compact_every:
                # Counted from this attempt, so a failing compaction is retried after another
                # compact_every commits rather than after every write.
                self._commits_since_compaction = 0
                log.info("LanceDB table %s compacted: %s", self.table_name, self.compact())
                return
            if self._has_id_index:
                if self._rows_since_indexing < INDEX_REFRESH_MIN_ROWS:
                    return
                if self._rows_since_indexing < INDEX_REFRESH_FACTOR * math.sqrt(self._count()):
                    return
            elif self._count() < ID_INDEX_MIN_ROWS:
                return
            self._build_id_index()
        except StoreError as exc:
            # The write itself is committed; upkeep is tried again after later writes.
            log.warning("upkeep of LanceDB table %s failed, reads may slow down: %s",
                        self.table_name, exc)

    def _build_id_index(self) -> None:
        """(Re)build the BTREE index on id over every row, when the table is big enough to gain."""
        table = self._open_table()
        if self._count() < ID_INDEX_MIN_ROWS:
            return
        self._rows_since_indexing = 0  # if the build fails, it is tried again after as many rows
        self._commit("index", lambda: table.create_index("id", config=BTree(), name=ID_INDEX,
                                                         replace=True))
        self._has_id_index = True

    def _find_id_index(self) -> bool:
        indices = self._call("open", lambda: self._open_table().list_indices())
        return any(index.name == ID_INDEX for index in indices)

    def _fragments(self) -> int:
        return int(self._call("stats", lambda: self._open_table().stats())["fragment_stats"]
                   ["num_fragments"])

    # -- plumbing ----------------------------------------------------------------------------------

    def _open(self) -> Any:
        def connect() -> Any:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Zero: every read looks for the newest version, so writes from the other
            # process (web or worker) are seen at once.
            db = lancedb.connect(str(self.directory), read_consistency_interval=timedelta(0))
            try:
                return db.open_table(self.table_name)
            except ValueError as exc:
                if "not found" not in str(exc):
                    raise
            # exist_ok: another process may create the table between the attempt and here.
            return db.create_table(self.table_name, schema=self._schema, exist_ok=True)

        table = self._call("open", connect)
        self._check_schema(table.schema)
        if PRIMARY_KEY_MARK not in (table.schema.field("id").metadata or {}):
            self._commit("open", lambda: _set_primary_key(table))
        return table

    def _check_schema(self, actual: pa.Schema) -> None:
        vector = actual.field("vector").type if "vector" in actual.names else None
        if set(actual.names) != set(self._schema.names) or vector is None or \
                not pa.types.is_fixed_size_list(vector):
            raise PermanentStoreError(
                f"table {self.table_name!r} in {self.directory} was not made by this store "
                f"(columns {actual.names})")
        if vector.list_size != self.dimension:
            raise PermanentStoreError(
                f"table {self.table_name!r} in {self.directory} holds vectors of dimension "
                f"{vector.list_size}, but this store expects {self.dimension}")

    def _open_table(self) -> Any:
        table = self._table
        if table is None or self._closed:
            raise PermanentStoreError(f"the LanceDB store for table {self.table_name!r} is closed")
        return table

    def _count(self) -> int:
        return int(self._call("count", lambda: self._open_table().count_rows()))

    def _rows(self, ids: list[str], matrix: np.ndarray, texts: list[str], revs: np.ndarray) -> pa.Table:
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()),
                                                    type=self._vector_type)
        return pa.Table.from_arrays(
            [pa.array(ids, pa.string()), vectors, pa.array(texts, pa.string()),
             pa.array(revs, pa.int64())],
            schema=self._schema)

    def _read_rows(self, ids: list[str], columns: list[str]) -> dict[str, dict[str, Any]]:
        """Rows by id, in `IN` lists of at most MAX_IDS_PER_REQUEST; vectors as float32 arrays.

        Rows read with both vector and rev are remembered for `update_metadata`.
        """
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids, MAX_IDS_PER_REQUEST):
            where = _id_in(chunk)
            rows = self._call("fetch", lambda where=where: self._open_table().search().where(where)
                              .select(columns).limit(None).to_arrow())
            data: dict[str, Any] = {name: rows[name].to_pylist() for name in columns if name != "vector"}
            if "vector" in columns:
                data["vector"] = _vectors(rows)
                if "rev" in columns:
                    self._recent.remember(data["id"], data["vector"], data["rev"])
            for i, vector_id in enumerate(data["id"]):
                found[vector_id] = {name: values[i] for name, values in data.items()}
        return found

    def _commit(self, action: str, operation: Callable[[], T]) -> T:
        """Run a LanceDB write, retrying a commit another writer won (with jittered backoff)."""
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                return operation()
            except _LANCE_ERRORS as exc:
                if attempt < COMMIT_ATTEMPTS and _is_conflict(exc):
                    time.sleep(random.uniform(0, 0.02 * 2**attempt))
                    continue
                raise self._store_error(action, exc) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _call(self, action: str, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except _LANCE_ERRORS as exc:
            raise self._store_error(action, exc) from exc

    def _store_error(self, action: str, exc: BaseException) -> StoreError:
        where = f"LanceDB {action} on table {self.table_name!r} in {self.directory}"
        # A path that cannot be used stays unusable until someone fixes the configuration.
        if isinstance(exc, (PermissionError, NotADirectoryError, IsADirectoryError)):
            return PermanentStoreError(f"{where}: {exc}")
        text = str(exc).lower()
        if isinstance(exc, OSError) or any(marker in text for marker in _TRANSIENT_MARKERS):
            return RetryableStoreError(f"{where} failed, may succeed later: {exc}")
        return PermanentStoreError(f"{where} failed: {exc}")


class _RecentRows:
    """A bounded, thread-safe memory of (vector, rev) by id, most recently seen kept."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._rows: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, ids: Sequence[str], vectors: np.ndarray, revs: Sequence[int]) -> None:
        keep = slice(max(len(ids) - self.capacity, 0), None)  # the rest would be evicted at once
        with self._lock:
            for vector_id, vector, rev in zip(ids[keep], vectors[keep], revs[keep], strict=True):
                self._rows[vector_id] = (vector, int(rev))
                self._rows.move_to_end(vector_id)
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)

    def recall(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {vector_id: {"id": vector_id, "vector": row[0], "rev": row[1]}
                    for vector_id in ids if (row := self._rows.get(vector_id)) is not None}

    def forget(self, ids: Iterable[str]) -> None:
        with self._lock:
            for vector_id in ids:
                self._rows.pop(vector_id, None)


def sql_prefilter(filter: Metadata) -> str | None:
    """A LanceDB condition that every record matching the (valid) `filter` meets, or None.

    It may let through records the filter refuses (the filter itself runs afterwards, in
    Python, and decides); it must never hold back one the filter accepts. It looks in the
    metadata JSON for the text a match must contain: the field's key, and for string or boolean
    equality the value as JSON writes it. That text is exact because the column is written by
    `encode_metadata` (compact separators, ensure_ascii=False), as `_json_token` writes tokens.
    """
    return _prefilter_condition(filter) if filter else None


def _prefilter_condition(condition: Metadata) -> str | None:
    parts: list[str] = []
    for key, value in condition.items():
        if key == "$and":
            parts += [part for part in map(_prefilter_condition, value) if part]
        elif key == "$or":
            alternatives = [_prefilter_condition(sub) for sub in value]
            # One alternative that cannot be narrowed means any record may match.
            if all(alternatives):
                parts.append("(" + " OR ".join(f"({part})" for part in alternatives) + ")")
        elif (part := _prefilter_field(key, value)) is not None:
            parts.append(part)
    return " AND ".join(parts) if parts else None


def _prefilter_field(field: str, spec: Any) -> str | None:
    operators = spec if isinstance(spec, dict) else {"$eq": spec}
    if operators.get("$exists") is False:
        return None  # absence has no text to look for
    key = _json_token(field) + ":"
    # Every other operator needs the field present, so its key is in the JSON.
    parts = [_contains(key)]
    wanted = operators.get("$eq")
    if isinstance(wanted, bool):
        parts = [_contains(key + _json_token(wanted))]  # booleans are scalars, right after the key
    elif isinstance(wanted, str):
        parts.append(_contains(_json_token(wanted)))  # a scalar or an element of a list
    choices = operators.get("$in")
    if choices and len(choices) <= PREFILTER_MAX_IN and all(isinstance(c, str) for c in choices):
        parts.append("(" + " OR ".join(_contains(_json_token(c)) for c in choices) + ")")
    return " AND ".join(parts)


def _json_token(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _contains(text: str) -> str:
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return f"metadata LIKE {_sql_str(pattern)} ESCAPE '\\'"


def _set_primary_key(table: Any) -> None:
    # Without it, two writers inserting the same new id at once both succeed, leaving two rows.
    try:
        table.set_unenforced_primary_key(["id"])
    except ValueError as exc:
        if "already set" not in str(exc):  # another process set it first
            raise


def _is_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "conflict" in text or "retryable" in text


def _vectors(rows: pa.Table) -> np.ndarray:
    """The vector column as a float32 matrix, one row per vector."""
    column = rows["vector"].combine_chunks()
    width = column.type.list_size
    if len(column) == 0:
        return np.zeros((0, width), dtype=np.float32)
    # flatten() honours slicing, unlike .values; one conversion beats to_pylist row by row.
    return column.flatten().to_numpy().reshape(len(column), width)


def _possible_ids(ids: Iterable[str]) -> list[str]:
    """Distinct ids in order, leaving out those no store could hold: there is nothing to find."""
    return list(dict.fromkeys(vector_id for vector_id in ids if is_valid_vector_id(vector_id)))


def _is_possible_prefix(prefix: str) -> bool:
    return isinstance(prefix, str) and len(prefix) <= MAX_ID_LENGTH and prefix.isascii() and \
        prefix.isprintable()


def _prefix_end(prefix: str) -> str:
    """The least string above every string that starts with `prefix` (ids are ASCII)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _id_in(ids: Sequence[str]) -> str:
    return f"id IN ({', '.join(map(_sql_str, ids))})"


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
