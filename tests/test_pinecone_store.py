"""PineconeVectorStore with the real pinecone SDK, over HTTP, against tests/pinecone_server.py.

No part of the SDK is mocked: faults are produced by the server (status codes, Retry-After,
held requests, poisoned ids) and the SDK meets them exactly as it would meet Pinecone.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterator

import pytest

from sync.stores.base import PermanentStoreError, RetryableStoreError, VectorRecord
from sync.stores.pinecone_store import PineconeVectorStore
from tests.pinecone_server import PineconeTestServer, running_pinecone_server

pytestmark = pytest.mark.timeout(60)

DIM = 8
NAMESPACE = "intel"
DATA_PLANE_PATHS = {"/vectors/upsert", "/vectors/fetch", "/query", "/vectors/delete",
                    "/vectors/list", "/vectors/update", "/describe_index_stats"}


@pytest.fixture
def pinecone_server() -> Iterator[PineconeTestServer]:
    with running_pinecone_server(dimension=DIM) as server:
        yield server


def make_store(server: PineconeTestServer, **options: object) -> PineconeVectorStore:
    settings: dict[str, object] = {"api_key": server.api_key, "host": server.url, "namespace": NAMESPACE,
                                   "dimension": DIM, "timeout": 5.0, "operation_timeout": 30.0}
    settings.update(options)
    return PineconeVectorStore(**settings)  # type: ignore[arg-type]


@pytest.fixture
def store(pinecone_server: PineconeTestServer) -> Iterator[PineconeVectorStore]:
    store = make_store(pinecone_server)
    yield store
    store.close()


def vector(n: int) -> list[float]:
    """A distinct, non-zero unit-ish vector per n."""
    return [math.sin(n + i) + (1.5 if i == n % DIM else 0.0) for i in range(DIM)]


def records(count: int, prefix: str = "Report:r", **metadata: object) -> list[VectorRecord]:
    return [VectorRecord(f"{prefix}{n:05d}", vector(n), {"label": "Report", "n": n, **metadata})
            for n in range(count)]


def upserts(server: PineconeTestServer) -> list[tuple[int, int]]:
    """(status, vector count) of each upsert request the server saw."""
    return [(r.status, r.vector_count) for r in server.requests_to("/vectors/upsert")]


# -- batching ------------------------------------------------------------------------------------

def test_it_upserts_2500_vectors_in_requests_of_at_most_1000(store, pinecone_server):
    batch = records(2500)

    result = store.upsert(batch)

    assert (result.written, result.failed) == (2500, {})
    sent = upserts(pinecone_server)
    assert len(sent) >= 3
    assert all(status == 200 and count <= 1000 for status, count in sent)
    assert sum(count for _, count in sent) == 2500
    assert pinecone_server.vector_ids(NAMESPACE) == [r.id for r in batch]
    assert {r.namespace for r in pinecone_server.requests} == {NAMESPACE}


def test_it_splits_a_batch_over_2_mb_by_bytes(store, pinecone_server):
    # 100 records of ~30 KB metadata each: 3 MB, far under 1,000 vectors.
    batch = records(100, text="x" * 30_000)

    result = store.upsert(batch)

    assert (result.written, result.failed) == (100, {})
    sent = pinecone_server.requests_to("/vectors/upsert")
    assert len(sent) >= 2
    assert all(r.status == 200 and r.body_bytes <= 2_000_000 for r in sent)
    assert sum(r.vector_count for r in sent) == 100
    assert pinecone_server.stored("Report:r00099", NAMESPACE)["metadata"]["text"] == "x" * 30_000


def test_fetch_and_delete_send_at_most_1000_ids_per_request(store, pinecone_server):
    batch = records(2500)
    store.upsert(batch)
    ids = [r.id for r in batch]

    fetched = store.fetch([*ids, "Report:missing"])
    deleted = store.delete([*ids[:1500], "Report:missing"])

    assert set(fetched) == set(ids)
    assert fetched["Report:r00007"].values == pytest.approx(vector(7), rel=1e-6)
    assert fetched["Report:r00007"].metadata == {"label": "Report", "n": 7}
    assert type(fetched["Report:r00007"].metadata["n"]) is int  # Pinecone answers 7.0
    assert deleted == 1500
    for path in ("/vectors/fetch", "/vectors/delete"):
        sent = pinecone_server.requests_to(path)
        assert sent and all(r.status == 200 and 0 < r.vector_count <= 1000 for r in sent)
    assert pinecone_server.vector_ids(NAMESPACE) == ids[1500:]


def test_fetch_keeps_long_ids_within_a_url_that_proxies_accept(store, pinecone_server):
    # 1,000 ids of ~210 characters would make a 200 KB query string; the server, like most
    # proxies, refuses request lines over 64 KiB.
    long_ids = [f"Report:{'x' * 200}{n:04d}" for n in range(1000)]
    store.upsert([VectorRecord(vector_id, vector(n)) for n, vector_id in enumerate(long_ids)])

    fetched = store.fetch(long_ids)

    assert set(fetched) == set(long_ids)
    sent = pinecone_server.requests_to("/vectors/fetch")
    assert len(sent) >= 7 and all(r.status == 200 for r in sent)


def test_update_metadata_replaces_metadata_keeps_values_and_batches(store, pinecone_server):
    batch = records(1500, old="gone soon")
    store.upsert(batch)
    pinecone_server.clear_log()

    result = store.update_metadata({**{r.id: {"label": "Report", "n": -1} for r in batch},
                                    "Report:never-written": {"label": "Report"}})

    assert result.written == 1500
    assert set(result.failed) == {"Report:never-written"}
    assert result.retryable == {"Report:never-written"}  # reads lag writes on Pinecone
    stored = pinecone_server.stored("Report:r01234", NAMESPACE)
    assert stored["metadata"] == {"label": "Report", "n": -1}
    assert stored["values"] == pytest.approx(vector(1234), rel=1e-6)
    paths = [r.path for r in pinecone_server.requests]
    assert "/vectors/update" not in paths  # not one request per id
    assert paths.count("/vectors/fetch") == 2 and paths.count("/vectors/upsert") == 2


def test_list_ids_pages_through_more_than_100_ids_in_bytewise_order(store, pinecone_server):
    store.upsert(records(250, prefix="ThreatActor:a") + records(10, prefix="Report:r"))

    listed = list(store.list_ids("ThreatActor:"))

    assert listed == [f"ThreatActor:a{n:05d}" for n in range(250)]
    pages = pinecone_server.requests_to("/vectors/list")
    assert [r.status for r in pages] == [200, 200, 200]
    everything = list(store.list_ids())
    assert everything == sorted(everything) and len(everything) == 260
    assert list(store.list_ids("Nothing:")) == []


def test_query_ping_and_stats_speak_to_the_data_plane_only(store, pinecone_server):
    store.upsert(records(20) + [VectorRecord("Report:tagged", vector(3), {"label": "KEV", "n": 99})])

    matches = store.query(vector(3), top_k=3, filter={"label": {"$eq": "KEV"}}, include_values=True)
    unfiltered = store.query(vector(3), top_k=2)

    assert [m.id for m in matches] == ["Report:tagged"]
    assert matches[0].score == pytest.approx(1.0, abs=1e-6)
    assert matches[0].values == pytest.approx(vector(3), rel=1e-6)
    assert {m.id for m in unfiltered} == {"Report:r00003", "Report:tagged"}
    assert unfiltered[0].values is None
    assert store.ping() == f"Pinecone index at {pinecone_server.url}, namespace 'intel', 21 vectors, dim 8"
    assert store.stats().total == 21
    assert {r.path for r in pinecone_server.requests} <= DATA_PLANE_PATHS


def test_a_bad_filter_or_query_vector_raises_before_any_request(store, pinecone_server):
    with pytest.raises(ValueError):
        store.query(vector(1), filter={"label": {"$regex": "K.*"}})
    with pytest.raises(ValueError):
        store.query([1.0, 2.0])

    assert pinecone_server.requests_to("/query") == []


def test_ping_refuses_an_index_of_another_dimension(pinecone_server):
    store = make_store(pinecone_server, dimension=384)
    try:
        with pytest.raises(PermanentStoreError, match="dimension 8"):
            store.ping()
    finally:
        store.close()


# -- records that fail alone ----------------------------------------------------------------------

def test_oversized_metadata_fails_alone_and_is_never_sent(store, pinecone_server):
    batch = records(10)
    batch.insert(4, VectorRecord("Report:huge", vector(1), {"text": "y" * 50_000}))

    result = store.upsert(batch)

    assert result.written == 10
    assert list(result.failed) == ["Report:huge"]
    assert "Report:huge" not in result.retryable
    assert all("Report:huge" not in r.ids for r in pinecone_server.requests)
    assert len(pinecone_server.vector_ids(NAMESPACE)) == 10


@pytest.mark.parametrize("bad", [
    VectorRecord("Report:short", [1.0, 2.0]),
    VectorRecord("Report:nan", [math.nan] + [1.0] * (DIM - 1)),
    VectorRecord("Report:é", vector(1)),
    VectorRecord("x" * 513, vector(1)),
], ids=["wrong-dimension", "nan", "non-ascii-id", "id-too-long"])
def test_an_invalid_record_fails_alone(store, pinecone_server, bad):
    result = store.upsert([*records(3), bad])

    assert result.written == 3
    assert list(result.failed) == [bad.id]
    assert len(pinecone_server.vector_ids(NAMESPACE)) == 3


def test_a_record_pinecone_refuses_is_isolated_from_its_request(store, pinecone_server):
    # Passes our checks but Pinecone says no: the request is halved until only that record fails.
    pinecone_server.fail_ids({"Report:r00042"}, status=400, message="Metadata value is not allowed")

    result = store.upsert(records(300))

    assert result.written == 299
    assert list(result.failed) == ["Report:r00042"]
    assert "Metadata value is not allowed" in result.failed["Report:r00042"]
    assert result.retryable == set()
    assert len(pinecone_server.vector_ids(NAMESPACE)) == 299
    assert len(pinecone_server.requests_to("/vectors/upsert")) <= 1 + 2 * math.ceil(math.log2(300))


def test_a_failed_request_among_several_fails_exactly_its_own_ids(store, pinecone_server):
    # One of the three requests keeps answering 500 (Retry-After: 0 keeps the SDK's retries fast).
    pinecone_server.fail_ids({"Report:r01234"}, status=500, retry_after=0)
    batch = records(2500)

    result = store.upsert(batch)

    sent = upserts(pinecone_server)
    failed_request = next(r for r in pinecone_server.requests_to("/vectors/upsert") if r.status == 500)
    assert set(result.failed) == set(failed_request.ids)
    assert result.retryable == set(failed_request.ids)
    assert "Report:r01234" in result.failed and len(result.failed) <= 1000
    assert result.written == 2500 - len(result.failed)
    assert pinecone_server.vector_ids(NAMESPACE) == sorted(set(r.id for r in batch) - set(result.failed))
    assert [status for status, _ in sent].count(500) == 4  # the SDK's own 3 retries


# -- transient failures -----------------------------------------------------------------------------

def test_a_short_rate_limit_is_ridden_out_by_the_sdk(store, pinecone_server):
    pinecone_server.fail_next(429, times=2, retry_after=0.05, path="/vectors/upsert")

    result = store.upsert(records(10))

    assert (result.written, result.failed) == (10, {})
    assert upserts(pinecone_server) == [(429, 10), (429, 10), (200, 10)]


def test_a_longer_rate_limit_is_retryable_with_retry_after_then_succeeds(store, pinecone_server):
    pinecone_server.fail_next(429, times=4, retry_after=0.05, path="/vectors/upsert")

    with pytest.raises(RetryableStoreError) as raised:
        store.upsert(records(10))

    assert raised.value.retry_after == pytest.approx(0.05)
    assert "HTTP 429" in str(raised.value)
    assert pinecone_server.vector_ids(NAMESPACE) == []
    assert store.upsert(records(10)).written == 10  # the limit has lifted


def test_a_500_then_success(store, pinecone_server):
    pinecone_server.fail_next(500, times=1, path="/vectors/upsert")

    result = store.upsert(records(5))

    assert (result.written, result.failed) == (5, {})
    assert upserts(pinecone_server) == [(500, 5), (200, 5)]


def test_a_500_on_every_attempt_raises_retryable_and_stops_sending(store, pinecone_server):
    pinecone_server.fail_next(500, times=1000, retry_after=0, message="upstream connect error")

    with pytest.raises(RetryableStoreError) as raised:
        store.upsert(records(2500))

    message = str(raised.value)
    assert "HTTP 500" in message and "every attempt" in message and "upstream connect error" in message
    assert raised.value.retry_after is None
    # Two requests, four attempts each; the third request is not sent into a failing service.
    assert len(upserts(pinecone_server)) == 8
    assert pinecone_server.vector_ids(NAMESPACE) == []


def test_503_on_reads_is_retryable(store, pinecone_server):
    pinecone_server.fail_next(503, times=4, retry_after=0, path="/vectors/fetch")

    with pytest.raises(RetryableStoreError, match="HTTP 503"):
        store.fetch(["Report:r00001"])


def test_a_slow_attempt_is_retried_by_the_sdk(pinecone_server):
    store = make_store(pinecone_server, timeout=0.3)
    try:
        pinecone_server.hang_next(times=1, seconds=2, path="/vectors/upsert")

        result = store.upsert(records(5))
    finally:
        store.close()

    assert result.written == 5
    assert upserts(pinecone_server) == [(0, 5), (200, 5)]


def test_the_operation_deadline_bounds_a_hanging_service(pinecone_server):
    store = make_store(pinecone_server, timeout=0.2, operation_timeout=1.0)
    pinecone_server.hang_next(times=100, seconds=3)
    started = time.monotonic()
    try:
        with pytest.raises(RetryableStoreError, match="1 s operation deadline"):
            store.upsert(records(5))
    finally:
        store.close()

    assert time.monotonic() - started < 2.0
    assert pinecone_server.vector_ids(NAMESPACE) == []


@pytest.mark.slow
def test_timeouts_on_every_attempt_are_retryable(pinecone_server):
    # Bounded by the SDK's own schedule: 4 attempts of 0.1 s plus jittered backoff (< 10 s).
    store = make_store(pinecone_server, timeout=0.1)
    pinecone_server.hang_next(times=4, seconds=1, path="/describe_index_stats")
    try:
        with pytest.raises(RetryableStoreError, match="timed out on every attempt"):
            store.stats()
    finally:
        store.close()
    assert len(pinecone_server.requests_to("/describe_index_stats")) == 4


@pytest.mark.slow
def test_an_unreachable_host_is_retryable(pinecone_server):
    store = make_store(pinecone_server)
    pinecone_server.stop()
    try:
        with pytest.raises(RetryableStoreError, match="cannot reach Pinecone"):
            store.ping()
    finally:
        store.close()


def test_an_unreachable_host_is_named_even_when_the_sdks_retries_outlast_the_deadline(pinecone_server):
    """The SDK retries a refused connection with jittered backoff (at least 0.75 s for its three
    retries, up to about 10 s): past the store's deadline the error still says what failed."""
    store = make_store(pinecone_server, timeout=0.2, operation_timeout=0.3)
    pinecone_server.stop()
    try:
        with pytest.raises(RetryableStoreError, match=r"cannot reach Pinecone .* ran past the 0.3 s operation "
                                                      r"deadline") as raised:
            store.stats()
    finally:
        store.close()
    assert "ConnectionRefusedError" in str(raised.value)


# -- credentials -------------------------------------------------------------------------------------

def test_a_rejected_key_is_permanent_and_never_shown(pinecone_server):
    secret = "pcsk_9b1e7d_not_the_right_key_for_this_index"
    store = make_store(pinecone_server, api_key=secret)
    try:
        with pytest.raises(PermanentStoreError, match="Pinecone rejected the API key") as raised:
            store.upsert(records(3))
        with pytest.raises(PermanentStoreError, match="HTTP 401"):
            store.ping()
    finally:
        store.close()

    shown = "".join(traceback.format_exception(raised.value)) + repr(raised.value) + repr(store)
    assert secret not in shown
    assert [r.status for r in pinecone_server.requests] == [401, 401]  # never retried
    assert pinecone_server.vector_ids(NAMESPACE) == []


def test_a_forbidden_answer_is_permanent(store, pinecone_server):
    pinecone_server.fail_next(403, message="Forbidden: key lacks write access")

    with pytest.raises(PermanentStoreError, match="HTTP 403"):
        store.upsert(records(1))


def test_another_4xx_is_permanent_with_pinecones_message(store, pinecone_server):
    pinecone_server.fail_next(400, path="/vectors/list", message="Prefix is not supported here")

    with pytest.raises(PermanentStoreError, match="Prefix is not supported here"):
        list(store.list_ids("Report:"))
