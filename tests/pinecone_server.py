"""A local stand-in for Pinecone's data plane, spoken to over real HTTP by the real `pinecone` SDK.

It implements the REST routes the 10.x SDK uses against a dense, cosine index (camelCase JSON,
`Api-Key` auth, Pinecone's JSON error bodies with gRPC status codes) and enforces Pinecone's
documented operation limits server side, so an adapter bug that would be rejected by Pinecone is
rejected here too. It deliberately does not import the project's own metadata or filter modules:
it is the oracle those modules are tested against, so it carries its own reading of the rules.

Fault injection for tests: `fail_next` (answer the next N requests, optionally for one path, with
a status such as 429 + Retry-After, 500 or 503), `hang_next` (hold requests past the client's
timeout, then drop them unapplied), `fail_ids` (reject any write naming one of these ids, which
turns one request of a multi-request upsert into a failure). `stop()` and `start()` again: the
same port refuses connections meanwhile, and the stored vectors are kept (an outage). `requests`
is a log of what arrived.

    with PineconeTestServer(dimension=384) as server:
        index = Pinecone(api_key=server.api_key).Index(host=server.url)
"""

from __future__ import annotations

import base64
import json
import math
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson

DEFAULT_API_KEY = "pcsk_local_test_key_8f2c41d07b"

# Pinecone's documented operation limits.
MAX_UPSERT_VECTORS = 1000
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_IDS_PER_REQUEST = 1000
MAX_ID_LENGTH = 512
MAX_METADATA_BYTES = 40 * 1024
MAX_TOP_K = 10_000
MAX_LIST_LIMIT = 100
# How describe_index_stats names the namespace that requests without one address.
DEFAULT_NAMESPACE_NAME = "__default__"

# Pinecone's error bodies carry gRPC status codes, not HTTP ones.
GRPC_INVALID_ARGUMENT = 3
GRPC_NOT_FOUND = 5
GRPC_PERMISSION_DENIED = 7
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16

_GRPC_CODE_FOR_STATUS = {
    400: GRPC_INVALID_ARGUMENT, 401: GRPC_UNAUTHENTICATED, 403: GRPC_PERMISSION_DENIED,
    404: GRPC_NOT_FOUND, 405: GRPC_UNIMPLEMENTED, 413: GRPC_INVALID_ARGUMENT,
    429: GRPC_RESOURCE_EXHAUSTED, 500: GRPC_INTERNAL, 502: GRPC_UNAVAILABLE,
    503: GRPC_UNAVAILABLE, 504: GRPC_UNAVAILABLE,
}
_DEFAULT_FAULT_MESSAGES = {
    429: "Request failed. You've reached the max requests per second limit for this namespace.",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}

_COMPARISON_OPERATORS = {"$gt", "$gte", "$lt", "$lte"}
_FIELD_OPERATORS = {"$eq", "$ne", "$in", "$nin", "$exists"} | _COMPARISON_OPERATORS


@contextmanager
def running_pinecone_server(**options: Any) -> Iterator[PineconeTestServer]:
    """A started server (options as for PineconeTestServer), stopped and joined on exit.

    The SDK keeps a retry budget and an admission gate per host *name*, process-wide and
    ignoring the port. Every test server is 127.0.0.1, so without a reset one test's injected
    failures would quietly stop the SDK retrying in the next. Private SDK state, reset only here.
    """
    from pinecone._internal.bulk.registry import get_registry
    from pinecone._internal.http_client import get_budget_registry

    get_registry()._reset()
    get_budget_registry()._reset()
    try:
        with PineconeTestServer(**options) as server:
            yield server
    finally:
        get_registry()._reset()
        get_budget_registry()._reset()


@contextmanager
def pinecone_as_vector_store(**options: Any) -> Iterator[tuple[PineconeTestServer, Any]]:
    """A started server (options as for PineconeTestServer) installed as the process's vector
    store, spoken to by the real SDK (1 s an HTTP attempt, 8 s a store call); uninstalled, closed
    and stopped on exit."""
    from sync.stores import use_vector_store
    from sync.stores.pinecone_store import PineconeVectorStore

    with running_pinecone_server(**options) as server:
        store = PineconeVectorStore(api_key=DEFAULT_API_KEY, host=server.url, timeout=1.0, operation_timeout=8.0)
        use_vector_store(store)
        try:
            yield server, store
        finally:
            use_vector_store(None)
            store.close()


class PineconeApiError(Exception):
    """An answer the server gives instead of a result: HTTP status plus Pinecone's error body."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"code": _GRPC_CODE_FOR_STATUS.get(self.status, GRPC_INTERNAL),
                "message": self.message, "details": []}


def _bad_request(message: str) -> PineconeApiError:
    return PineconeApiError(400, message)


@dataclass(frozen=True)
class LoggedRequest:
    """One request as it arrived: enough to assert batching and retries without reading bodies."""

    method: str
    path: str
    status: int  # 0: the server held the request and dropped it (an injected hang)
    namespace: str | None
    ids: tuple[str, ...]  # vector ids the request carried (upsert vectors, fetch/delete ids)
    body_bytes: int
    api_version: str | None

    @property
    def vector_count(self) -> int:
        return len(self.ids)


@dataclass
class _Fault:
    remaining: int
    path: str | None
    status: int | None  # None: hang
    retry_after: float | None = None
    message: str | None = None
    hang_seconds: float = 0.0


@dataclass
class _IdFault:
    ids: frozenset[str]
    status: int
    retry_after: float | None
    message: str


@dataclass
class _Record:
    values: np.ndarray  # float32, as Pinecone stores dense values
    metadata: dict[str, Any] = field(default_factory=dict)


class PineconeTestServer:
    """Pinecone's data plane on 127.0.0.1 (random port), one dense cosine index, in a thread."""

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, dimension: int = 384):
        self.api_key = api_key
        self.dimension = dimension
        self._lock = threading.Lock()
        self._namespaces: dict[str, dict[str, _Record]] = {}
        self._faults: list[_Fault] = []
        self._id_faults: list[_IdFault] = []
        self._log: list[LoggedRequest] = []
        self._stopping = threading.Event()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._httpd: _Server | None = None
        self._last_port = 0  # a restarted server listens where it did before
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> PineconeTestServer:
        httpd = _Server(self, self._last_port)
        self._httpd = httpd
        self._last_port = httpd.server_address[1]
        self._stopping.clear()
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                         name=f"pinecone-test-server:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and join every thread the server started, handlers included."""
        if self._httpd is None:
            return
        self._stopping.set()  # releases handlers held by hang_next
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        # Keep-alive connections park their handler in a blocking read until the client hangs
        # up; shutting the sockets down is what ends those handlers now.
        give_up = time.monotonic() + 10
        while True:
            with self._lock:
                open_connections = dict(self._connections)
            if not open_connections or time.monotonic() > give_up:
                break
            for conn, handler in open_connections.items():
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the client closed it first
                handler.join(timeout=0.1)
        self._httpd = None

    def __enter__(self) -> PineconeTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The index host to hand to `Pinecone(...).Index(host=...)`."""
        return f"http://127.0.0.1:{self.port}"

    # -- fault injection ---------------------------------------------------------------------------

    def fail_next(self, status: int, *, times: int = 1, path: str | None = None,
                  retry_after: float | None = None, message: str | None = None) -> None:
        """Answer the next `times` requests (to `path` only, if given) with `status`."""
        with self._lock:
            self._faults.append(_Fault(times, path, status, retry_after, message))

    def hang_next(self, *, times: int = 1, path: str | None = None, seconds: float = 5.0) -> None:
        """Hold the next `times` requests for `seconds`, then drop the connection unanswered.

        The request is never applied, so a client that timed out can assert nothing landed.
        """
        with self._lock:
            self._faults.append(_Fault(times, path, None, hang_seconds=seconds))

    def fail_ids(self, ids: Iterable[str], *, status: int = 400, retry_after: float | None = None,
                 message: str | None = None) -> None:
        """Reject, as a whole, every upsert/update/delete request that names one of `ids`.

        Pinecone applies a write request all or nothing, so one poisoned id fails exactly the
        request that carries it and no other.
        """
        ids = frozenset(ids)
        text = message or f"Rejected vector ids {sorted(ids)[:3]} (injected fault)"
        with self._lock:
            self._id_faults.append(_IdFault(ids, status, retry_after, text))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._id_faults.clear()

    # -- inspection ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def requests_to(self, path: str) -> list[LoggedRequest]:
        return [r for r in self.requests if r.path == path]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def vector_ids(self, namespace: str = "") -> list[str]:
        with self._lock:
            return sorted(self._namespaces.get(namespace, {}))

    def stored(self, vector_id: str, namespace: str = "") -> dict[str, Any] | None:
        """A stored record as `{"values": [...], "metadata": {...}}`, or None."""
        with self._lock:
            record = self._namespaces.get(namespace, {}).get(vector_id)
            if record is None:
                return None
            return {"values": record.values.tolist(), "metadata": dict(record.metadata)}

    # -- request handling (called from handler threads) ----------------------------------------

    def _opened(self, conn: socket.socket, handler: threading.Thread) -> None:
        with self._lock:
            self._connections[conn] = handler

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.pop(conn, None)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.path in (None, path):
                    fault.remaining -= 1
                    return fault
            return None

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def _check_id_faults(self, ids: Iterable[str]) -> None:
        with self._lock:
            faults = list(self._id_faults)
        named = set(ids)
        for fault in faults:
            if fault.ids & named:
                raise PineconeApiError(fault.status, fault.message, fault.retry_after)

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               body: dict[str, Any]) -> dict[str, Any]:
        routes = {
            ("POST", "/vectors/upsert"): self._upsert,
            ("GET", "/vectors/fetch"): self._fetch,
            ("POST", "/query"): self._query,
            ("POST", "/vectors/delete"): self._delete,
            ("GET", "/vectors/list"): self._list,
            ("POST", "/vectors/update"): self._update,
            ("POST", "/describe_index_stats"): self._describe_index_stats,
        }
        route = routes.get((method, path))
        if route is None:
            if any(p == path for _, p in routes):
                raise PineconeApiError(405, f"Method {method} not allowed on {path}")
            raise PineconeApiError(404, f"Not found: {path}")
        return route(query, body)

    def _upsert(self, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise _bad_request("vectors must be a non-empty list")
        if len(vectors) > MAX_UPSERT_VECTORS:
            raise _bad_request(f"Batch size {len(vectors)} exceeds the maximum of "
                               f"{MAX_UPSERT_VECTORS} vectors per upsert request")
        namespace = _namespace(body)
        parsed: list[tuple[str, _Record]] = []
        for position, vector in enumerate(vectors):
            if not isinstance(vector, dict):
                raise _bad_request(f"vectors[{position}] must be an object")
            vector_id = _check_id(vector.get("id"), f"vectors[{position}].id")
            if "sparseValues" in vector:
                raise _bad_request("Sparse values are not supported by this dense cosine index")
            values = self._check_values(vector.get("values"), f"vector {vector_id!r}")
            if not np.any(values):
                raise _bad_request(f"Dense vector {vector_id!r} must contain at least one non-zero value")
            metadata = _check_metadata(vector.get("metadata"), vector_id)
            parsed.append((vector_id, _Record(values, metadata)))
        self._check_id_faults(vector_id for vector_id, _ in parsed)
        with self._lock:
            records = self._namespaces.setdefault(namespace, {})
            for vector_id, record in parsed:
                records[vector_id] = record
        return {"upsertedCount": len(parsed)}

    def _fetch(self, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        ids = query.get("ids", [])
        if not ids:
            raise _bad_request("ids must contain at least one id")
        if len(ids) > MAX_IDS_PER_REQUEST:
            raise _bad_request(f"Fetch accepts at most {MAX_IDS_PER_REQUEST} ids, got {len(ids)}")
        for position, vector_id in enumerate(ids):
            _check_id(vector_id, f"ids[{position}]")
        namespace = (query.get("namespace") or [""])[0]
        with self._lock:
            records = self._namespaces.get(namespace, {})
            found = {vector_id: _vector_json(vector_id, records[vector_id], True, True)
                     for vector_id in ids if vector_id in records}
        return {"vectors": found, "namespace": namespace, "usage": {"readUnits": 1}}

    def _query(self, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        top_k = body.get("topK")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise _bad_request(f"topK must be an integer between 1 and {MAX_TOP_K}, got {top_k!r}")
        if ("vector" in body) == ("id" in body):
            raise _bad_request("Exactly one of vector or id must be provided")
        namespace = _namespace(body)
        condition = body.get("filter")
        if condition is not None:
            _validate_filter(condition)
        with self._lock:
            records = dict(self._namespaces.get(namespace, {}))
        if "vector" in body:
            probe = self._check_values(body["vector"], "query vector")
        else:
            source = records.get(_check_id(body["id"], "id"))
            if source is None:
                return {"matches": [], "namespace": namespace, "usage": {"readUnits": 1}}
            probe = source.values
        candidates = [(vector_id, record) for vector_id, record in records.items()
                      if condition is None or _matches(record.metadata, condition)]
        matches: list[dict[str, Any]] = []
        if candidates:
            matrix = np.stack([record.values for _, record in candidates]).astype(np.float64)
            norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(probe))
            scores = matrix @ probe.astype(np.float64) / np.where(norms == 0, 1.0, norms)
            ranked = sorted(zip(scores.tolist(), (vector_id for vector_id, _ in candidates),
                                strict=True), key=lambda pair: (-pair[0], pair[1]))
            for score, vector_id in ranked[:top_k]:
                match = _vector_json(vector_id, records[vector_id], bool(body.get("includeValues")),
                                     bool(body.get("includeMetadata")))
                match["score"] = score
                matches.append(match)
        return {"matches": matches, "namespace": namespace, "usage": {"readUnits": 5}}

    def _delete(self, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        namespace = _namespace(body)
        selectors = [key for key in ("ids", "deleteAll", "filter") if body.get(key)]
        if len(selectors) != 1:
            raise _bad_request("Exactly one of ids, deleteAll or filter must be provided")
        with self._lock:
            records = self._namespaces.get(namespace, {})
        if "ids" in selectors:
            ids = body["ids"]
            if not isinstance(ids, list):
                raise _bad_request("ids must be a list")
            if len(ids) > MAX_IDS_PER_REQUEST:
                raise _bad_request(f"Delete accepts at most {MAX_IDS_PER_REQUEST} ids, got {len(ids)}")
            for position, vector_id in enumerate(ids):
                _check_id(vector_id, f"ids[{position}]")
            self._check_id_faults(ids)
            doomed = set(ids)
        elif "filter" in selectors:
            _validate_filter(body["filter"])
            doomed = {vector_id for vector_id, record in records.items()
                      if _matches(record.metadata, body["filter"])}
        else:
            doomed = set(records)
        with self._lock:
            records = self._namespaces.get(namespace, {})
            for vector_id in doomed:
                records.pop(vector_id, None)
        return {}

    def _list(self, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        namespace = (query.get("namespace") or [""])[0]
        prefix = (query.get("prefix") or [""])[0]
        raw_limit = (query.get("limit") or [str(MAX_LIST_LIMIT)])[0]
        try:
            limit = int(raw_limit)
        except ValueError:
            raise _bad_request(f"limit must be an integer, got {raw_limit!r}") from None
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise _bad_request(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
        after = ""
        token = (query.get("paginationToken") or [None])[0]
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
            except (ValueError, UnicodeError):
                raise _bad_request("Invalid pagination token") from None
        with self._lock:
            # Ids are ASCII, so sorting str is sorting bytes, which is Pinecone's order.
            ids = sorted(vector_id for vector_id in self._namespaces.get(namespace, {})
                         if vector_id.startswith(prefix) and vector_id > after)
        page = ids[:limit]
        answer: dict[str, Any] = {"vectors": [{"id": vector_id} for vector_id in page],
                                  "namespace": namespace, "usage": {"readUnits": 1}}
        if len(ids) > limit:
            answer["pagination"] = {
                "next": base64.urlsafe_b64encode(page[-1].encode("ascii")).decode("ascii")}
        return answer

    def _update(self, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        namespace = _namespace(body)
        by_id = "id" in body
        if by_id == ("filter" in body):
            raise _bad_request("Exactly one of id or filter must be provided")
        if not by_id and "values" in body:
            raise _bad_request("An update by filter can only set metadata")
        values = self._check_values(body["values"], "values") if "values" in body else None
        patch = _check_metadata(body.get("setMetadata"), "setMetadata")
        if by_id:
            wanted = _check_id(body["id"], "id")
            self._check_id_faults([wanted])
        else:
            _validate_filter(body["filter"])
        with self._lock:
            records = self._namespaces.get(namespace, {})
            if by_id:
                # Writes apply asynchronously on Pinecone, so an update naming an absent id is
                # accepted and changes nothing rather than answering 404.
                targets = [wanted] if wanted in records else []
            else:
                targets = [vector_id for vector_id, record in records.items()
                           if _matches(record.metadata, body["filter"])]
            updated: dict[str, _Record] = {}
            for target in targets:
                merged = {**records[target].metadata, **patch}
                if len(_metadata_json(merged)) > MAX_METADATA_BYTES:
                    raise _bad_request(f"Metadata of vector {target!r} would exceed "
                                       f"{MAX_METADATA_BYTES} bytes")
                updated[target] = _Record(records[target].values if values is None else values, merged)
            records.update(updated)
        return {} if by_id else {"matchedRecords": len(targets)}

    def _describe_index_stats(self, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        if body.get("filter"):
            raise _bad_request("describe_index_stats does not accept a metadata filter on this index")
        with self._lock:
            counts = {namespace or DEFAULT_NAMESPACE_NAME: len(records)
                      for namespace, records in self._namespaces.items()}
        return {
            "namespaces": {namespace: {"vectorCount": n} for namespace, n in counts.items()},
            "dimension": self.dimension,
            "indexFullness": 0.0,
            "totalVectorCount": sum(counts.values()),
            "metric": "cosine",
            "vectorType": "dense",
        }

    def _check_values(self, values: Any, what: str) -> np.ndarray:
        if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise _bad_request(f"Values of {what} must be a list of numbers")
        if len(values) != self.dimension:
            raise _bad_request(f"Vector dimension {len(values)} does not match the dimension "
                               f"of the index {self.dimension}")
        if not all(math.isfinite(v) for v in values):
            raise _bad_request(f"Values of {what} must be finite numbers")
        return np.asarray(values, dtype=np.float32)


class _Server(ThreadingHTTPServer):
    """Tracks each connection with its handler thread from accept to close, so stop() can end them."""

    daemon_threads = True

    def __init__(self, app: PineconeTestServer, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.app = app

    def process_request(self, request: Any, client_address: Any) -> None:
        handler = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                   name=f"pinecone-test-server-handler:{client_address[1]}", daemon=True)
        self.app._opened(request, handler)
        handler.start()

    def shutdown_request(self, request: Any) -> None:
        self.app._closed(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects of Pinecone
    server_version = "pinecone-test-server"

    @property
    def app(self) -> PineconeTestServer:
        assert isinstance(self.server, _Server)
        return self.server.app

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client hung up first; nothing left to flush

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request log is self.app.requests; stderr noise helps nobody

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._serve("POST")

    def _serve(self, method: str) -> None:
        app = self.app
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        split = urlsplit(self.path)
        path = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        body, parse_error = _parse_json(raw) if method == "POST" else ({}, None)

        def log(status: int) -> None:
            app._record(LoggedRequest(method, path, status, _logged_namespace(query, body),
                                      _logged_ids(path, query, body), len(raw),
                                      self.headers.get("X-Pinecone-Api-Version")))

        fault = app._take_fault(path)
        if fault is not None and fault.status is None:
            log(0)  # now, not after the hang, so a test can assert it while the request is held
            app._stopping.wait(fault.hang_seconds)
            self.close_connection = True
            return
        try:
            if fault is not None:
                assert fault.status is not None
                raise PineconeApiError(fault.status, fault.message or _DEFAULT_FAULT_MESSAGES.get(
                    fault.status, f"Injected HTTP {fault.status}"), fault.retry_after)
            if self.headers.get("Api-Key") != app.api_key:
                raise PineconeApiError(401, "Invalid API Key")
            if len(raw) > MAX_REQUEST_BYTES:
                size_mb = math.ceil(len(raw) / (1024 * 1024))
                raise PineconeApiError(413, f"Request size {size_mb}MB exceeds the maximum "
                                            "supported size of 2MB")
            if parse_error is not None:
                raise _bad_request(parse_error)
            status, answer, retry_after = 200, app.handle(method, path, query, body), None
        except PineconeApiError as exc:
            status, answer, retry_after = exc.status, exc.body(), exc.retry_after
        log(status)
        self._respond(status, answer, retry_after)

    def _respond(self, status: int, answer: dict[str, Any], retry_after: float | None) -> None:
        payload = orjson.dumps(answer)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", f"{retry_after:g}")
        self.end_headers()
        try:
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True  # the client gave up waiting


# -- wire helpers ----------------------------------------------------------------------------------

def _parse_json(raw: bytes) -> tuple[dict[str, Any], str | None]:
    if not raw:
        return {}, None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return {}, f"Request body is not valid JSON: {exc}"
    if not isinstance(parsed, dict):
        return {}, "Request body must be a JSON object"
    return parsed, None


def _logged_namespace(query: dict[str, list[str]], body: dict[str, Any]) -> str | None:
    if "namespace" in query:
        return query["namespace"][0]
    value = body.get("namespace")
    return value if isinstance(value, str) else None


def _logged_ids(path: str, query: dict[str, list[str]], body: dict[str, Any]) -> tuple[str, ...]:
    if path == "/vectors/upsert" and isinstance(body.get("vectors"), list):
        return tuple(str(v.get("id")) for v in body["vectors"] if isinstance(v, dict))
    if path == "/vectors/fetch":
        return tuple(query.get("ids", []))
    if path == "/vectors/delete" and isinstance(body.get("ids"), list):
        return tuple(str(i) for i in body["ids"])
    if path == "/vectors/update" and isinstance(body.get("id"), str):
        return (body["id"],)
    return ()


def _namespace(body: dict[str, Any]) -> str:
    namespace = body.get("namespace", "")
    if not isinstance(namespace, str):
        raise _bad_request("namespace must be a string")
    return namespace


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad_request(f"{what} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise _bad_request(f"{what} exceeds the maximum length of {MAX_ID_LENGTH} characters")
    if not value.isascii() or "\x00" in value:
        raise _bad_request(f"{what} must contain only ASCII characters and no NUL")
    return value


def _metadata_json(metadata: dict[str, Any]) -> bytes:
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode()


def _check_metadata(metadata: Any, owner: str) -> dict[str, Any]:
    """Pinecone's metadata rules; numbers come back as 64-bit floats, as Pinecone stores them."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _bad_request(f"Metadata of {owner!r} must be an object")
    clean: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith("$"):
            raise _bad_request(f"Metadata key {key!r} of {owner!r} must not start with '$'")
        if value is None:
            raise _bad_request(f"Metadata value for key {key!r} of {owner!r} is null; "
                               "null metadata values are not supported")
        if isinstance(value, (bool, str)):
            clean[key] = value
        elif isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise _bad_request(f"Metadata value for key {key!r} of {owner!r} is not finite")
            clean[key] = float(value)
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            clean[key] = list(value)
        else:
            raise _bad_request(f"Metadata value for key {key!r} of {owner!r} must be a string, "
                               "number, boolean or list of strings")
    size = len(_metadata_json(metadata))
    if size > MAX_METADATA_BYTES:
        raise _bad_request(f"Metadata size is {size} bytes, which exceeds the limit of "
                           f"{MAX_METADATA_BYTES} bytes per vector (vector {owner!r})")
    return clean


def _vector_json(vector_id: str, record: _Record, include_values: bool,
                 include_metadata: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {"id": vector_id}
    if include_values:
        answer["values"] = record.values.tolist()
    if include_metadata and record.metadata:
        answer["metadata"] = record.metadata
    return answer


# -- filters: Pinecone's metadata query language, read independently of sync.stores.filters -------

def _validate_filter(condition: Any) -> None:
    if not isinstance(condition, dict) or not condition:
        raise _bad_request("Filter must be a non-empty object")
    for key, value in condition.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _bad_request(f"{key} requires a non-empty list of filters")
            for sub in value:
                _validate_filter(sub)
        elif key.startswith("$"):
            raise _bad_request(f"Unknown top-level filter operator {key}")
        elif isinstance(value, dict):
            if not value:
                raise _bad_request(f"Filter on field {key!r} has no operator")
            for operator, operand in value.items():
                _validate_operator(key, operator, operand)
        else:
            _validate_operator(key, "$eq", value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_operator(key: str, operator: str, operand: Any) -> None:
    if operator not in _FIELD_OPERATORS:
        raise _bad_request(f"Unknown filter operator {operator} on field {key!r}")
    if operator in ("$eq", "$ne") and not isinstance(operand, (str, bool, int, float)):
        raise _bad_request(f"{operator} on field {key!r} needs a string, number or boolean")
    if operator in _COMPARISON_OPERATORS and not _is_number(operand):
        raise _bad_request(f"{operator} on field {key!r} needs a number")
    if operator in ("$in", "$nin") and not (isinstance(operand, list) and all(
            isinstance(item, str) or _is_number(item) for item in operand)):
        raise _bad_request(f"{operator} on field {key!r} needs a list of strings or numbers")
    if operator == "$exists" and not isinstance(operand, bool):
        raise _bad_request(f"$exists on field {key!r} needs a boolean")


def _same(stored: Any, wanted: Any) -> bool:
    # Booleans are not numbers in Pinecone (True must not equal 1), unlike in Python.
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if _is_number(stored) and _is_number(wanted):
        return float(stored) == float(wanted)
    return isinstance(stored, str) and isinstance(wanted, str) and stored == wanted


def _elements(stored: Any) -> Iterator[Any]:
    # A list-of-strings field matches when any element does.
    yield from stored if isinstance(stored, list) else [stored]


def _matches(metadata: dict[str, Any], condition: dict[str, Any]) -> bool:
    for key, value in condition.items():
        if key == "$and":
            ok = all(_matches(metadata, sub) for sub in value)
        elif key == "$or":
            ok = any(_matches(metadata, sub) for sub in value)
        else:
            operators = value if isinstance(value, dict) else {"$eq": value}
            ok = all(_field_matches(metadata, key, operator, operand)
                     for operator, operand in operators.items())
        if not ok:
            return False
    return True


def _field_matches(metadata: dict[str, Any], key: str, operator: str, operand: Any) -> bool:
    if operator == "$exists":
        return (key in metadata) == operand
    # Since 2024 Pinecone selects only records that have the field, for $ne and $nin too (unlike
    # MongoDB): deepset-ai/haystack-core-integrations#590.
    if key not in metadata:
        return False
    stored = metadata[key]
    if operator == "$ne":
        return not any(_same(item, operand) for item in _elements(stored))
    if operator == "$nin":
        return not any(_same(item, wanted) for item in _elements(stored) for wanted in operand)
    if operator == "$eq":
        return any(_same(item, operand) for item in _elements(stored))
    if operator == "$in":
        return any(_same(item, wanted) for item in _elements(stored) for wanted in operand)
    if not _is_number(stored):
        return False
    return {"$gt": stored > operand, "$gte": stored >= operand,
            "$lt": stored < operand, "$lte": stored <= operand}[operator]
