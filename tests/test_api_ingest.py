"""POST /api/v1/entities: token auth, validation with clear 4xx errors, both write modes."""

from __future__ import annotations

import json

import pytest

from sync.ingest.tokens import digest
from sync.models import IngestToken, SyncEvent

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ngi_test-ingest-token-0123456789"


@pytest.fixture(autouse=True)
def tokens(db):
    # An ingest token may claim only its sources and write only its labels (sync.ingest.tokens).
    IngestToken.objects.create(name="tests", prefix=TOKEN[:12], digest=digest(TOKEN),
                               sources=["misp", "cisa-kev"], labels=["ThreatActor", "KEV"])


def post(client, body, token=TOKEN, content_type="application/json"):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post("/api/v1/entities", data=data, content_type=content_type, **headers)


ACTOR = {"label": "ThreatActor", "uid": "apt29", "source": "misp", "confidence": 0.8,
         "properties": {"name": "APT29", "description": "SVR", "aliases": ["Cozy Bear", "The Dukes"]}}


def test_it_requires_a_token(client):
    assert post(client, ACTOR, token=None).status_code == 401
    response = post(client, ACTOR, token="wrong")
    assert response.status_code == 401 and response.json()["error"] == "unknown API token"


def test_it_writes_through_and_enqueues(client, synced_graph, vectors):
    response = post(client, ACTOR)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["version"], body["mode"], body["vector"], body["created"]) == (1, "write_through", "queued", True)
    assert SyncEvent.objects.filter(label="ThreatActor", uid="apt29").exists()
    again = post(client, ACTOR | {"expected_version": 1})
    assert again.status_code == 200 and again.json()["version"] == 2


def test_a_kev_entry_is_dual_written(client, synced_graph, vectors):
    response = post(client, {"label": "KEV", "uid": "CVE-2024-3400", "source": "cisa-kev",
                             "properties": {"cve_id": "CVE-2024-3400", "product": "PAN-OS",
                                            "short_description": "Command injection in GlobalProtect."}})
    assert response.status_code == 201, response.content
    assert response.json()["vector"] == "upserted"
    assert vectors.stats().total == 1


def test_a_batch_writes_every_entity(client, synced_graph, vectors):
    body = {"entities": [ACTOR, ACTOR | {"uid": "apt28", "properties": {"name": "APT28"}}]}
    response = post(client, body)
    assert response.status_code == 201
    assert [e["uid"] for e in response.json()["entities"]] == ["apt29", "apt28"]


@pytest.mark.parametrize(("body", "status", "field", "message"), [
    ("{not json", 400, None, "not valid JSON"),
    ([1, 2], 400, "body", "must be a JSON object"),
    (ACTOR | {"label": "Nope"}, 400, "label", "unknown label"),
    (ACTOR | {"label": "Bad Label!"}, 400, "label", "label name"),
    (ACTOR | {"uid": 42}, 400, "uid", "non-empty string"),
    (ACTOR | {"uid": ""}, 400, "uid", "non-empty string"),
    (ACTOR | {"uid": "x" * 600}, 400, "uid", "at most 512"),
    (ACTOR | {"source": ""}, 400, "source", "name where the data came from"),
    (ACTOR | {"confidence": 7}, 400, "confidence", "from 0 to 1"),
    (ACTOR | {"expected_version": -1}, 400, "expected_version", "non-negative"),
    (ACTOR | {"extra": 1}, 400, "extra", "unknown fields"),
    (ACTOR | {"properties": {"version": 9}}, 400, "properties.version", "set by the sync engine"),
    (ACTOR | {"properties": {"nested": {"a": 1}}}, 400, "properties.nested", "values must be"),
    (ACTOR | {"properties": {"mixed": ["a", 1]}}, 400, "properties.mixed", "one simple type"),
    (ACTOR | {"properties": {"text": "x" * 1_000_001}}, 400, "properties.text", "longer than"),
    ({"entities": []}, 400, "entities", "non-empty list"),
])
def test_bad_input_gets_a_clear_error_and_writes_nothing(client, synced_graph, body, status, field, message):
    response = post(client, body)
    assert response.status_code == status
    payload = response.json()
    assert message in payload["error"]
    if field:
        assert payload["field"] == field
    assert not SyncEvent.objects.exists()


def test_it_wants_json(client):
    assert post(client, "uid=1", content_type="application/x-www-form-urlencoded").status_code == 415


def test_a_stale_expected_version_is_a_conflict(client, synced_graph, vectors):
    post(client, ACTOR)
    response = post(client, ACTOR | {"expected_version": 5})
    assert response.status_code == 409
    assert response.json()["version"] == 1


def test_html_in_threat_text_is_stored_as_text_not_markup(client, synced_graph, vectors):
    evil = ACTOR | {"uid": "evil", "properties": {"name": "X", "description": "<script>alert(1)</script>Real text"}}
    assert post(client, evil).status_code == 201
    entity = synced_graph.get_entities([("ThreatActor", "evil")])[("ThreatActor", "evil")]
    assert entity.properties["description"] == "<script>alert(1)</script>Real text"  # graph keeps the source
