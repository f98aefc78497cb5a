"""Process-wide access to the graph and vector stores configured in settings.

Drivers are built once per process on first use (never at import time) and can be replaced in
tests through `use_vector_store` / `reset_stores`.

One module per outside system, behind the protocols of `base` (every call to the outside goes
through them, so tests and fault injection have one seam): `neo4j_graph` (+ `neo4j_triggers`),
`local_store` (LanceDB), `pinecone_store`; `metadata` and `filters` are shared by the vector
stores.

May import: `sync.embedding` (the dimension) and settings; nothing else of the engine.
"""

from __future__ import annotations

import threading
import warnings

from django.conf import settings

from sync.stores.base import GraphStore, VectorStore

_lock = threading.Lock()
_graph: GraphStore | None = None
_vector: VectorStore | None = None


def graph_store() -> GraphStore:
    global _graph
    with _lock:
        if _graph is None:
            from sync.stores.neo4j_graph import Neo4jGraphStore

            _graph = Neo4jGraphStore(
                settings.NEO4J_URI, settings.NEO4J_USER, settings.NEO4J_PASSWORD,
                database=settings.NEO4J_DATABASE,
            )
        return _graph


def vector_store() -> VectorStore:
    global _vector
    with _lock:
        if _vector is None:
            _vector = build_vector_store()
        return _vector


def build_vector_store() -> VectorStore:
    from sync.embedding import DIMENSION

    if settings.VECTOR_STORE == "pinecone":
        from sync.stores.pinecone_store import PineconeVectorStore

        return PineconeVectorStore(
            api_key=settings.PINECONE_API_KEY, host=settings.PINECONE_HOST,
            namespace=settings.PINECONE_NAMESPACE, dimension=DIMENSION,
            timeout=settings.PINECONE_TIMEOUT, operation_timeout=settings.PINECONE_OPERATION_TIMEOUT,
        )
    from sync.stores.local_store import LanceVectorStore

    return LanceVectorStore(settings.LANCEDB_DIR, table=settings.VECTOR_INDEX, dimension=DIMENSION)


def import_clients() -> None:
    """Import the configured stores' client libraries without connecting: what a web server's
    arbiter (dashboard.warmup) and the workers' cluster (manage.py workers) do before they fork.
    LanceDB's import starts an event-loop thread, which LanceDB itself restarts in a forked child
    (`os.register_at_fork`); nothing runs on it before the fork, so nothing is mid-operation when
    it happens, and the warning LanceDB gives in every forked child (its fork support is
    "experimental": the risk it names is an operation mid-flight at the fork) is silenced."""
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
    import sync.stores.neo4j_graph  # noqa: F401

    if settings.VECTOR_STORE == "pinecone":
        import sync.stores.pinecone_store  # noqa: F401
    else:
        import sync.stores.local_store  # noqa: F401


def use_vector_store(store: VectorStore | None) -> None:
    """Swap the process's vector store (tests, fault injection)."""
    global _vector
    with _lock:
        _vector = store


def use_graph_store(store: GraphStore | None) -> None:
    """Swap the process's graph store (tests, fault injection)."""
    global _graph
    with _lock:
        _graph = store


def reset_stores() -> None:
    global _graph, _vector
    with _lock:
        if _graph is not None:
            _graph.close()
        _graph = None
        _vector = None
