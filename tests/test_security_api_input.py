"""Hostile input to the dashboard and its JSON API is a clear 4xx that writes nothing (issue 18,
defect 7, the dashboard half): null in optional fields, NaN/Infinity, lone surrogates, deep
nesting and 5,000-digit numbers in a body; extreme aware times (`OverflowError` on SQLite);
uncapped or out-of-range `ids`; conflict edits the graph cannot hold (`1e300` for an integer
field, an object, null). The mechanisms: `dashboard.api.body`, `nightingale.times.parse_time`,
`sync.deadletters.select`, `sync.conflicts.review.check_edit`."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from dashboard import tokens
from nightingale import times
from sync.conflicts.records import ConflictError
from sync.conflicts.review import check_edit, parse_edit
from sync.models import AuditEntry, Conflict, SyncEvent
from sync.observe.models import Alert
from sync.writes import write_entity
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

EXTREME_TIMES = ["9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59.999999+00:00", "0001-01-01T00:00:00+14:00",
                 "0001-01-01", "9999-12-31"]


@pytest.fixture
def conflicts(graph, vectors, settings):
    settings.CONFLICT_RULES = {"prospect_metadata": "ask_analyst", "vulnerability_score": "ask_analyst"}
    write_entity("Prospect", "acme", {"name": "Acme Energy", "sector": "energy", "tier": "2"}, source="crm")
    write_entity("Prospect", "acme", {"sector": "utilities"}, source="enrichment")
    write_entity("Vulnerability", "CVE-2024-3400", {"cve_id": "CVE-2024-3400", "cvss_score": 9}, source="nvd")
    write_entity("Vulnerability", "CVE-2024-3400", {"cvss_score": 7}, source="blog")
    return {c.label: c for c in Conflict.objects.filter(status="open")}


@pytest.fixture
def analyst(db):
    user = make_user("ana", "analyst")
    return user, tokens.create(user, "script")[1]


def api(token, path, body: bytes | dict, method="post"):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if method == "get":
        return Client().get(path, body, **headers)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Client().post(path, raw, content_type="application/json", **headers)


def written(graph=None):
    nodes = graph.get_entities([("Prospect", "acme"), ("Vulnerability", "CVE-2024-3400")]) if graph else {}
    return (AuditEntry.objects.exclude(action__startswith="api_token.").count(),
            list(SyncEvent.objects.values_list("id", "status")), list(Conflict.objects.values_list("id", "status")),
            list(Alert.objects.values_list("id", "acknowledged_at")),
            sorted((key, node.version) for key, node in nodes.items()))


def test_null_in_an_optional_field_is_the_field_left_out(analyst, graph, vectors):
    user, token = analyst
    write_entity("ThreatActor", "apt29", {"name": "APT29"}, source="misp")
    event = SyncEvent.objects.create(label="ThreatActor", uid="apt29", status="dead", attempts=8, last_error="x")
    alert = Alert.objects.create(rule="dead_letters", severity="warning", summary="1 dead letter")
    assert api(token, "/api/v1/dead-letters/discard", {"ids": [event.pk], "note": None, "label": None}).status_code == 200
    response = api(token, "/api/v1/resync", {"entity": "ThreatActor:apt29", "priority": None, "note": None})
    assert response.status_code == 200, response.content
    assert api(token, f"/api/v1/alerts/{alert.pk}/acknowledge", {"note": None}).status_code == 200
    assert api(token, "/api/v1/reconciliations", {"mode": None}).json()["error"] == "mode is required"


@pytest.mark.parametrize("raw", [
    b'{"ids": [1, NaN]}', b'{"note": Infinity}', b'{"note": -Infinity}', b'{"note": "\\ud800 x"}',
    b'{"note": "\xed\xa0\x80"}', b'{"ids": [' + b"9" * 5000 + b"]}", b"[" * 100_000 + b"]" * 100_000,
    b'{"note": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}",
    b'{"ids": [[[[[[[[[[1]]]]]]]]]]}',
], ids=["nan", "infinity", "-infinity", "surrogate-escape", "surrogate-bytes", "5000-digits", "deep-list",
        "deep-object", "nested-9"])
def test_a_body_json_does_not_allow_is_a_400(analyst, raw):
    _, token = analyst
    before = written()
    response = api(token, "/api/v1/dead-letters/discard", raw)
    assert response.status_code == 400, response.content
    assert written() == before


@pytest.mark.parametrize("ids", [list(range(1, 10_002)), [2**63], [0], [-4]], ids=["10001", "2^63", "0", "negative"])
def test_ids_are_capped_and_in_range_on_both_doors(analyst, admin_user, ids):
    _, token = analyst
    before = written()
    assert api(token, "/api/v1/dead-letters/retry", {"ids": ids}).status_code == 400
    client = Client()
    client.force_login(admin_user)
    assert client.post("/queue/dead/retry", {"ids": ",".join(map(str, ids[:20_000]))}).status_code == 400
    assert client.get("/queue/dead/confirm", {"action": "retry", "ids": str(ids[-1])}).status_code \
        == (200 if ids[-1] == 10_001 else 400)
    assert written() == before


@pytest.mark.parametrize("when", EXTREME_TIMES)
def test_an_extreme_time_is_a_400_wherever_a_time_is_read(analyst, admin_user, when):
    _, token = analyst
    client = Client()
    client.force_login(admin_user)
    before = written()
    for path, params in [("/audit/", {"since": when}), ("/audit/", {"until": when}),
                         ("/audit/", {"before": f"{when}_3"}), ("/audit/export.csv", {"since": when}),
                         ("/conflicts/", {"as_of": when}), ("/queue/dead/", {"label": "KEV", "as_of": when}),
                         ("/conflicts/bulk/confirm", {"action": "dismiss", "as_of": when})]:
        response = client.get(path, params)
        assert response.status_code == 400, (path, params, response.status_code)
    assert api(token, "/api/v1/audit", {"since": when}, method="get").status_code == 400
    response = api(token, "/api/v1/dead-letters/retry", {"label": "KEV", "as_of": when})
    assert response.status_code == 400 and response.json()["field"] == "as_of"
    assert client.post("/conflicts/bulk/dismiss", {"as_of": when, "note": "n"}).status_code == 400
    assert written() == before


@given(text=st.text(max_size=40) | st.datetimes(timezones=st.timezones()).map(datetime.isoformat))
def test_a_parsed_time_is_one_the_database_can_convert(text):
    try:
        parsed = times.parse_time(text, "as_of")
    except times.BadTime:
        return
    if parsed is not None:  # a day either side, in UTC, stays inside what datetime holds
        in_utc = parsed.astimezone(UTC)
        assert in_utc - timedelta(days=1) < in_utc + timedelta(days=1)


@pytest.mark.parametrize(("field", "edit"), [
    ("cvss_score", 10**30), ("cvss_score", 2**63), ("cvss_score", "9"), ("cvss_score", None),
    ("cvss_score", [1, 2]), ("sector", {"a": 1}), ("sector", None), ("sector", ["a", 1]), ("sector", ["a", ["b"]]),
    ("sector", "x" * 2001), ("sector", 5),
])
def test_an_api_edit_the_graph_cannot_hold_is_a_400(analyst, conflicts, graph, field, edit):
    _, token = analyst
    conflict = conflicts["Vulnerability" if field == "cvss_score" else "Prospect"]
    before = written(graph)
    response = api(token, f"/api/v1/conflicts/{conflict.pk}/resolve",
                   {"choice": "merged" if conflict.proposal else "graph", "note": "n", "edits": {field: edit},
                    "seen_version": conflict.graph_version})
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]
    assert written(graph) == before


@pytest.mark.parametrize("typed", ["1e300", "-1e300", "nan", "inf", "-inf", "1" * 30, "9223372036854775808"])
def test_a_page_edit_the_graph_cannot_hold_is_a_400(admin_user, conflicts, graph, typed):
    conflict = conflicts["Vulnerability"]
    client = Client()
    client.force_login(admin_user)
    before = written(graph)
    response = client.post(f"/conflicts/{conflict.pk}/resolve", {
        "choice-cvss_score": "edit", "edit-cvss_score": typed, "version": str(conflict.graph_version),
        "note": "vendor advisory"})
    assert response.status_code == 400, response.content
    assert b"cvss_score" in response.content and b"nothing was written" in response.content
    assert written(graph) == before


def test_a_good_edit_still_resolves(admin_user, conflicts, graph):
    conflict = conflicts["Vulnerability"]
    client = Client()
    client.force_login(admin_user)
    response = client.post(f"/conflicts/{conflict.pk}/resolve", {
        "choice-cvss_score": "edit", "edit-cvss_score": "8", "version": str(conflict.graph_version),
        "note": "vendor advisory"})
    assert response.status_code == 302
    assert graph.get_entities([("Vulnerability", "CVE-2024-3400")])[("Vulnerability", "CVE-2024-3400")] \
        .properties["cvss_score"] == 8


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)


@given(value=JSON, like=st.sampled_from([9, 7.5, "energy", ["a", "b"], True, None]))
def test_an_edit_that_passes_is_one_the_graph_holds(value, like):
    try:
        kept = check_edit("field", value, like)
    except ConflictError:
        return
    items = kept if isinstance(kept, list) else [kept]
    assert kept is not None and not isinstance(kept, dict)
    for item in items:
        assert isinstance(item, bool | int | float | str)
        assert not isinstance(item, float) or math.isfinite(item)
        assert not isinstance(item, int) or -(2**63) <= item < 2**63
    assert len({type(item) is str for item in items}) <= 1


@given(typed=st.text(max_size=40), like=st.sampled_from([9, 7.5, "energy", ["a", "b"], True]))
def test_a_typed_edit_is_a_value_or_a_conflict_error(typed, like):
    try:
        value = parse_edit("field", typed, like)
    except ConflictError:
        return
    check_edit("field", value, like)  # what the page parses, the engine accepts
