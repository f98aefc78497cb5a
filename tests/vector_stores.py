"""The vector adapters the contract suite (tests/test_vector_contract.py) runs against.

Adding an adapter takes two lines: its name in STORE_KINDS and its factory in FACTORIES. A
factory is `(tmp_path, dimension) -> context manager` yielding a fresh, empty store of that
dimension and releasing whatever it started (a server, a directory) on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sync.embedding import DIMENSION
from sync.stores.base import VectorStore

StoreFactory = Callable[[Path, int], AbstractContextManager[VectorStore]]


@contextmanager
def local_store(tmp_path: Path, dimension: int) -> Iterator[VectorStore]:
    from sync.stores.local_store import LanceVectorStore

    store = LanceVectorStore(tmp_path / "lancedb", table="contract", dimension=dimension)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def pinecone_store(tmp_path: Path, dimension: int) -> Iterator[VectorStore]:
    """The real pinecone SDK over HTTP to tests/pinecone_server.py, in a non-default namespace."""
    from sync.stores.pinecone_store import PineconeVectorStore
    from tests.pinecone_server import running_pinecone_server

    with running_pinecone_server(dimension=dimension) as server:
        store = PineconeVectorStore(server.api_key, server.url, namespace="contract",
                                    dimension=dimension, timeout=5.0, operation_timeout=30.0)
        try:
            yield store
        finally:
            store.close()


STORE_KINDS = ["local", "pinecone"]
FACTORIES: dict[str, StoreFactory] = {
    "local": local_store,
    "pinecone": pinecone_store,
}


def make_store(kind: str, tmp_path: Path, dimension: int = DIMENSION) -> AbstractContextManager[VectorStore]:
    """A context manager yielding a fresh, empty store of the given kind."""
    return FACTORIES[kind](tmp_path, dimension)
