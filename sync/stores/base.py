"""The seams between the sync engine and the outside: what a vector store and a graph store offer.

Every call to Neo4j or to a vector store goes through one of these, so tests and fault injection
have a single place to stand. Errors are split by what the caller should do next:
`RetryableStoreError` (try again later: rate limits, 5xx, timeouts, connection loss) and
`PermanentStoreError` (retrying cannot help: auth, bad request). A failure that concerns one
record of a batch is reported in the batch result, never raised for the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Metadata = dict[str, Any]


class StoreError(Exception):
    """A store could not do what was asked."""

    retryable = False


class RetryableStoreError(StoreError):
    """Transient: rate limited, server error, timeout or unreachable. Retry with backoff."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentStoreError(StoreError):
    """Retrying the same request cannot succeed (bad credentials, malformed request, ...)."""


class VersionConflict(StoreError):
    """An optimistic write found a different version than the one expected."""

    def __init__(self, label: str, uid: str, expected: int | None, actual: int | None):
        super().__init__(f"{label}:{uid} is at version {actual}, expected {expected}")
        self.label, self.uid, self.expected, self.actual = label, uid, expected, actual


@dataclass(frozen=True)
class VectorRecord:
    id: str
    values: Sequence[float]
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class QueryMatch:
    id: str
    score: float
    metadata: Metadata = field(default_factory=dict)
    values: Sequence[float] | None = None


@dataclass
class WriteResult:
    """What a store says it did with a batch: counts plus the records it refused, with reasons."""

    written: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # vector id -> error
    # Of the failed ids, those whose request failed transiently (e.g. one 5xx sub-batch of a
    # multi-request upsert): worth retrying as-is. The others were refused for what they are.
    retryable: set[str] = field(default_factory=set)

    @property
    def has_errors(self) -> bool:
        return bool(self.failed)

    def merge(self, other: WriteResult) -> WriteResult:
        self.written += other.written
        self.failed.update(other.failed)
        self.retryable |= other.retryable
        return self


@dataclass(frozen=True)
class IndexStats:
    dimension: int
    total: int
    namespaces: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class VectorStore(Protocol):
    """A Pinecone-shaped vector index. Ids are ASCII, 1-512 chars; metadata is Pinecone-typed."""

    name: str
    dimension: int

    def upsert(self, records: Sequence[VectorRecord]) -> WriteResult: ...

    def update_metadata(self, metadata: dict[str, Metadata]) -> WriteResult:
        """Replace the whole metadata of existing vectors, keeping their values."""
        ...

    def fetch(self, ids: Iterable[str]) -> dict[str, VectorRecord]: ...

    def fetch_metadata(self, ids: Iterable[str]) -> dict[str, Metadata]:
        """The metadata of the stored records among `ids`, without their values (reconciliation
        reads every record of the index and never looks at a vector)."""
        ...

    def delete(self, ids: Iterable[str]) -> int: ...

    def list_ids(self, prefix: str = "") -> Iterator[str]: ...

    def query(self, vector: Sequence[float], top_k: int = 10, filter: Metadata | None = None,
              include_values: bool = False) -> list[QueryMatch]: ...

    def stats(self) -> IndexStats: ...

    def ping(self) -> str:
        """A one-line description of the store once it answers; raises StoreError otherwise."""
        ...


@dataclass(frozen=True)
class Entity:
    """One graph node the policy may cover, identified by (label, uid) — never by element id."""

    label: str
    uid: str
    version: int
    updated_at: Any  # timezone-aware datetime (UTC); Neo4j stores a DATETIME
    properties: Metadata = field(default_factory=dict)  # every property, uid/version included

    @property
    def key(self) -> tuple[str, str]:
        return (self.label, self.uid)


@dataclass(frozen=True)
class Change:
    """One row of change capture: a live entity (`entity` set) or a tombstone (`deleted`)."""

    label: str
    uid: str
    version: int
    updated_at: Any
    deleted: bool = False
    entity: Entity | None = None


class GraphStore(Protocol):
    """Neo4j, as the sync engine needs it (implemented in sync.stores.neo4j_graph)."""

    def ping(self) -> str: ...

    def close(self) -> None: ...

    def server_time(self) -> Any: ...

    def clock_offset(self, max_age: float = 60.0) -> float: ...

    def ensure_schema(self, labels: Iterable[str]) -> None: ...

    def get_entities(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Entity]: ...

    def changes_since(self, labels: Sequence[str], after: tuple[Any, str] | None,
                      limit: int, *, entities: bool = True) -> list[Change]: ...

    def old_tombstones(self, labels: Sequence[str], before: Any, limit: int) -> list[Change]: ...

    def tombstones(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Change]: ...

    def purge_tombstones(self, changes: Iterable[Change]) -> int: ...

    def scan_label(self, label: str, after_uid: str | None, limit: int) -> list[Entity]: ...

    def neighbours(self, label: str, uid: str, limit: int = 50) -> list[Metadata]: ...

    def find_by_name(self, labels: Sequence[str], text: str, limit: int = 50) -> list[tuple[str, str]]: ...

    def count_label(self, label: str) -> int: ...

    def write_entity(self, label: str, uid: str, properties: Metadata, *,
                     expected_version: int | None = None, source: str | None = None,
                     confidence: float | None = None) -> tuple[Entity | None, Entity]: ...

    def prepared_write(self, label: str, uid: str, properties: Metadata, *,
                       expected_version: int | None = None, source: str | None = None,
                       confidence: float | None = None) -> AbstractContextManager[tuple[Entity | None, Entity]]:
        """`write_entity` in a transaction held open for the caller's block: commits when the
        block ends normally, rolls back on an exception (the two-phase write mode's prepare)."""
        ...

    def write_entities(self, label: str, rows: Sequence[tuple[str, Metadata, int | None]], *,
                       source: str | None = None,
                       confidence: float | None = None) -> list[tuple[Entity | None, Entity] | VersionConflict]:
        """Many guarded writes of one label in one transaction; a row whose version check fails
        comes back as its VersionConflict, unwritten, and the others commit."""
        ...

    def restore_entity(self, previous: Entity | None, *, label: str, uid: str,
                       expected_version: int) -> Entity | None: ...

    def delete_entity(self, label: str, uid: str, *, expected_version: int | None = None) -> Entity | None: ...

    def import_entities(self, label: str, rows: list[Metadata], source: str) -> int: ...

    def import_relationships(self, rel_type: str, rows: list[tuple]) -> int: ...

    def apoc_available(self) -> bool: ...

    def install_triggers(self, labels: Iterable[str]) -> bool: ...

    def remove_triggers(self) -> bool: ...
