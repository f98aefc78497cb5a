"""Is each outside system answering? Used by /healthz, /readyz, the home page and `sync_status`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.conf import settings

from sync.stores import graph_store, vector_store
from sync.stores.base import StoreError


@dataclass(frozen=True)
class ServiceHealth:
    name: str  # "graph" or "vector_store"
    kind: str  # what it is, e.g. "Neo4j" or "LanceDB"
    target: str  # where it is (never a secret)
    ok: bool
    detail: str
    millis: float


def _probe(name: str, kind: str, target: str, ping) -> ServiceHealth:
    started = time.monotonic()
    try:
        detail, ok = ping(), True
    except StoreError as exc:
        detail, ok = str(exc), False
    except Exception as exc:  # noqa: BLE001 — a health probe reports every failure
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return ServiceHealth(name, kind, target, ok, detail, (time.monotonic() - started) * 1000)


def vector_target() -> tuple[str, str]:
    if settings.VECTOR_STORE == "pinecone":
        return "Pinecone", settings.PINECONE_HOST
    return "LanceDB", str(settings.LANCEDB_DIR)


def _ping_graph() -> str:
    store = graph_store()
    driver = getattr(store, "driver", None)
    if driver is not None:
        # A refused connection fails here at once; the store's ping would retry it for the
        # store's whole retry time, and a probe must answer fast.
        try:
            driver.verify_connectivity()
        except Exception as exc:  # noqa: BLE001 — whatever the driver raises, the graph does not answer
            raise StoreError(f"Neo4j is unreachable: {type(exc).__name__}: {exc}") from None
    return store.ping()


def check_services() -> list[ServiceHealth]:
    kind, target = vector_target()
    return [
        _probe("graph", "Neo4j", getattr(graph_store(), "uri", settings.NEO4J_URI), _ping_graph),
        _probe("vector_store", kind, target, lambda: vector_store().ping()),
    ]


_recent: dict = {}  # the probes' last check in this process: {"stores", "at", "services"}
_checking = threading.Lock()


def recent_services() -> list[ServiceHealth]:
    """`check_services()` at most once per HEALTH_CACHE_SECONDS in this process, for the probes: a
    load balancer or orchestrator polling /healthz and /readyz must not cost each store a round
    trip per call. Callers arriving while a check runs wait for it and share it; a store swapped
    in (tests, a reconfiguration) is checked at once."""
    stores = (graph_store(), vector_store())
    with _checking:
        if (_recent and all(a is b for a, b in zip(_recent["stores"], stores, strict=True))
                and time.monotonic() - _recent["at"] < settings.HEALTH_CACHE_SECONDS):
            return _recent["services"]
        services = check_services()
        _recent.update(stores=stores, at=time.monotonic(), services=services)
        return services


def forget_recent() -> None:
    """The next probe checks the stores again (tests that stop a store)."""
    with _checking:
        _recent.clear()


def as_dicts(services) -> list[dict]:
    return [{"name": s.name, "kind": s.kind, "target": s.target, "ok": s.ok, "detail": s.detail[:500],
             "millis": round(s.millis, 1)} for s in services]


def from_dicts(rows) -> list[ServiceHealth]:
    return [ServiceHealth(r["name"], r["kind"], r["target"], r["ok"], r["detail"], r["millis"]) for r in rows]
