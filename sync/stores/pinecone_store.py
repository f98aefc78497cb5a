"""Pinecone as the engine's vector store, through the real `pinecone` SDK (10.x, REST data plane).

The index is always addressed by its host (`pinecone.Index(host=..., api_key=...)`): resolving a
name would cost a control-plane call whose answer shape changes between API versions.

Time is bounded twice. `timeout` bounds one HTTP attempt; the SDK then retries 408/429/5xx and
connection errors by itself (4 attempts, jittered backoff, Retry-After honoured up to 60 s, none
of it configurable for the REST data plane). `operation_timeout` bounds a whole store call: SDK
calls run on a small thread pool and are abandoned when the deadline passes, so a worker is never
held longer than that (and a second at most for a TCP connect to the host, which tells an
unreachable host from a slow one in the error). An abandoned call may still finish in the background; for writes that is
harmless because upserts are idempotent by id, and the engine's version guard and reconciliation
judge what is stored.

Failure mapping: 401/403 -> PermanentStoreError (the key is never printed); 429 ->
RetryableStoreError carrying Retry-After; 5xx, timeouts, connection errors -> RetryableStoreError;
other 4xx -> PermanentStoreError with Pinecone's message. Inside an upsert a refused request is
halved and resent to find the records Pinecone objects to, and a transiently failed request fails
only its own ids (marked in `WriteResult.retryable`), so one bad record or one bad request never
sinks the batch.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import orjson
from pinecone import Index
from pinecone.errors import (
    ApiError,
    ForbiddenError,
    PineconeConnectionError,
    PineconeError,
    PineconeTimeoutError,
    PineconeTypeError,
    PineconeValueError,
    RateLimitError,
    ResponseParsingError,
    UnauthorizedError,
)

from sync.stores import filters
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
from sync.stores.metadata import (
    MAX_ID_LENGTH,
    MAX_IDS_PER_REQUEST,
    MAX_TOP_K,
    MAX_UPSERT_BYTES,
    MAX_UPSERT_VECTORS,
    check_record,
    decode_metadata,
    is_valid_vector_id,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
WireItem = tuple[dict[str, Any], int]  # a record as the SDK sends it, and its encoded size

# Whether Pinecone's "2 MB" means 2,000,000 bytes or 2 MiB is not documented; pack below both.
UPSERT_BYTE_BUDGET = min(MAX_UPSERT_BYTES, 2_000_000)
# Fetch ids travel in the query string. Ids may be 512 characters, so 1,000 of them would make a
# URL far beyond what proxies accept (64 KiB is a common ceiling); stay well under that.
FETCH_QUERY_BUDGET = 32 * 1024
LIST_PAGE_SIZE = 100  # Pinecone's largest page for /vectors/list
# Halvings allowed per upsert call while isolating records Pinecone refuses: enough to single out
# a few bad records among 1,000, bounded when a refusal turns out to concern every record.
MAX_SPLITS = 64
# The SDK has already retried each request; this many transient failures in a row mean the
# service, not one request, is failing, so the rest of an upsert is not sent.
MAX_CONSECUTIVE_TRANSIENT = 2
# describe_index_stats calls the namespace that requests without one address "__default__"
# (older API versions said "").
DEFAULT_NAMESPACE_NAMES = ("__default__", "")


class RequestRefused(PermanentStoreError):
    """Pinecone (or the SDK, before sending) refused a request for what it contains (4xx)."""


class PineconeVectorStore:
    """One namespace of one Pinecone index (dense, cosine), addressed by its host."""

    name = "pinecone"

    def __init__(self, api_key: str, host: str, namespace: str = "", dimension: int = 384,
                 timeout: float = 10.0, operation_timeout: float = 60.0, max_workers: int = 4):
        if not api_key:
            raise PermanentStoreError("no Pinecone API key configured (PINECONE_API_KEY)")
        if not (timeout > 0 and operation_timeout > 0):
            raise ValueError("timeout and operation_timeout must be positive numbers of seconds")
        self.host = host
        self.namespace = namespace
        self.dimension = dimension
        self.timeout = timeout
        self.operation_timeout = operation_timeout
        try:
            # The data-plane client alone: `Pinecone(api_key).Index(host=...)` builds the same
            # thing plus a control-plane client this store never uses.
            self._index = Index(host=host, api_key=api_key, timeout=timeout)
        except PineconeError as exc:
            # The SDK's messages about a malformed key never quote it; ours must not either.
            raise PermanentStoreError(f"cannot use Pinecone index host {host!r}: {exc}") from None
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="pinecone-store")

    def __repr__(self) -> str:
        return f"PineconeVectorStore(host={self.host!r}, namespace={self.namespace!r})"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._index.close()

    # -- writes ------------------------------------------------------------------------------------

    def upsert(self, records: Sequence[VectorRecord]) -> WriteResult:
        """Write records in requests of <=1000 vectors and <=2 MB; per-record problems are `failed`.

        Raises RetryableStoreError only when Pinecone failed transiently and nothing was written,
        and PermanentStoreError when the API key is refused.
        """
        return self._upsert(records, self._deadline())

    def update_metadata(self, metadata: dict[str, Metadata]) -> WriteResult:
        """Replace the whole metadata of existing vectors, keeping their values.

        Pinecone's own update merges metadata and costs one request per id, so this fetches the
        vectors in batches and upserts them back whole. Ids not found are `failed`, and retryable:
        Pinecone's reads are eventually consistent, so a vector written moments ago may not be
        visible yet. Pinecone has no conditional write, so an upsert of the same id by another
        writer between the fetch and the write-back is overwritten with the values read before
        it; the queue hands an entity to one worker at a time, and reconciliation's version check
        finds the rare stale vector this leaves.
        """
        deadline = self._deadline()
        result = WriteResult()
        current = self._fetch(metadata, deadline)
        records: list[VectorRecord] = []
        for vector_id, new_metadata in metadata.items():
            existing = current.get(vector_id)
            if existing is not None:
                records.append(VectorRecord(vector_id, existing.values, new_metadata))
            elif is_valid_vector_id(vector_id):
                result.failed[vector_id] = "no such vector in Pinecone (not visible yet, or deleted)"
                result.retryable.add(vector_id)
            else:
                result.failed[vector_id] = f"not a Pinecone vector id: {vector_id!r}"
        return result.merge(self._upsert(records, deadline)) if records else result

    def delete(self, ids: Iterable[str]) -> int:
        """Delete vectors by id; returns how many of them existed.

        Pinecone's delete answers `{}` whatever it removed, so the count comes from a fetch made
        first. Every requested id is deleted regardless, since a vector written moments ago may
        not be visible to that fetch yet.
        """
        wanted = _possible_ids(ids)
        if not wanted:
            return 0
        deadline = self._deadline()
        existing = len(self._fetch(wanted, deadline))
        for chunk in _chunks(wanted, MAX_IDS_PER_REQUEST):
            self._call("delete", deadline, self._index.delete, ids=chunk, namespace=self.namespace)
        return existing

    # -- reads -------------------------------------------------------------------------------------

    def fetch(self, ids: Iterable[str]) -> dict[str, VectorRecord]:
        return self._fetch(ids, self._deadline())

    def fetch_metadata(self, ids: Iterable[str]) -> dict[str, Metadata]:
        """Pinecone's fetch always sends the values too; they are dropped as each page arrives."""
        return {vector_id: decode_metadata(vector.metadata)
                for vector_id, vector in self._fetched(ids, self._deadline())}

    def list_ids(self, prefix: str = "") -> Iterator[str]:
        """Every id starting with `prefix`, in bytewise order, one /vectors/list page at a time."""
        if not _is_possible_prefix(prefix):
            return
        token: str | None = None
        while True:
            page = self._call("list", self._deadline(), self._index.list_paginated,
                              prefix=prefix or None, limit=LIST_PAGE_SIZE, pagination_token=token,
                              namespace=self.namespace)
            for item in page.vectors:
                if item.id is not None:
                    yield item.id
            token = page.pagination.next if page.pagination is not None else None
            if not token:
                return

    def query(self, vector: Sequence[float], top_k: int = 10, filter: Metadata | None = None,
              include_values: bool = False) -> list[QueryMatch]:
        """Nearest neighbours by cosine; a bad filter or vector raises ValueError before any request."""
        if filter:
            filters.validate_filter(filter)
        probe = [float(v) for v in vector]
        if len(probe) != self.dimension or not all(math.isfinite(v) for v in probe):
            raise ValueError(f"a query vector must be {self.dimension} finite numbers")
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        answer = self._call("query", self._deadline(), self._index.query, vector=probe, top_k=top_k,
                            filter=filter or None, include_values=include_values,
                            include_metadata=True, namespace=self.namespace)
        return [QueryMatch(match.id, float(match.score), decode_metadata(match.metadata),
                           list(match.values) if include_values else None)
                for match in answer.matches]

    def stats(self) -> IndexStats:
        """From describe_index_stats: `total` counts this store's namespace, `namespaces` all."""
        answer = self._call("describe_index_stats", self._deadline(), self._index.describe_index_stats)
        namespaces = {name: summary.vector_count for name, summary in answer.namespaces.items()}
        names = (self.namespace,) if self.namespace else DEFAULT_NAMESPACE_NAMES
        total = next((namespaces[name] for name in names if name in namespaces), 0)
        return IndexStats(dimension=answer.dimension or 0, total=total, namespaces=namespaces)

    def ping(self) -> str:
        stats = self.stats()
        if stats.dimension and stats.dimension != self.dimension:
            raise PermanentStoreError(f"the Pinecone index at {self.host} has dimension "
                                      f"{stats.dimension}, but the embeddings have {self.dimension}")
        where = f", namespace {self.namespace!r}" if self.namespace else ""
        return f"Pinecone index at {self.host}{where}, {stats.total} vectors, dim {stats.dimension}"

    # -- plumbing ----------------------------------------------------------------------------------

    def _deadline(self) -> float:
        return time.monotonic() + self.operation_timeout

    def _call(self, action: str, deadline: float, method: Callable[..., T], **kwargs: Any) -> T:
        """Run one SDK call under the operation deadline, mapping its failures to StoreErrors."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RetryableStoreError(f"Pinecone {action} not sent: the {self.operation_timeout:g} s "
                                      "operation deadline had passed")
        future = self._pool.submit(method, timeout=self.timeout, **kwargs)
        try:
            return future.result(timeout=remaining)
        except PineconeError as exc:  # before TimeoutError: PineconeTimeoutError is one too
            raise self._store_error(exc, action) from exc
        except TimeoutError:
            future.cancel()
            # The SDK retries a refused connection with jittered backoff that can itself run past
            # the deadline (up to 0.75 + 2.25 + 6.75 s): say which failure it was, if it was that.
            unreachable = self._unreachable()
            if unreachable:
                raise RetryableStoreError(
                    f"cannot reach Pinecone at {self.host} for {action}: {unreachable} (the SDK's "
                    f"retries ran past the {self.operation_timeout:g} s operation deadline)") from None
            raise RetryableStoreError(
                f"Pinecone {action} at {self.host} did not finish within the "
                f"{self.operation_timeout:g} s operation deadline ({self.timeout:g} s per attempt, "
                "with the SDK's retries)") from None

    def _unreachable(self) -> str | None:
        """Why a TCP connection to the index host fails (refused, no such host, no answer within
        a second), or None when it opens: the host is there and the call was only slow."""
        address = urlsplit(self.host if "://" in self.host else f"https://{self.host}")
        try:
            port = address.port or (80 if address.scheme == "http" else 443)
            with socket.create_connection((address.hostname or "", port), timeout=min(self.timeout, 1.0)):
                return None
        except (OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _store_error(self, exc: PineconeError, action: str) -> StoreError:
        if isinstance(exc, (UnauthorizedError, ForbiddenError)):
            return PermanentStoreError(f"Pinecone rejected the API key (HTTP {exc.status_code}) for "
                                       f"{action} at {self.host}; check PINECONE_API_KEY")
        if isinstance(exc, RateLimitError):
            return RetryableStoreError(f"Pinecone rate-limited {action} (HTTP 429) through the "
                                       f"SDK's retries: {exc.message}", retry_after=exc.retry_after)
        if isinstance(exc, ApiError):
            status = exc.status_code
            if status >= 500 or status in (408, 425):
                return RetryableStoreError(f"Pinecone answered HTTP {status} to {action} on every "
                                           f"attempt the SDK made: {exc.message}")
            return RequestRefused(f"Pinecone refused {action} (HTTP {status}): {exc.message}")
        if isinstance(exc, PineconeTimeoutError):
            return RetryableStoreError(f"Pinecone {action} at {self.host} timed out on every "
                                       f"attempt ({self.timeout:g} s each): {exc}")
        if isinstance(exc, PineconeConnectionError):
            return RetryableStoreError(f"cannot reach Pinecone at {self.host} for {action}: {exc}")
        if isinstance(exc, (PineconeValueError, PineconeTypeError)):
            return RequestRefused(f"the pinecone SDK refused {action} before sending it: {exc}")
        if isinstance(exc, ResponseParsingError):
            return PermanentStoreError(f"unreadable answer from Pinecone at {self.host} to "
                                       f"{action}: {exc}")
        return RetryableStoreError(f"Pinecone {action} failed: {exc}")

    def _fetch(self, ids: Iterable[str], deadline: float) -> dict[str, VectorRecord]:
        return {vector_id: VectorRecord(vector_id, list(vector.values), decode_metadata(vector.metadata))
                for vector_id, vector in self._fetched(ids, deadline)}

    def _fetched(self, ids: Iterable[str], deadline: float) -> Iterator[tuple[str, Any]]:
        """(id, SDK vector) for the stored records among `ids`, one fetch request per page."""
        for chunk in _chunks(_possible_ids(ids), MAX_IDS_PER_REQUEST, FETCH_QUERY_BUDGET,
                             size=lambda vector_id: len(quote(vector_id, safe="")) + len("&ids=")):
            answer = self._call("fetch", deadline, self._index.fetch, ids=chunk,
                                namespace=self.namespace)
            yield from answer.vectors.items()

    def _wire(self, record: VectorRecord) -> WireItem:
        """A checked record as the SDK will send it, sized with orjson, which the SDK encodes with."""
        checked = check_record(record, self.dimension)
        item: dict[str, Any] = {"id": checked.id, "values": checked.values}
        if checked.metadata:
            item["metadata"] = checked.metadata
        return item, len(orjson.dumps(item))

    def _upsert(self, records: Sequence[VectorRecord], deadline: float) -> WriteResult:
        result = WriteResult()
        envelope = {"vectors": [], "namespace": self.namespace} if self.namespace else {"vectors": []}
        budget = UPSERT_BYTE_BUDGET - len(orjson.dumps(envelope))
        items: dict[str, WireItem] = {}  # a repeated id: the last record wins, as in Pinecone
        for record in records:
            try:
                item = self._wire(record)
                if item[1] > budget:
                    raise ValueError(f"the record encodes to {item[1]} bytes, more than one upsert "
                                     f"request may carry ({budget})")
            except ValueError as exc:
                result.failed[str(record.id)] = str(exc)
                items.pop(str(record.id), None)
                continue
            result.failed.pop(record.id, None)
            items[record.id] = item
        if items:
            # +1 per item: the comma between array elements.
            pieces = deque(_chunks(list(items.values()), MAX_UPSERT_VECTORS, budget,
                                   size=lambda item: item[1] + 1))
            self._send_upserts(pieces, result, deadline)
        return result

    def _send_upserts(self, pieces: deque[list[WireItem]], result: WriteResult,
                      deadline: float) -> None:
        splits_left = MAX_SPLITS
        consecutive_transient = 0
        last_transient: RetryableStoreError | None = None
        stop: str | None = None
        while pieces:
            piece = pieces.popleft()
            ids = [item["id"] for item, _ in piece]
            if stop is not None:
                _fail(result, ids, f"not sent: {stop}", retryable=True)
                continue
            try:
                answer = self._call("upsert", deadline, self._index.upsert,
                                    vectors=[item for item, _ in piece], namespace=self.namespace)
            except RequestRefused as exc:
                # Pinecone refuses a request as a whole without saying which record it objects
                # to; halving finds the record and lets the others through.
                if len(piece) > 1 and splits_left > 0:
                    splits_left -= 1
                    middle = len(piece) // 2
                    pieces.extendleft([piece[middle:], piece[:middle]])
                else:
                    _fail(result, ids, str(exc), retryable=False)
                continue
            except RetryableStoreError as exc:
                _fail(result, ids, str(exc), retryable=True)
                last_transient = exc
                consecutive_transient += 1
                if exc.retry_after is not None:
                    stop = f"Pinecone asked to back off ({exc.retry_after:g} s) on an earlier request"
                elif consecutive_transient >= MAX_CONSECUTIVE_TRANSIENT:
                    stop = f"{consecutive_transient} requests in a row failed, the last with: {exc}"
                continue
            consecutive_transient = 0
            if answer.upserted_count == len(piece):
                result.written += len(piece)
            else:
                # A short count does not say which records landed; upserts are idempotent, so
                # all of them are retried.
                _fail(result, ids, f"Pinecone acknowledged {answer.upserted_count} of "
                                   f"{len(piece)} vectors in this request", retryable=True)
        if result.written == 0 and last_transient is not None:
            raise RetryableStoreError(f"nothing was written to Pinecone: {last_transient}",
                                      retry_after=last_transient.retry_after)
        if result.failed:
            log.warning("Pinecone upsert: %d written, %d failed (%d of them retryable)",
                        result.written, len(result.failed), len(result.retryable))


def _fail(result: WriteResult, ids: Iterable[str], error: str, *, retryable: bool) -> None:
    for vector_id in ids:
        result.failed[vector_id] = error
        if retryable:
            result.retryable.add(vector_id)


def _possible_ids(ids: Iterable[str]) -> list[str]:
    """Distinct ids, in order, leaving out those Pinecone could not hold: there is nothing to find."""
    return list(dict.fromkeys(vector_id for vector_id in ids if is_valid_vector_id(vector_id)))


def _is_possible_prefix(prefix: str) -> bool:
    return len(prefix) <= MAX_ID_LENGTH and prefix.isascii() and prefix.isprintable()


def _chunks(items: Sequence[T], max_count: int, max_size: int | None = None,
            size: Callable[[T], int] | None = None) -> Iterator[list[T]]:
    """Consecutive runs of at most `max_count` items whose `size`s add up to at most `max_size`."""
    chunk: list[T] = []
    total = 0
    for item in items:
        item_size = size(item) if size is not None else 0
        if chunk and (len(chunk) >= max_count or (max_size is not None and total + item_size > max_size)):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += item_size
    if chunk:
        yield chunk
