"""Neo4j, the source of truth, behind the GraphStore protocol (see sync.stores.base).

The only module that talks to Neo4j. Every query is parameterised; labels and relationship types,
which Cypher cannot take as parameters, are checked with `sync.ids.is_label` before they are written
into a query. Work runs in managed transactions (`execute_read` / `execute_write`), which retry
transient errors (deadlocks, leader switches) for up to `max_transaction_retry_time`; what still
fails is raised as `RetryableStoreError` or `PermanentStoreError`.

Node model: `uid` (string, unique per label), `version` (+1 per change), `updated_at` (server
DATETIME, UTC, microsecond precision), `source`, `confidence`. A deleted entity leaves a
`_SyncTombstone {label, uid, version, updated_at}` whose version is the deleted node's + 1; a live
node re-created under the same key supersedes (deletes) its tombstone and continues its version,
so a key is always either live or tombstoned and versions never go backwards across a delete.
Tombstones are therefore kept after capture has read them: only once their delete is applied and
older than the retention (`old_tombstones` + `purge_tombstones`, from a scheduled task) do they go.

The driver is thread-safe and each call opens its own session, so one store serves many threads.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any, TypeVar

import neo4j.time
from django.utils import timezone
from neo4j import GraphDatabase, ManagedTransaction
from neo4j.exceptions import (
    AuthError,
    ClientError,
    DriverError,
    Forbidden,
    IncompleteCommit,
    Neo4jError,
    ServiceUnavailable,
    SessionExpired,
    TransientError,
)
from neo4j.spatial import Point

from sync import ids
from sync.stores.base import (
    Change,
    Entity,
    Metadata,
    PermanentStoreError,
    RetryableStoreError,
    StoreError,
    VersionConflict,
)
from sync.stores.neo4j_triggers import (
    NOW,
    TRIGGER_NAME,
    TRIGGER_STATEMENT,
    as_int,
    next_version,
    stamp_after,
)

log = logging.getLogger(__name__)

TOMBSTONE = "_SyncTombstone"
RESERVED_KEYS = frozenset({"uid", "version", "updated_at"})
BATCH_SIZE = 1000
_INT64 = (-(2**63), 2**63 - 1)
# Lower bound for "from the beginning": a typed datetime keeps the updated_at range index usable and
# ignores nodes whose updated_at is not a DATETIME (foreign junk that reconciliation must catch).
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
# The full-text index the entities list searches names in. Its analyzer lower-cases and splits
# words as Unicode's word rules say (never inside a run of ASCII letters and digits) and keeps
# stop words: what `find_by_name`'s narrowing relies on.
NAME_INDEX = "sync_names"
NAME_KEYS = ("name", "title")
NAME_ANALYZER = "standard-no-stop-words"
_NAME_CONTAINS = ("n.uid IS :: STRING AND (toLower(toString(n[$keys[0]])) CONTAINS $text "
                  "OR toLower(toString(n[$keys[1]])) CONTAINS $text)")

T = TypeVar("T")


# --- validation ------------------------------------------------------------------------------------

def check_label(label: str, what: str = "label") -> str:
    """The label itself if it is safe to write into Cypher; ValueError otherwise."""
    if not ids.is_label(label):
        raise ValueError(f"invalid {what} {label!r}: must match {ids.LABEL_RE.pattern}")
    return label


def check_uid(uid: str) -> str:
    if not isinstance(uid, str) or not uid:
        raise ValueError(f"invalid uid {uid!r}: must be a non-empty string")
    return uid


def _scalar_kind(value: Any) -> str | None:
    """Which Neo4j property type a Python value would be stored as (None: not storable)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "number" if _INT64[0] <= value <= _INT64[1] else None
    if isinstance(value, float):
        return "number"  # Neo4j stores [1, 2.5] as a float array, so ints and floats may mix
    if isinstance(value, str):
        return "str"
    if isinstance(value, bytes | bytearray):
        return "bytes"
    # Subclass order matters: datetime is a date.
    for kind in (datetime, date, dtime, timedelta, Point,
                 neo4j.time.DateTime, neo4j.time.Date, neo4j.time.Time, neo4j.time.Duration):
        if isinstance(value, kind):
            return kind.__name__
    return None


def check_properties(properties: Metadata, *, allow_reserved: bool = False) -> Metadata:
    """Refuse what Neo4j cannot store as a property (maps, nested or mixed lists, nulls in lists)."""
    if not isinstance(properties, dict):
        raise ValueError(f"properties must be a dict, not {type(properties).__name__}")
    for key, value in properties.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"invalid property key {key!r}")
        if not allow_reserved and key in RESERVED_KEYS:
            raise ValueError(f"property {key!r} is managed by the store and cannot be written")
        if value is None:
            continue  # merge semantics: None removes the property
        if isinstance(value, list | tuple):
            kinds = {_scalar_kind(item) if item is not None else None for item in value}
            if None in kinds or len(kinds) > 1:
                raise ValueError(
                    f"property {key!r}: a list must hold values of one Neo4j property type, no nulls, "
                    f"maps or lists"
                )
        elif _scalar_kind(value) is None:
            raise ValueError(f"property {key!r}: {type(value).__name__} is not a Neo4j property type")
    return properties


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    return limit


def _chunks(items: Sequence[T], size: int = BATCH_SIZE) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- conversion --------------------------------------------------------------------------------------

def to_python(value: Any) -> Any:
    """A property value from the driver as plain Python (temporal types as datetime/date/str)."""
    if isinstance(value, neo4j.time.DateTime | neo4j.time.Date):
        return value.to_native()
    if isinstance(value, neo4j.time.Time | neo4j.time.Duration):
        return value.iso_format()
    if isinstance(value, Point):
        return str(value)
    if isinstance(value, list):
        return [to_python(item) for item in value]
    return value


def _utc(value: Any) -> datetime | None:
    value = to_python(value)
    if not isinstance(value, datetime):
        return None
    # A LocalDateTime written by a foreign tool has no zone; the node model says UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# How the bulk reads return a node `n`: its properties, with a zoned DATETIME updated_at sent as
# [epoch seconds, nanosecond] instead (`stamp`): the driver's hydration of a zoned DATETIME costs
# about as much as all the rest of a node, and bulk reads (apply, reconciliation) read every one.
ENTITY_COLUMNS = (
    "CASE WHEN n.updated_at IS :: ZONED DATETIME NOT NULL THEN n {.*, updated_at: null} ELSE properties(n) END AS props, "
    "CASE WHEN n.updated_at IS :: ZONED DATETIME NOT NULL THEN [n.updated_at.epochSeconds, n.updated_at.nanosecond] "
    "END AS stamp"
)


def _from_stamp(stamp: Sequence[int] | None) -> datetime | None:
    if not stamp:
        return None
    seconds, nanosecond = stamp
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanosecond // 1000)


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _entity(label: str, properties: dict[str, Any], stamp: Sequence[int] | None = None) -> Entity | None:
    """An Entity from a node's properties (and its ENTITY_COLUMNS stamp); None if the node was
    deleted while we read it (read committed: a concurrent delete can leave a matched node
    without properties)."""
    if not isinstance(properties.get("uid"), str):
        return None
    # Most values are plain already: only the others go through to_python (bulk reads convert
    # every property of every node).
    props = {key: value if type(value) in _PLAIN else to_python(value) for key, value in properties.items()}
    updated_at = _from_stamp(stamp) or _utc(properties.get("updated_at"))
    if updated_at is not None:
        props["updated_at"] = updated_at
    version = props.get("version")
    return Entity(
        label=label, uid=props["uid"],
        version=_whole_version(version), updated_at=updated_at, properties=props,
    )


def _whole_version(value: Any) -> int:
    """A node's version as `_entity` reads it: an integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _written(label: str, properties: dict[str, Any]) -> Entity:
    """The entity a write of ours just produced (it holds the node's lock, so it cannot be gone)."""
    entity = _entity(label, properties)
    if entity is None:
        raise PermanentStoreError(f"{label}: the node written has no string uid: {properties!r}")
    return entity


def changes_cypher(labels: Sequence[str]) -> str:
    """The change-capture query for these (already checked) labels; parameters since, key, limit, labels
    and props (whether to return each live node's properties).

    One branch per label and one for the tombstones, each a range seek on its updated_at index with
    a partial sort (index order on updated_at, then key within a tie) cut at `limit`, so a page reads
    about (labels + 1) * limit nodes however large the graph. The merge and the tie-break happen in
    the same query, in Neo4j's own string order, so the cursor predicate and the ordering cannot
    disagree (Python's and Neo4j's orders of non-ASCII strings need not match).
    """
    branches = [
        f"""MATCH (n:`{label}`) WHERE n.updated_at >= $since AND n.uid IS :: STRING
    WITH n, '{label}:' + n.uid AS key
    WHERE n.updated_at > $since OR key > $key
    WITH n, key ORDER BY n.updated_at, key LIMIT $limit
    RETURN n.updated_at AS at, key, '{label}' AS label, n.uid AS uid, n.version AS version,
           CASE WHEN $props THEN properties(n) END AS props, false AS deleted"""
        for label in labels
    ]
    branches.append(
        f"""MATCH (t:{TOMBSTONE}) WHERE t.updated_at >= $since AND t.label IN $labels
    WITH t, t.label + ':' + t.uid AS key
    WHERE t.updated_at > $since OR key > $key
    WITH t, key ORDER BY t.updated_at, key LIMIT $limit
    RETURN t.updated_at AS at, key, t.label AS label, t.uid AS uid, t.version AS version,
           null AS props, true AS deleted"""
    )
    # The time goes back as [epoch seconds, nanosecond]: a page of plain integers reads several
    # times faster than one of DATETIMEs (the driver's temporal hydration was most of a poll). The
    # page is one record (collect keeps the order it is given), as in scan_label: the driver's
    # cost per record was most of re-reading a bulk write in the overlap window.
    return ("CALL () {\n  " + "\n  UNION ALL\n  ".join(branches) + "\n}\n"
            "WITH * ORDER BY at, key LIMIT $limit\n"
            "RETURN collect([[at.epochSeconds, at.nanosecond], label, uid, version, props, deleted]) AS rows")


# --- errors -----------------------------------------------------------------------------------------

# A deadlock or lock timeout inside an APOC trigger reaches us as Neo.ClientError.Transaction.
# TransactionHookFailed, which the driver does not retry although the underlying error is transient.
_TRIGGER_LOCK_ATTEMPTS = 4
_LOCK_MARKERS = ("DeadlockDetected", "can't acquire", "LockAcquisitionTimeout", "deadlock")


def _is_trigger_lock_failure(exc: BaseException | None) -> bool:
    return (isinstance(exc, ClientError) and exc.code == "Neo.ClientError.Transaction.TransactionHookFailed"
            and any(marker in (exc.message or "") for marker in _LOCK_MARKERS))


@contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """Translate driver errors into what the caller should do next: retry later, or give up."""
    try:
        yield
    except StoreError:
        raise
    except (AuthError, Forbidden) as exc:
        raise PermanentStoreError(f"Neo4j refused the credentials or permission: {exc.message}") from exc
    except IncompleteCommit as exc:
        # The commit may or may not have happened: read the entity back before repeating a write
        # that has no expected_version (or an import), which is not idempotent.
        raise RetryableStoreError(f"Neo4j connection lost during commit (outcome unknown): {exc}") from exc
    except (ServiceUnavailable, SessionExpired, OSError) as exc:
        raise RetryableStoreError(f"Neo4j at {uri} is unreachable: {exc}") from exc
    except Neo4jError as exc:
        if isinstance(exc, TransientError) or exc.is_retryable() or _is_trigger_lock_failure(exc):
            raise RetryableStoreError(f"Neo4j transient error {exc.code}: {exc.message}") from exc
        kind = "rejected the request" if isinstance(exc, ClientError) else "failed"
        raise PermanentStoreError(f"Neo4j {kind} ({exc.code}): {exc.message}") from exc
    except DriverError as exc:
        if exc.is_retryable():
            raise RetryableStoreError(f"Neo4j driver error: {exc}") from exc
        raise PermanentStoreError(f"Neo4j driver error: {exc}") from exc


def _close_quietly(tx, session) -> None:
    """Close a transaction (rolling it back when still open) and a session, whatever state the
    connection is in: a failure here is the server's to clean up (it rolls back a transaction
    whose connection went away), never a reason to hide the error that brought us here."""
    for closing in (tx, session):
        if closing is None:
            continue
        try:
            closing.close()
        except Exception as exc:  # noqa: BLE001 — see above
            log.warning("could not close a Neo4j %s cleanly: %s", type(closing).__name__, exc)


# --- the store --------------------------------------------------------------------------------------

class Neo4jGraphStore:
    def __init__(self, uri: str, user: str, password: str, database: str = "neo4j", *,
                 trigger_name: str = TRIGGER_NAME, retry_time: float = 15.0):
        """`retry_time`: how long a managed transaction keeps retrying transient errors before the
        store raises RetryableStoreError; `trigger_name` lets tests install a trigger of their own."""
        self.uri = uri
        self.database = database
        self.trigger_name = trigger_name
        self.driver = GraphDatabase.driver(
            uri, auth=(user, password), connection_timeout=min(5.0, retry_time),
            max_transaction_retry_time=retry_time,
        )
        self._clock: tuple[float, float] | None = None  # (monotonic time measured, offset seconds)

    def close(self) -> None:
        self.driver.close()

    # -- plumbing --

    def _read(self, work: Callable[..., T], *args: Any, database: str | None = None) -> T:
        with _store_errors(self.uri), self.driver.session(database=database or self.database) as session:
            return session.execute_read(work, *args)

    def _write(self, work: Callable[..., T], *args: Any, database: str | None = None) -> T:
        for attempt in range(1, _TRIGGER_LOCK_ATTEMPTS + 1):
            try:
                with (_store_errors(self.uri),
                      self.driver.session(database=database or self.database) as session):
                    return session.execute_write(work, *args)
            except RetryableStoreError as exc:
                if attempt == _TRIGGER_LOCK_ATTEMPTS or not _is_trigger_lock_failure(exc.__cause__):
                    raise
                time.sleep(random.uniform(0.05, 0.2) * attempt)
        raise AssertionError("unreachable")

    def _query(self, cypher: str, database: str | None = None, write: bool = False,
               **params: Any) -> list[dict[str, Any]]:
        def work(tx: ManagedTransaction) -> list[dict[str, Any]]:
            return [record.data() for record in tx.run(cypher, params)]
        return (self._write if write else self._read)(work, database=database)

    # -- health and clock --

    def ping(self) -> str:
        row = self._query("CALL dbms.components() YIELD name, versions, edition "
                          "RETURN versions[0] AS version, edition")[0]
        return f"Neo4j {row['version']} {row['edition']}"

    def server_time(self) -> datetime:
        """The database clock, which stamps updated_at: measure lag and cursor overlap against it."""
        now = _utc(self._query("RETURN datetime() AS now")[0]["now"])
        if now is None:
            raise PermanentStoreError("Neo4j returned no datetime for datetime()")
        return now

    def clock_offset(self, max_age: float = 60.0) -> float:
        """Seconds to add to this machine's clock to read Neo4j's (which stamps updated_at).

        Measured against the midpoint of a `datetime()` round trip and kept for `max_age` seconds,
        so lag is measured on one clock even when this host's clock is off. This machine's clock
        is read as the engine reads it everywhere else, through `django.utils.timezone.now`: the
        offset is added to that clock's readings, so it is measured against the same one.
        """
        measured = self._clock
        if measured is None or time.monotonic() - measured[0] > max_age:
            before = timezone.now()
            server = self.server_time()
            after = timezone.now()
            offset = (server - (before + (after - before) / 2)).total_seconds()
            self._clock = measured = (time.monotonic(), offset)
        return measured[1]

    # -- schema --

    def ensure_schema(self, labels: Iterable[str]) -> None:
        """Uniqueness on uid and a range index on updated_at per label, the tombstones' key and
        index, and the full-text name index (`NAME_INDEX`) over the labels. Idempotent."""
        labels = sorted({check_label(label) for label in labels})
        statements = [
            f"CREATE CONSTRAINT sync_tombstone_key IF NOT EXISTS FOR (t:{TOMBSTONE}) "
            "REQUIRE (t.label, t.uid) IS UNIQUE",
            f"CREATE INDEX sync_tombstone_updated_at IF NOT EXISTS FOR (t:{TOMBSTONE}) ON (t.updated_at)",
        ]
        for label in labels:
            statements.append(f"CREATE CONSTRAINT sync_{label}_uid IF NOT EXISTS "
                              f"FOR (n:`{label}`) REQUIRE n.uid IS UNIQUE")
            statements.append(f"CREATE INDEX sync_{label}_updated_at IF NOT EXISTS "
                              f"FOR (n:`{label}`) ON (n.updated_at)")
        statements += self._name_index_statements(labels)
        # Schema changes cannot share a transaction with each other or with data.
        for statement in statements:
            self._query(statement, write=True)
        # New indexes populate in the background; queries planned before they are online would scan.
        self._query("CALL db.awaitIndexes(300)")

    def _name_index_statements(self, labels: Sequence[str]) -> list[str]:
        """The name index grows to cover every label asked for (one full-text index can name many
        labels, but not gain one in place: it is dropped and created again with the union)."""
        covered = self._name_index_labels()
        if covered is not None and set(labels) <= covered:
            return []
        union = sorted(set(labels) | (covered or set()))
        return ([f"DROP INDEX {NAME_INDEX} IF EXISTS"] if covered is not None else []) + [
            f"CREATE FULLTEXT INDEX {NAME_INDEX} IF NOT EXISTS "
            f"FOR (n:{'|'.join(f'`{label}`' for label in union)}) "
            f"ON EACH [{', '.join(f'n.`{key}`' for key in NAME_KEYS)}] "
            f"OPTIONS {{indexConfig: {{`fulltext.analyzer`: '{NAME_ANALYZER}'}}}}"]

    def _name_index_labels(self, online: bool = False) -> set[str] | None:
        """The labels the name index covers (None when there is none, or it is not online yet
        and `online` is asked)."""
        rows = self._query("SHOW FULLTEXT INDEXES YIELD name, labelsOrTypes, properties, state "
                           "WHERE name = $name RETURN labelsOrTypes, properties, state", name=NAME_INDEX)
        if not rows or rows[0]["properties"] != list(NAME_KEYS) or (online and rows[0]["state"] != "ONLINE"):
            return None
        return set(rows[0]["labelsOrTypes"])

    # -- reads --

    def get_entities(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Entity]:
        by_label: dict[str, set[str]] = defaultdict(set)
        for label, uid in keys:
            by_label[check_label(label)].add(check_uid(uid))

        def work(tx: ManagedTransaction) -> dict[tuple[str, str], Entity]:
            found: dict[tuple[str, str], Entity] = {}
            for label, uids in by_label.items():
                for chunk in _chunks(sorted(uids)):
                    # One record holding the chunk's rows, as in scan_label: the driver's cost is
                    # per record, and a worker reads every entity of its batch here.
                    rows = tx.run(f"UNWIND $uids AS uid MATCH (n:`{label}` {{uid: uid}}) "
                                  f"WITH {ENTITY_COLUMNS} RETURN collect([props, stamp]) AS rows",
                                  uids=list(chunk)).single(strict=True)["rows"]
                    for props, stamp in rows:
                        if entity := _entity(label, props, stamp):
                            found[entity.key] = entity
            return found

        return self._read(work) if by_label else {}


    def scan_label(self, label: str, after_uid: str | None, limit: int) -> list[Entity]:
        """Entities of one label in uid order, after `after_uid` (seeks the uid constraint's index)."""
        check_label(label)
        # The first page is `>= ''` rather than IS NOT NULL: the same ordered range seek, and it
        # leaves out non-string uids, which a string cursor could not page past anyway.
        operator = ">=" if after_uid is None else ">"
        # One record holding the page (collect keeps the order of the rows it is given): the
        # driver's cost per record, not Neo4j's, was most of a full reconciliation's graph reading.
        cypher = (f"MATCH (n:`{label}`) WHERE n.uid {operator} $after WITH n ORDER BY n.uid LIMIT $limit "
                  f"WITH {ENTITY_COLUMNS} RETURN collect([props, stamp]) AS rows")
        after = "" if after_uid is None else check_uid(after_uid)

        def work(tx: ManagedTransaction) -> list[Entity]:
            rows = tx.run(cypher, after=after, limit=_check_limit(limit)).single(strict=True)["rows"]
            return [entity for props, stamp in rows if (entity := _entity(label, props, stamp))]

        return self._read(work)

    def neighbours(self, label: str, uid: str, limit: int = 50) -> list[Metadata]:
        """The nodes one relationship away from (label, uid), for the entity page: relationship
        type, direction, and the other node's label, uid and name (or title, or CVE id), with
        the property it came from (`name_key`: the page shows it only where the policy lets it).
        Nodes without a string uid (no identity to link to) are left out; at most `limit`, by
        type then uid."""
        check_label(label)
        cypher = (f"MATCH (n:`{label}` {{uid: $uid}})-[r]-(m) WHERE m.uid IS :: STRING "
                  "WITH r, n, m, [key IN $keys WHERE m[key] IS NOT NULL][0] AS name_key "
                  "RETURN type(r) AS type, startNode(r) = n AS outgoing, labels(m) AS labels, m.uid AS uid, "
                  "m[name_key] AS name, name_key "
                  "ORDER BY type, uid LIMIT $limit")
        # Keys as parameters: a key no node has yet (m.cve_id in a graph without KEVs) would make
        # Neo4j log an "unknown property key" notification on every call.
        rows = self._query(cypher, uid=check_uid(uid), limit=_check_limit(limit), keys=["name", "title", "cve_id"])
        return [{"type": row["type"], "outgoing": row["outgoing"], "uid": row["uid"],
                 "label": next((name for name in sorted(row["labels"]) if name != TOMBSTONE), ""),
                 "name": row["name"] if isinstance(row["name"], str) else None,
                 "name_key": row["name_key"]} for row in rows]

    def find_by_name(self, labels: Sequence[str], text: str, limit: int = 50) -> list[tuple[str, str]]:
        """(label, uid) of nodes of `labels` whose name or title contains `text` (any case), for
        the entities list's search box: at most `limit`, per label in `labels` order, uid order within.

        Served by the full-text name index where it can be: the index narrows the nodes to those
        holding every letter-and-digit run of the text inside one word (Lucene's wildcard
        `*run*`), and the containment itself is then checked on those alone, as the scan checks
        it on every node. A text with no such run, or with characters outside ASCII (the
        tokenizer splits some scripts letter by letter), and a graph whose index is missing or
        still being built, are scanned. What the index cannot see: a name or title that is not a
        string (a number), and a word longer than 255 characters.
        """
        needle = text.lower()
        _check_limit(limit)
        labels = [check_label(label) for label in labels]
        runs = re.findall(r"[a-z0-9]+", needle) if needle.isascii() else []
        covered = self._name_index_labels(online=True) if runs else None
        if covered is None or not set(labels) <= covered:
            return self._scan_names(labels, needle, limit)
        rows = self._query(
            "CALL db.index.fulltext.queryNodes($index, $words) YIELD node AS n "
            f"WITH n WHERE {_NAME_CONTAINS} "
            "UNWIND [i IN range(0, size($labels) - 1) WHERE $labels[i] IN labels(n)] AS position "
            "RETURN $labels[position] AS label, n.uid AS uid ORDER BY position, uid LIMIT $limit",
            index=NAME_INDEX, words=" AND ".join(f"*{run}*" for run in runs), text=needle,
            keys=list(NAME_KEYS), labels=labels, limit=limit)
        return [(row["label"], row["uid"]) for row in rows]

    def _scan_names(self, labels: Sequence[str], needle: str, limit: int) -> list[tuple[str, str]]:
        """`find_by_name` by reading every node of the labels (`needle` lower-cased)."""
        found: list[tuple[str, str]] = []
        # Only labels the graph has: a query on an unknown label makes Neo4j log a notification.
        present = {row["label"] for row in self._query("CALL db.labels() YIELD label RETURN label")}
        for label in labels:
            if label not in present:
                continue
            rows = self._query(f"MATCH (n:`{label}`) WHERE {_NAME_CONTAINS} RETURN n.uid AS uid ORDER BY uid LIMIT $limit",
                               text=needle, limit=limit - len(found), keys=list(NAME_KEYS))
            found += [(label, row["uid"]) for row in rows]
            if len(found) >= limit:
                break
        return found

    def count_label(self, label: str) -> int:
        # A bare label count is answered from the count store, without touching nodes.
        return self._query(f"MATCH (n:`{check_label(label)}`) RETURN count(n) AS n")[0]["n"]

    # -- change capture --

    def changes_since(self, labels: Sequence[str], after: tuple[datetime, str] | None,
                      limit: int, *, entities: bool = True) -> list[Change]:
        """Live entities and tombstones of `labels` strictly after the cursor, in (updated_at, key) order.

        The cursor is the `(updated_at, key)` of the last change read, key = "Label:uid" (see
        `changes_cypher` for how a page is read). Nodes whose updated_at is not a DATETIME or whose
        uid is not a string are invisible here; reconciliation finds them. A transaction that commits
        after a later-stamped one was read is missed unless the caller re-reads an overlap window.
        `entities=False` leaves `Change.entity` out (key, version and time only): change capture
        needs no more, and reading every property of every change in the overlap window was half
        of what a poll cost.
        """
        labels = sorted({check_label(label) for label in labels})
        _check_limit(limit)
        if not labels:
            return []
        if after is None:
            since, after_key = _EPOCH, ""
        else:
            since, after_key = after
            if not isinstance(since, datetime) or since.tzinfo is None:
                # A naive datetime reaches Neo4j as a LocalDateTime, which never compares with a
                # DATETIME: every page would silently come back empty.
                raise ValueError(f"cursor time must be a timezone-aware datetime, not {since!r}")
            if not isinstance(after_key, str):
                raise ValueError(f"cursor key must be a string, not {after_key!r}")
        cypher = changes_cypher(labels)
        [page] = self._query(cypher, since=since, key=after_key, limit=limit, labels=labels, props=entities)
        changes = []
        for stamp, label, uid, version, props, deleted in page["rows"]:
            updated_at = _from_stamp(stamp)
            if deleted:
                changes.append(Change(label=label, uid=uid, version=version or 0, updated_at=updated_at, deleted=True))
            elif not entities:
                if isinstance(uid, str):  # else deleted while we read it (read committed)
                    changes.append(Change(label=label, uid=uid, version=_whole_version(version), updated_at=updated_at))
            elif entity := _entity(label, props):
                changes.append(Change(label=entity.label, uid=entity.uid, version=entity.version,
                                      updated_at=updated_at, entity=entity))
        return changes

    def old_tombstones(self, labels: Sequence[str], before: datetime, limit: int) -> list[Change]:
        """Tombstones of `labels` stamped before `before`, oldest first: candidates for purging."""
        labels = sorted({check_label(label) for label in labels})
        _check_limit(limit)
        rows = self._query(
            f"MATCH (t:{TOMBSTONE}) WHERE t.updated_at < $before AND t.label IN $labels "
            "RETURN t.label AS label, t.uid AS uid, t.version AS version, t.updated_at AS at "
            "ORDER BY t.updated_at LIMIT $limit", before=before, labels=labels, limit=limit)
        return [Change(label=row["label"], uid=row["uid"], version=row["version"] or 0,
                       updated_at=_utc(row["at"]), deleted=True)
                for row in rows if isinstance(row["uid"], str)]

    def tombstones(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Change]:
        """The tombstones of these keys (a deleted entity's last change), one seek of the tombstone
        constraint each."""
        rows = sorted({(check_label(label), check_uid(uid)) for label, uid in keys})

        def work(tx: ManagedTransaction) -> dict[tuple[str, str], Change]:
            found: dict[tuple[str, str], Change] = {}
            for chunk in _chunks(rows):
                result = tx.run(
                    f"UNWIND $rows AS row MATCH (t:{TOMBSTONE} {{label: row[0], uid: row[1]}}) "
                    "RETURN t.label AS label, t.uid AS uid, t.version AS version, t.updated_at AS at",
                    rows=[list(row) for row in chunk])
                for row in result:
                    found[(row["label"], row["uid"])] = Change(label=row["label"], uid=row["uid"],
                                                               version=row["version"] or 0,
                                                               updated_at=_utc(row["at"]), deleted=True)
            return found

        return self._read(work) if rows else {}

    def purge_tombstones(self, changes: Iterable[Change]) -> int:
        """Delete the tombstones behind these delete changes, once their deletes are applied.

        Only a tombstone still at or below the change's version goes: if the key was re-created and
        deleted again meanwhile, the newer tombstone stays for capture to read. Live changes are
        ignored. Returns the number of tombstones deleted.
        """
        rows = [{"label": check_label(c.label), "uid": check_uid(c.uid), "version": c.version}
                for c in changes if c.deleted]

        def work(tx: ManagedTransaction) -> int:
            purged = 0
            for chunk in _chunks(rows):
                record = tx.run(
                    f"UNWIND $rows AS row MATCH (t:{TOMBSTONE} {{label: row.label, uid: row.uid}}) "
                    "WHERE t.version <= row.version DELETE t RETURN count(t) AS purged",
                    rows=list(chunk),
                ).single(strict=True)
                purged += record["purged"]
            return purged

        return self._write(work) if rows else 0

    # -- writes --

    @staticmethod
    def _lock(tx: ManagedTransaction, label: str, uid: str, *, create: bool) -> tuple[Entity | None, bool]:
        """Take the node's write lock, then read it: (current state or None, whether it was created).

        Reading first and writing later would let two writers both see version N: Neo4j reads
        committed data without locking. A SET, even of an unchanged value, takes the exclusive lock
        (and leaves no trace in the transaction, so triggers ignore it); what is read after it is the
        last committed state. MATCH comes first because MERGE on an existing node takes a shared lock
        that the SET must then upgrade, and two writers upgrading deadlock each other.
        """
        record = tx.run(f"MATCH (n:`{label}` {{uid: $uid}}) SET n.uid = n.uid RETURN properties(n) AS props",
                        uid=uid).single()
        # A node deleted while we waited for its lock comes back without properties: it is gone.
        if record is not None and (current := _entity(label, record["props"])) is not None:
            return current, False
        if not create:
            return None, False
        result = tx.run(f"MERGE (n:`{label}` {{uid: $uid}}) SET n.uid = n.uid RETURN properties(n) AS props",
                        uid=uid)
        record = result.single(strict=True)
        if result.consume().counters.nodes_created:
            return None, True
        # Created by someone else between our MATCH and MERGE.
        current = _entity(label, record["props"])
        if current is None:
            raise RetryableStoreError(f"{label}:{uid} was created and deleted concurrently; try again")
        return current, False

    @staticmethod
    def _check_version(label: str, uid: str, current: Entity | None, expected: int | None) -> None:
        if expected is None:
            return
        actual = current.version if current is not None else None
        if (expected == 0 and current is not None) or (expected != 0 and actual != expected):
            raise VersionConflict(label, uid, expected, actual)

    @staticmethod
    def _write_props(label: str, uid: str, properties: Metadata, expected_version: int | None,
                     source: str | None, confidence: float | None) -> Metadata:
        """The properties a write sets (source and confidence included), checked; ValueError otherwise."""
        check_label(label)
        check_uid(uid)
        check_properties(properties)
        if expected_version is not None and (not isinstance(expected_version, int)
                                             or isinstance(expected_version, bool) or expected_version < 0):
            raise ValueError(f"expected_version must be None or an integer >= 0, not {expected_version!r}")
        extra = {"source": source, "confidence": confidence}
        extra = {key: value for key, value in extra.items() if value is not None}
        check_properties(extra)
        return {**properties, **extra}

    @classmethod
    def _write_locked(cls, tx: ManagedTransaction, label: str, uid: str, props: Metadata,
                      expected_version: int | None) -> tuple[Entity | None, Entity]:
        previous, _ = cls._lock(tx, label, uid, create=True)
        cls._check_version(label, uid, previous, expected_version)
        record = tx.run(
            f"""MATCH (n:`{label}` {{uid: $uid}})
            OPTIONAL MATCH (t:{TOMBSTONE} {{label: $label, uid: $uid}})
            WITH n, t, {NOW} AS now
            SET n += $props,
                n.version = {next_version("n.version", "t.version")},
                n.updated_at = {stamp_after("coalesce(n.updated_at, t.updated_at)")}
            DELETE t
            RETURN properties(n) AS props""",
            uid=uid, label=label, props=props,
        ).single(strict=True)
        return previous, _written(label, record["props"])

    def write_entity(self, label: str, uid: str, properties: Metadata, *,
                     expected_version: int | None = None, source: str | None = None,
                     confidence: float | None = None) -> tuple[Entity | None, Entity]:
        """Set `properties` on (label, uid) in one transaction; returns (previous state, new state).

        Merge semantics: given keys are set, a key given as None is removed, other keys stay.
        `expected_version`: None = no check, 0 = must not exist yet, N = must be at version N;
        otherwise VersionConflict (carrying the actual version) and nothing is written.
        """
        props = self._write_props(label, uid, properties, expected_version, source, confidence)
        return self._write(lambda tx: self._write_locked(tx, label, uid, props, expected_version))

    @contextmanager
    def prepared_write(self, label: str, uid: str, properties: Metadata, *,
                       expected_version: int | None = None, source: str | None = None,
                       confidence: float | None = None) -> Iterator[tuple[Entity | None, Entity]]:
        """`write_entity`'s write in a transaction held open while the caller's block runs (the
        two-phase write mode's prepare): yields (previous state, new state) with the node written
        and locked but visible to nobody else; the write commits when the block ends normally, and
        an exception in the block rolls it back and goes on.

        Unlike `write_entity`, nothing is retried (the caller's work inside could not be): a
        deadlock or a lost connection is a RetryableStoreError, and so is a commit whose outcome
        is unknown (read the node back). Keep the block short: the node stays locked meanwhile.
        """
        props = self._write_props(label, uid, properties, expected_version, source, confidence)
        session = self.driver.session(database=self.database)
        tx = None
        try:
            with _store_errors(self.uri):
                tx = session.begin_transaction()
                written = self._write_locked(tx, label, uid, props, expected_version)
        except BaseException:
            _close_quietly(tx, session)
            raise
        try:
            yield written
        except BaseException:
            _close_quietly(tx, session)  # closing an open transaction rolls it back
            raise
        try:
            with _store_errors(self.uri):
                tx.commit()
        finally:
            _close_quietly(None, session)

    def write_entities(self, label: str, rows: Sequence[tuple[str, Metadata, int | None]], *,
                       source: str | None = None,
                       confidence: float | None = None) -> list[tuple[Entity | None, Entity] | VersionConflict]:
        """Many `write_entity` writes of one label in one transaction: rows are (uid, properties,
        expected_version). Each row is guarded on its own: one whose node is not at its expected
        version is not written and comes back as its VersionConflict, while the others commit
        together; the rest come back as (previous state, new state), in the order given.

        The nodes are locked in uid order (two batches over the same nodes wait for each other
        instead of deadlocking). A node that another writer created between our read and our
        write fails the whole batch with its VersionConflict, nothing written: write those rows
        one by one (`write_entity`) instead. A repeated uid is a ValueError.
        """
        check_label(label)
        prepared: dict[str, tuple[Metadata, int | None]] = {}
        for uid, properties, expected_version in rows:
            if uid in prepared:
                raise ValueError(f"{label}:{uid} is written twice in one batch")
            prepared[uid] = (self._write_props(label, uid, properties, expected_version, source, confidence),
                             expected_version)
        if not prepared:
            return []
        uids = sorted(prepared)

        def work(tx: ManagedTransaction) -> dict[str, tuple[Entity | None, Entity] | VersionConflict]:
            # Lock and read what exists (a SET takes the write lock; see _lock), then create the rest.
            current: dict[str, Entity] = {}
            for record in tx.run(f"UNWIND $uids AS uid MATCH (n:`{label}` {{uid: uid}}) SET n.uid = n.uid "
                                 "RETURN uid, properties(n) AS props", uids=uids):
                if (entity := _entity(label, record["props"])) is not None:
                    current[record["uid"]] = entity
            results: dict[str, tuple[Entity | None, Entity] | VersionConflict] = {}
            for uid in uids:
                try:
                    self._check_version(label, uid, current.get(uid), prepared[uid][1])
                except VersionConflict as conflict:
                    results[uid] = conflict
            writing = [uid for uid in uids if uid not in results]
            missing = [uid for uid in writing if uid not in current]
            if missing:
                for record in tx.run(f"UNWIND $uids AS uid MERGE (n:`{label}` {{uid: uid}}) SET n.uid = n.uid "
                                     "RETURN uid, keys(n) AS keys, n.version AS version", uids=missing):
                    if record["keys"] != ["uid"]:  # another writer created it after our read
                        raise VersionConflict(label, record["uid"], prepared[record["uid"]][1],
                                              record["version"] if isinstance(record["version"], int) else None)
            if writing:
                written = tx.run(
                    f"""UNWIND $rows AS row
                    MATCH (n:`{label}` {{uid: row.uid}})
                    OPTIONAL MATCH (t:{TOMBSTONE} {{label: $label, uid: row.uid}})
                    WITH n, row, t, {NOW} AS now
                    SET n += row.props,
                        n.version = {next_version("n.version", "t.version")},
                        n.updated_at = {stamp_after("coalesce(n.updated_at, t.updated_at)")}
                    DELETE t
                    RETURN row.uid AS uid, properties(n) AS props""",
                    label=label, rows=[{"uid": uid, "props": prepared[uid][0]} for uid in writing])
                for record in written:
                    results[record["uid"]] = (current.get(record["uid"]), _written(label, record["props"]))
            return results

        done = self._write(work)
        return [done[uid] for uid, _, _ in rows]

    def restore_entity(self, previous: Entity | None, *, label: str, uid: str,
                       expected_version: int) -> Entity | None:
        """Saga compensation: undo a write of ours that is still the node's latest change.

        Only if the node is still at `expected_version` (the version our write produced; else
        VersionConflict): put back exactly `previous`'s properties, dropping any added since, as
        version `expected_version + 1` stamped now. Versions never go backwards: had the failed
        vector write landed after all, the restored state is newer than it and replaces it through
        the normal path, where the version guard would otherwise keep the undone content.
        `previous=None` means our write created the node: delete it, leaving a tombstone.
        """
        check_label(label)
        check_uid(uid)
        props: Metadata = {}
        if previous is not None:
            if previous.key != (label, uid):
                raise ValueError(f"cannot restore {previous.label}:{previous.uid} onto {label}:{uid}")
            props = {key: value for key, value in previous.properties.items() if key != "updated_at"}
            check_properties(props, allow_reserved=True)
            props.update(uid=uid, version=expected_version + 1)

        def work(tx: ManagedTransaction) -> Entity | None:
            current, _ = self._lock(tx, label, uid, create=False)
            if current is None or current.version != expected_version:
                raise VersionConflict(label, uid, expected_version, current.version if current else None)
            if previous is None:
                self._delete_locked(tx, label, uid)
                return None
            # The stamp is computed before `SET n = $props` wipes the old updated_at it must exceed.
            record = tx.run(
                f"""MATCH (n:`{label}` {{uid: $uid}})
                WITH n, {NOW} AS now
                WITH n, {stamp_after("n.updated_at")} AS stamp
                SET n = $props, n.updated_at = stamp
                RETURN properties(n) AS props""",
                uid=uid, props=props,
            ).single(strict=True)
            return _written(label, record["props"])

        return self._write(work)

    @staticmethod
    def _delete_locked(tx: ManagedTransaction, label: str, uid: str) -> None:
        # MERGE, because the APOC trigger records the same tombstone when it sees the delete; it
        # keeps ours since the versions agree. The tombstone's stamp must pass the node's last one,
        # or capture, already past (updated_at, key) of the live row, would skip the delete.
        tx.run(
            f"""MATCH (n:`{label}` {{uid: $uid}})
            WITH n, {NOW} AS now
            MERGE (t:{TOMBSTONE} {{label: $label, uid: $uid}})
            SET t.version = {as_int("n.version")} + 1,
                t.updated_at = {stamp_after("n.updated_at")}
            DETACH DELETE n""",
            uid=uid, label=label,
        ).consume()

    def delete_entity(self, label: str, uid: str, *, expected_version: int | None = None) -> Entity | None:
        """DETACH DELETE (label, uid) and record its tombstone in the same transaction.

        Returns the deleted state, or None when there was nothing to delete (and no version expected).
        """
        check_label(label)
        check_uid(uid)

        def work(tx: ManagedTransaction) -> Entity | None:
            current, _ = self._lock(tx, label, uid, create=False)
            self._check_version(label, uid, current, expected_version)
            if current is not None:
                self._delete_locked(tx, label, uid)
            return current

        return self._write(work)

    # -- bulk import (demo data, importers) --

    def import_entities(self, label: str, rows: Sequence[Metadata], source: str) -> int:
        """Upsert rows (each a dict with `uid` plus properties) by uid, ~1000 per transaction.

        Merge semantics as in write_entity (a None value removes the property); every row counts as
        a change (version + 1, updated_at now). Returns the rows written. Batches commit one by one:
        a failure leaves earlier batches written, and re-running the import converges.
        """
        check_label(label)
        if not isinstance(source, str) or not source:
            raise ValueError("source must be a non-empty string")
        prepared = []
        for row in rows:
            props = dict(row)
            uid = check_uid(props.pop("uid", None))
            check_properties(props)
            prepared.append({"uid": uid, "props": props})
        cypher = f"""UNWIND $rows AS row
            MERGE (n:`{label}` {{uid: row.uid}})
            WITH n, row
            OPTIONAL MATCH (t:{TOMBSTONE} {{label: $label, uid: row.uid}})
            WITH n, row, t, {NOW} AS now
            SET n += row.props, n.source = $source,
                n.version = {next_version("n.version", "t.version")},
                n.updated_at = {stamp_after("coalesce(n.updated_at, t.updated_at)")}
            DELETE t
            RETURN count(*) AS written"""
        written = 0
        for chunk in _chunks(prepared):
            written += self._query(cypher, write=True, rows=list(chunk), label=label, source=source)[0]["written"]
        return written

    def import_relationships(self, rel_type: str,
                             rows: Sequence[tuple[str, str, str, str, Metadata]]) -> int:
        """MERGE (from)-[:rel_type]->(to) with properties set; rows are (from_label, from_uid,
        to_label, to_uid, props). Returns the relationships written; a row whose end node does not
        exist is not written and is counted in a warning."""
        check_label(rel_type, "relationship type")
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for from_label, from_uid, to_label, to_uid, props in rows:
            groups[(check_label(from_label), check_label(to_label))].append({
                "from": check_uid(from_uid), "to": check_uid(to_uid),
                "props": check_properties(dict(props or {}), allow_reserved=True),
            })
        written = 0
        for (from_label, to_label), group in groups.items():
            cypher = f"""UNWIND $rows AS row
                MATCH (a:`{from_label}` {{uid: row.from}})
                MATCH (b:`{to_label}` {{uid: row.to}})
                MERGE (a)-[r:`{rel_type}`]->(b)
                SET r += row.props
                RETURN count(r) AS written"""
            for chunk in _chunks(group):
                written += self._query(cypher, write=True, rows=list(chunk))[0]["written"]
        missing = len(rows) - written
        if missing:
            log.warning("import_relationships(%s): %d of %d rows skipped, an end node does not exist",
                        rel_type, missing, len(rows))
        return written

    # -- APOC triggers --

    def apoc_available(self) -> bool:
        rows = self._query("SHOW PROCEDURES YIELD name WHERE name = 'apoc.trigger.install' "
                           "RETURN count(*) AS n")
        return rows[0]["n"] > 0

    def install_triggers(self, labels: Iterable[str]) -> bool:
        """Install (or replace) the trigger that stamps foreign writes and records foreign deletes.

        Stored in the `system` database; the database picks it up on its next trigger refresh
        (`apoc.trigger.refresh`, ~1 s in our apoc.conf, 60 s by default): see `wait_for_triggers`.
        Returns False, with a warning, when APOC or its triggers are unavailable — then writes by
        other tools must set version/updated_at themselves and their deletes are found only by
        reconciliation, as orphans.
        """
        labels = sorted({check_label(label) for label in labels})
        if not self.apoc_available():
            log.warning("APOC is not installed in Neo4j at %s: writes by other tools will not be "
                        "stamped and their deletes will only be found by reconciliation", self.uri)
            return False
        try:
            self._query(
                "CALL apoc.trigger.install($db, $name, $statement, {phase: 'before'}, "
                "{params: {labels: $labels}}) YIELD name RETURN name",
                database="system", write=True,
                db=self.database, name=self.trigger_name, statement=TRIGGER_STATEMENT, labels=labels,
            )
        except PermanentStoreError as exc:
            log.warning("APOC triggers could not be installed in Neo4j at %s (%s): writes by other "
                        "tools will not be stamped and their deletes will only be found by "
                        "reconciliation; is apoc.trigger.enabled=true in apoc.conf?", self.uri, exc)
            return False
        return True

    def remove_triggers(self) -> bool:
        """Drop our trigger (effective after the next refresh); True if there was one to drop."""
        if not self.apoc_available():
            return False
        rows = self._query("CALL apoc.trigger.drop($db, $name) YIELD name RETURN name",
                           database="system", write=True, db=self.database, name=self.trigger_name)
        return bool(rows)

    def wait_for_triggers(self, timeout: float = 10.0) -> bool:
        """Wait until the database runs the trigger the system database stores (or none, if dropped).

        `apoc.trigger.show` reads what is stored; `apoc.trigger.list` what the database has loaded.
        Returns False if they still disagree after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            # The system database takes no WHERE after YIELD: filter here.
            stored = [row["query"] for row in self._query(
                "CALL apoc.trigger.show($db) YIELD name, query RETURN name, query",
                database="system", db=self.database) if row["name"] == self.trigger_name]
            loaded = [row["query"] for row in self._query(
                "CALL apoc.trigger.list() YIELD name, query, paused "
                "WHERE name = $name AND NOT paused RETURN query", name=self.trigger_name)]
            if stored == loaded:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
