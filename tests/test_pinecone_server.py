"""The Pinecone stand-in itself, driven by the real SDK: limits, wire shapes, filters, faults, teardown.

The adapter never sends what Pinecone would refuse, so these are the tests that show the server
would refuse it, in the status and error class the SDK raises for Pinecone.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator

import pytest
from pinecone import Index
from pinecone.errors import ApiError, PayloadTooLargeError, UnauthorizedError

from tests.pinecone_server import PineconeTestServer, running_pinecone_server

pytestmark = pytest.mark.timeout(60)

DIM = 4


@pytest.fixture
def pinecone_server() -> Iterator[PineconeTestServer]:
    with running_pinecone_server(dimension=DIM) as server:
        yield server


@pytest.fixture
def index(pinecone_server: PineconeTestServer) -> Iterator[Index]:
    client = Index(host=pinecone_server.url, api_key=pinecone_server.api_key, timeout=5)
    yield client
    client.close()


def unit(i: int) -> list[float]:
    return [1.0 if j == i % DIM else 0.1 for j in range(DIM)]


def test_it_refuses_more_than_1000_vectors_per_upsert(index, pinecone_server):
    with pytest.raises(ApiError) as raised:
        index.upsert(vectors=[(f"v{i}", unit(i)) for i in range(1001)])

    assert raised.value.status_code == 400
    assert "1000 vectors per upsert" in raised.value.message
    assert pinecone_server.vector_ids() == []


def test_it_refuses_an_upsert_body_over_2_mib(index, pinecone_server):
    vectors = [(f"v{i}", unit(i), {"text": "z" * 30_000}) for i in range(80)]

    with pytest.raises(PayloadTooLargeError) as raised:
        index.upsert(vectors=vectors)

    assert raised.value.status_code == 413
    assert pinecone_server.vector_ids() == []


@pytest.mark.parametrize(("vector", "needle"), [
    (("v", [1.0, 2.0]), "dimension"),
    (("v", [0.0] * DIM), "non-zero"),
    (("v", unit(0), {"note": None}), "null"),
    (("v", unit(0), {"text": "q" * 41_000}), "exceeds the limit of 40960"),
    (("v", unit(0), {"$where": "x"}), "must not start with '$'"),
], ids=["dimension", "all-zero", "null-metadata", "metadata-over-40kb", "dollar-key"])
def test_it_refuses_what_pinecone_refuses_in_a_record(index, pinecone_server, vector, needle):
    with pytest.raises(ApiError) as raised:
        index.upsert(vectors=[vector])

    assert raised.value.status_code == 400
    assert needle in raised.value.message
    assert pinecone_server.vector_ids() == []


def test_it_refuses_more_than_1000_ids_per_fetch_or_delete(index):
    ids = [f"v{i}" for i in range(1001)]
    for call in (lambda: index.fetch(ids=ids), lambda: index.delete(ids=ids)):
        with pytest.raises(ApiError) as raised:
            call()
        assert raised.value.status_code == 400


def test_a_wrong_key_gets_pinecones_401_body(pinecone_server):
    client = Index(host=pinecone_server.url, api_key="pcsk_wrong", timeout=5)
    try:
        with pytest.raises(UnauthorizedError) as raised:
            client.describe_index_stats()
    finally:
        client.close()

    assert raised.value.body == {"code": 16, "message": "Invalid API Key", "details": []}


def test_namespaces_stats_and_numbers_read_back_as_pinecone_stores_them(index):
    index.upsert(vectors=[("a", unit(0), {"year": 2024, "tags": ["kev"]})])
    index.upsert(vectors=[("b", unit(1)), ("c", unit(2))], namespace="intel")

    stats = index.describe_index_stats()
    fetched = index.fetch(ids=["a", "missing"])

    assert stats.total_vector_count == 3 and stats.dimension == DIM
    assert {name: ns.vector_count for name, ns in stats.namespaces.items()} == {"__default__": 1, "intel": 2}
    assert list(fetched.vectors) == ["a"]
    assert fetched.vectors["a"].metadata == {"year": 2024.0, "tags": ["kev"]}
    assert isinstance(fetched.vectors["a"].metadata["year"], float)
    assert index.fetch(ids=["a"], namespace="intel").vectors == {}


def test_list_pages_are_bytewise_sorted_and_prefix_filtered(index):
    ids = ["a:2", "B:1", "a:10", "a:1", "b:1"]
    index.upsert(vectors=[(i, unit(n)) for n, i in enumerate(ids)])

    pages = list(index.list(prefix="a:", limit=2))

    assert [[item.id for item in page.vectors] for page in pages] == [["a:1", "a:10"], ["a:2"]]
    assert [item.id for page in index.list() for item in page.vectors] == ["B:1", "a:1", "a:10", "a:2", "b:1"]


def test_update_merges_metadata_and_delete_by_filter(index, pinecone_server):
    index.upsert(vectors=[("a", unit(0), {"k": "old", "keep": True}), ("b", unit(1), {"k": "drop"})])

    index.update(id="a", set_metadata={"k": "new"})
    index.delete(filter={"k": {"$eq": "drop"}})

    assert pinecone_server.stored("a")["metadata"] == {"k": "new", "keep": True}
    assert pinecone_server.vector_ids() == ["a"]


@pytest.mark.parametrize(("condition", "expected"), [
    ({"sev": "high"}, ["hi", "tagged"]),
    ({"sev": {"$ne": "high"}}, ["low"]),  # a record without the field is not selected
    ({"score": {"$gte": 5}}, ["hi"]),
    ({"score": {"$eq": 1}}, ["low"]),  # True is not 1
    ({"tags": {"$in": ["kev", "x"]}}, ["tagged"]),
    ({"sev": {"$nin": ["low"]}}, ["hi", "tagged"]),
    ({"tags": {"$nin": ["x"]}}, ["tagged"]),
    ({"sev": {"$exists": False}}, ["none"]),
    ({"$or": [{"score": {"$lt": 2}}, {"flag": True}]}, ["low", "none"]),
    ({"$and": [{"sev": "high"}, {"score": {"$gt": 1}}]}, ["hi"]),
])
def test_query_filters_follow_pinecones_language(index, condition, expected):
    index.upsert(vectors=[
        ("hi", unit(0), {"sev": "high", "score": 9}),
        ("low", unit(1), {"sev": "low", "score": 1}),
        ("none", unit(2), {"flag": True, "score": True}),
        ("tagged", unit(3), {"sev": "high", "tags": ["kev", "ransomware"]}),
    ])

    answer = index.query(vector=unit(0), top_k=10, filter=condition)

    assert sorted(m.id for m in answer.matches) == expected


def test_query_ranks_by_cosine_and_includes_only_what_is_asked(index):
    index.upsert(vectors=[("near", [1.0, 0.1, 0, 0], {"k": "v"}), ("far", [0, 0, 1.0, 0])])

    plain = index.query(vector=[1.0, 0, 0, 0], top_k=2)
    full = index.query(id="near", top_k=1, include_values=True, include_metadata=True)

    assert [m.id for m in plain.matches] == ["near", "far"]
    assert plain.matches[0].score == pytest.approx(1 / (1.01 ** 0.5))
    assert (plain.matches[0].values, plain.matches[0].metadata) == ([], None)
    assert full.matches[0].metadata == {"k": "v"} and len(full.matches[0].values) == DIM


def test_it_refuses_an_unknown_filter_operator(index):
    with pytest.raises(ApiError) as raised:
        index.query(vector=unit(0), top_k=1, filter={"k": {"$regex": "a"}})

    assert raised.value.status_code == 400


def test_faults_can_target_one_path_and_are_logged(index, pinecone_server):
    pinecone_server.fail_next(503, times=10, path="/vectors/fetch")

    index.upsert(vectors=[("a", unit(0))])

    assert [(r.method, r.path, r.status, r.vector_count) for r in pinecone_server.requests] == [
        ("POST", "/vectors/upsert", 200, 1)]
    assert pinecone_server.requests[0].api_version == "2026-07"


def test_stop_releases_held_requests_and_joins_every_thread():
    before = set(threading.enumerate())
    server = PineconeTestServer(dimension=DIM).start()
    headers = {"Api-Key": server.api_key, "Content-Type": "application/json"}
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    idle.request("POST", "/describe_index_stats", body="{}", headers=headers)
    assert idle.getresponse().read()  # the connection stays open (keep-alive), its handler parked
    server.hang_next(seconds=60)
    outcome: list[BaseException] = []

    def held_request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("POST", "/describe_index_stats", body="{}", headers=headers)
            conn.getresponse()
        except (http.client.HTTPException, OSError) as exc:
            outcome.append(exc)
        finally:
            conn.close()

    held = threading.Thread(target=held_request)
    held.start()
    while len(server.requests) < 2:
        time.sleep(0.01)

    started = time.monotonic()
    server.stop()
    held.join(timeout=5)
    idle.close()

    assert time.monotonic() - started < 2
    assert len(outcome) == 1  # dropped unanswered, as a hang that ends does
    # Only new threads count (an earlier test's abandoned SDK call may end meanwhile), and a
    # joined thread can linger in enumerate() for an instant after it stopped.
    assert [t for t in set(threading.enumerate()) - before if t.is_alive()] == []
