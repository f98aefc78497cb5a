"""Issue 18, defects 2 and 7 (the ingest API): a null cannot clear the way past the conflict rules;
a token can claim only the sources and labels it is bound to; no body gets a 500, and a refused
batch writes nothing."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings
from hypothesis import event, given
from hypothesis import strategies as st

from sync.conflicts import rules
from sync.ingest.tokens import digest
from sync.models import AuditEntry, Conflict, IngestToken, SyncEvent
from sync.writes import write_entity
from tests.conftest import make_user
from tests.test_settings import run_check

pytestmark = pytest.mark.django_db(transaction=True)

FEED = "ngi_feed-token-for-these-tests-0123"


def bind(token: str, sources, labels) -> IngestToken:
    return IngestToken.objects.create(name=f"feed {token[-4:]}", prefix=token[:12], digest=digest(token),
                                      sources=list(sources), labels=list(labels))


@pytest.fixture
def feed(db):
    """A token for the feed `misp`, which may write threat actors, malware and reports."""
    return bind(FEED, ["misp"], ["ThreatActor", "Malware", "Report"])


def post(client, body, token=FEED):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post("/api/v1/entities", data=data, content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {token}")


def stored(graph, label, uid):
    found = graph.get_entities([(label, uid)])
    return found[(label, uid)].properties if (label, uid) in found else None


def snapshot(graph) -> tuple:
    """What a write would change: how many entities, and their versions together."""
    with graph.driver.session(database=settings.NEO4J_DATABASE) as session:
        row = session.run("MATCH (n) WHERE NOT n:_SyncTombstone "
                          "RETURN count(n) AS n, sum(coalesce(n.version, 0)) AS v").single()
    return row["n"], row["v"], SyncEvent.objects.count()


# --- 2a. a null is a dispute like any other value -------------------------------------------------

def test_a_null_cannot_clear_a_kev_severity_for_the_next_write(synced_graph, vectors):
    kev = {"defer_vectors": True}  # the rules are the point here, not the dual-write's embedding
    write_entity("KEV", "CVE-2021-44228", {"cve_id": "CVE-2021-44228", "severity": "critical"}, source="cisa-kev",
                 **kev)
    write_entity("KEV", "CVE-2021-44228", {"severity": None}, source="blog", **kev)
    assert stored(synced_graph, "KEV", "CVE-2021-44228")["severity"] == "critical"
    write_entity("KEV", "CVE-2021-44228", {"severity": "low"}, source="blog", **kev)
    assert stored(synced_graph, "KEV", "CVE-2021-44228")["severity"] == "critical"
    # Both attempts are on the record, each settled by the rule, and audited.
    settled = Conflict.objects.filter(uid="CVE-2021-44228", status="auto_resolved").order_by("id")
    assert [(c.other_side, c.resolved_values) for c in settled] == [
        ({"severity": None}, {"severity": "critical"}), ({"severity": "low"}, {"severity": "critical"})]
    assert AuditEntry.objects.filter(action="conflict.auto_resolve", target="KEV:CVE-2021-44228").count() == 2


@pytest.mark.parametrize(("kind", "rule", "label", "field", "value"), [
    ("prospect_metadata", "most_recent", "Prospect", "sector", "energy"),
    ("threat_severity", "last_write_wins", "ThreatActor", "severity", "high"),
    ("vulnerability_score", "authoritative_source", "Vulnerability", "cvss_score", 7.5),
])
def test_a_null_the_rule_would_adopt_goes_to_an_analyst(synced_graph, vectors, settings, kind, rule, label,
                                                       field, value):
    settings.CONFLICT_RULES = {kind: rule}
    write_entity(label, "x1", {field: value}, source="vendor-a")
    write_entity(label, "x1", {field: None, "note": "the rest of the write goes in"}, source="vendor-b")
    after = stored(synced_graph, label, "x1")
    assert after[field] == value and after["note"] == "the rest of the write goes in"
    conflict = Conflict.objects.get(status="open")
    assert (conflict.kind, conflict.proposal, conflict.other_side) == (kind, {field: None}, {field: None})
    assert f"it would remove the {field} another source set" in conflict.explanation


def test_a_source_may_still_clear_its_own_value(synced_graph, vectors):
    write_entity("ThreatActor", "apt29", {"severity": "high"}, source="misp")
    write_entity("ThreatActor", "apt29", {"severity": None}, source="misp")
    assert "severity" not in stored(synced_graph, "ThreatActor", "apt29")
    assert not Conflict.objects.exists()


VALUES = st.one_of(st.sampled_from(rules.SEVERITIES), st.floats(0, 10), st.text(min_size=1, max_size=6),
                   st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=3))
GOVERNED = [(label, name) for label, fields in rules.GOVERNED.items() for name in fields]
STAMPS = st.none() | st.datetimes(timezones=st.just(UTC), min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1))


@given(where=st.sampled_from(GOVERNED), rule=st.sampled_from(sorted(rules.RULES)), stored_value=VALUES,
       graph_source=st.sampled_from(["cisa-kev", "misp", "crm"]), incoming_source=st.sampled_from(["cisa", "otx", "blog"]),
       confidence=st.none() | st.floats(0, 1), graph_at=STAMPS, incoming_at=STAMPS)
def test_no_rule_removes_another_sources_value_without_an_analyst(where, rule, stored_value, graph_source,
                                                                 incoming_source, confidence, graph_at, incoming_at):
    label, name = where
    kind = rules.GOVERNED[label][name]
    current = {name: stored_value, rules.provenance_key(name): graph_source}
    with override_settings(CONFLICT_RULES={kind: rule}):
        assert rules.disputes(label, current, {name: None}, incoming_source) == {kind: [name]}
        proposal = rules.propose(kind, label, rules.Side({name: stored_value}, graph_source, 0.9, graph_at),
                                 rules.Side({name: None}, incoming_source, confidence, incoming_at))
    assert proposal.ask_analyst or proposal.values.get(name) is not None


# --- 2b. a token claims only its sources and labels ------------------------------------------------

def test_a_claim_outside_the_tokens_sources_or_labels_is_refused_audited_and_writes_nothing(client, feed, graph,
                                                                                           vectors):
    actor = {"label": "ThreatActor", "uid": "apt29", "source": "misp", "properties": {"name": "APT29"}}
    before = snapshot(graph)
    for body, field, says in [
        (actor | {"source": "cisa-kev"}, "source", "may not claim the source 'cisa-kev'"),
        (actor | {"source": "MISP"}, "source", "may not claim the source 'MISP'"),
        (actor | {"label": "KEV", "uid": "CVE-2024-3400"}, "label", "may not write KEV entities"),
        ({"entities": [actor, actor | {"uid": "apt28", "source": "cisa"}]}, "entities[1].source", "'cisa'"),
    ]:
        response = post(client, body)
        assert response.status_code == 403, response.content
        assert response.json()["field"] == field and says in response.json()["error"]
    assert snapshot(graph) == before  # not even the batch's first, allowed, item
    denied = AuditEntry.objects.filter(action="ingest_token.denied").order_by("id")
    assert [(e.actor_name, e.target, e.after["claimed"]["source"]) for e in denied] == [
        ("ingest:feed 0123", "ThreatActor:apt29", "cisa-kev"), ("ingest:feed 0123", "ThreatActor:apt29", "MISP"),
        ("ingest:feed 0123", "KEV:CVE-2024-3400", "misp"), ("ingest:feed 0123", "ThreatActor:apt28", "cisa")]
    assert post(client, actor).status_code == 201


def test_a_feed_cannot_win_an_authoritative_dispute_by_naming_cisa(client, graph, vectors):
    write_entity("Vulnerability", "CVE-2024-3400", {"cvss_score": 10.0}, source="cisa-kev")
    bind("ngi_vendor-feed-token-000000000000", ["vendor-feed"], ["Vulnerability"])
    claim = {"label": "Vulnerability", "uid": "CVE-2024-3400", "properties": {"cvss_score": 5.0}}
    assert post(client, claim | {"source": "cisa-kev"}, "ngi_vendor-feed-token-000000000000").status_code == 403
    assert post(client, claim | {"source": "vendor-feed"}, "ngi_vendor-feed-token-000000000000").status_code == 200
    assert stored(graph, "Vulnerability", "CVE-2024-3400")["cvss_score"] == 10.0  # CISA's stands


def test_tokens_are_made_listed_and_revoked_by_command_hashed_and_audited(client, graph, vectors):
    admin = make_user("ingest-admin", "admin")
    make_user("ana", "analyst")
    out = io.StringIO()
    call_command("ingest_token", "create", "--name", "kev mirror", "--sources", "cisa-kev",
                 "--labels", "KEV,Vulnerability", "--user", "ingest-admin", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert token.startswith("ngi_") and "cisa-kev is an authoritative source" in out.getvalue()
    row = IngestToken.objects.get()
    assert (row.sources, row.labels, row.created_by) == (["cisa-kev"], ["KEV", "Vulnerability"], "ingest-admin")
    assert row.digest == digest(token) and token not in json.dumps(list(IngestToken.objects.values()), default=str)
    created = AuditEntry.objects.get(action="ingest_token.create")
    assert created.actor == admin and created.after["sources"] == ["cisa-kev"]
    listing = io.StringIO()
    call_command("ingest_token", "list", stdout=listing)
    assert row.prefix in listing.getvalue() and token not in listing.getvalue()
    vuln = {"label": "Vulnerability", "uid": "CVE-1", "source": "cisa-kev", "properties": {"title": "x"}}
    assert post(client, vuln, token).status_code == 201
    call_command("ingest_token", "revoke", row.prefix, "--user", "ingest-admin", stdout=io.StringIO())
    assert AuditEntry.objects.get(action="ingest_token.revoke").actor == admin
    assert post(client, vuln, token).status_code == 401
    with pytest.raises(CommandError, match="revoked already"):
        call_command("ingest_token", "revoke", str(row.pk))
    with pytest.raises(CommandError, match="unknown label 'Kev'"):
        call_command("ingest_token", "create", "--name", "x", "--sources", "a", "--labels", "Kev")
    with pytest.raises(CommandError, match="name the sources"):
        call_command("ingest_token", "create", "--name", "x", "--sources", " , ", "--labels", "KEV")
    with pytest.raises(CommandError, match="ana may not do this"):
        call_command("ingest_token", "create", "--name", "x", "--sources", "a", "--labels", "KEV", "--user", "ana")
    with pytest.raises(CommandError, match="no user 'ghost'"):
        call_command("ingest_token", "create", "--name", "x", "--sources", "a", "--labels", "KEV", "--user", "ghost")
    assert IngestToken.objects.count() == 1


@pytest.mark.parametrize("token", ["ngs_" + "a" * 43, FEED + "x", FEED[:-1], "x"])
def test_other_tokens_are_unknown(client, feed, token):
    response = post(client, {"label": "ThreatActor", "uid": "a", "source": "misp"}, token)
    assert response.status_code == 401


def test_the_old_unbound_token_setting_stops_start_up(tmp_path):
    result = run_check(tmp_path, INGEST_API_TOKENS="old-secret")
    assert result.returncode != 0
    assert "INGEST_API_TOKENS is no longer read" in result.stderr and "ingest_token create" in result.stderr
    assert "old-secret" not in result.stderr


# --- 7. every body is answered 4xx or written, never 500, and a refused batch writes nothing ------

OK = {"label": "ThreatActor", "uid": "ok-1", "source": "misp", "properties": {"name": "fine"}}


def raw(entity_text: str) -> str:
    """A batch whose first entity is fine and whose second is `entity_text` (JSON text)."""
    return '{"entities": [' + json.dumps(OK) + ", " + entity_text + "]}"


def second(properties: str, **fields) -> str:
    head = {"label": "ThreatActor", "uid": "ok-2", "source": "misp"} | fields
    return raw(json.dumps(head)[:-1] + ', "properties": ' + properties + "}")


@pytest.mark.parametrize(("body", "field", "says"), [
    ("[" * 100_000 + "]" * 100_000, "body", "nests too deeply"),
    (second('{"x": ' + "[" * 50_000 + "]" * 50_000 + "}"), "body", "nests too deeply"),
    (second('{"n": ' + "9" * 5000 + "}"), "entities[1].properties.n", "64 bits"),
    (second('{"n": -' + "9" * 5000 + "}"), "entities[1].properties.n", "64 bits"),
    (second('{"n": [1, ' + "9" * 5000 + "]}"), "entities[1].properties.n[1]", "64 bits"),
    (second('{"n": 9223372036854775808}'), "entities[1].properties.n", "64 bits"),
    (second('{"n": [1, -9223372036854775809]}'), "entities[1].properties.n[1]", "64 bits"),
    (raw('{"label": "ThreatActor", "uid": "ok-2", "source": "misp", "confidence": ' + "1" * 5000 + "}"),
     "entities[1].confidence", "from 0 to 1"),
    (raw('{"label": "ThreatActor", "uid": "ok-2", "source": "misp", "expected_version": 9223372036854775808}'),
     "entities[1].expected_version", "non-negative integer"),
    (second('{"x": [1.5, NaN]}'), "entities[1].properties.x[1]", "finite"),
    (second('{"x": [Infinity]}'), "entities[1].properties.x[0]", "finite"),
    (second('{"x": -Infinity}'), "entities[1].properties.x", "finite"),
    (second('{"x": [1e999]}'), "entities[1].properties.x[0]", "finite"),
    (second('{"x": "\\ud800"}'), "entities[1].properties.x", "valid Unicode"),
    (second('{"x": ["a", "\\udfff b"]}'), "entities[1].properties.x[1]", "valid Unicode"),
    (raw('{"label": "ThreatActor", "uid": "\\ud800", "source": "misp"}'), "entities[1].uid", "text"),
    (raw('{"label": "ThreatActor", "uid": "a", "source": "misp\\udc00"}'), "entities[1].source", "text"),
    (second('{"name\\n": 1}'), "entities[1].properties.name\\n", "property names"),
    (raw('{"label": "ThreatActor\\n", "uid": "a", "source": "misp"}'), "entities[1].label", "label name"),
    (second(json.dumps({f"p{n}": n for n in range(501)})), "entities[1].properties", "at most 500 properties"),
    (second('{"x": [null]}'), "entities[1].properties.x", "one simple type"),
    (second('{"x": {"a": 1}}'), "entities[1].properties.x", "values must be"),
    (b'{"entities": [' + json.dumps(OK).encode() + b', {"label": "ThreatActor", "uid": "\xff\xfe"}]}', "body",
     "not valid JSON"),
])
def test_a_hostile_batch_is_refused_whole_with_the_field_named(client, feed, graph, body, field, says):
    before = snapshot(graph)
    response = post(client, body)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["field"] == field and says in response.json()["error"]
    assert snapshot(graph) == before


def test_a_body_past_the_upload_limit_is_413_in_json(client, feed, graph):
    big = {"entities": [OK | {"uid": f"u{n}", "properties": {"text": "x" * 900_000}} for n in range(3)]}
    response = post(client, big)
    assert response.status_code == 413 and response.json()["field"] == "body"


def test_a_stale_version_anywhere_in_a_batch_is_refused_before_anything_is_written(client, feed, graph, vectors):
    assert post(client, OK | {"uid": "old"}).status_code == 201
    before = snapshot(graph)
    response = post(client, {"entities": [OK, OK | {"uid": "old", "expected_version": 7}]})
    assert response.status_code == 409 and response.json()["version"] == 1 and response.json()["written"] == []
    assert snapshot(graph) == before
    # The same entity twice: its later mentions expect what the batch itself makes of it.
    twice = {"entities": [OK | {"uid": "old", "expected_version": 1}, OK | {"uid": "old", "expected_version": 2}]}
    assert post(client, twice).status_code == 200


HOSTILE_TEXT = st.sampled_from(["<script>alert(1)</script>", "'\"><img src=x onerror=alert(1)>", "\ud800",
                                "a\x00b", "\u202e\u200b", "ThreatActor\n", "=cmd|' /C calc'!A0", "é" * 40])
# Stand-ins replaced in the JSON text by what json.dumps cannot write: huge numbers, deep nesting.
BIG, DEEP = "\x01big\x01", "\x01deep\x01"
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), HOSTILE_TEXT,
                    st.sampled_from([BIG, DEEP]))
VALUES_ANY = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)
KEYS = st.one_of(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), st.text(max_size=8),
                 st.sampled_from(["version", "name_source", "severity", "uid", "name\n"]))
HOSTILE_ENTITY = st.fixed_dictionaries(
    {"label": st.sampled_from(["ThreatActor", "Malware", "Report"]) | st.sampled_from(["KEV", "Nope", "Contact"])
     | VALUES_ANY,
     "uid": st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True) | VALUES_ANY,
     "source": st.just("misp") | st.sampled_from(["cisa-kev", "", " misp "]) | VALUES_ANY},
    optional={"properties": st.dictionaries(KEYS, VALUES_ANY, max_size=5) | VALUES_ANY,
              "confidence": st.floats(allow_nan=True) | VALUES_ANY,
              "expected_version": st.integers(min_value=-1, max_value=3) | VALUES_ANY,
              "extra": VALUES_ANY})
# Mostly what a feed sends (so that writes happen too, and batches mix good and bad items), with a
# hostile value now and then.
FAIR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=30), HOSTILE_TEXT.filter(lambda t: t != "\ud800"),
                 st.lists(st.text(max_size=8), max_size=3),
                 st.lists(st.integers(-9, 9), max_size=3))
FEED_ENTITY = st.fixed_dictionaries(
    {"label": st.sampled_from(["ThreatActor", "Malware", "Report"]),
     "uid": st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), "source": st.just("misp")},
    optional={"properties": st.dictionaries(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True),
                                            st.one_of(*[FAIR] * 6, VALUES_ANY), max_size=5),
              "confidence": st.floats(0, 1)})
ENTITY = st.one_of(FEED_ENTITY, FEED_ENTITY, HOSTILE_ENTITY)
BODIES = st.one_of(FEED_ENTITY, ENTITY, st.fixed_dictionaries({"entities": st.lists(ENTITY, min_size=1, max_size=4) | VALUES_ANY}),
                   VALUES_ANY)


def encode(body, garble: bytes | None) -> bytes:
    text = json.dumps(body)  # NaN and Infinity written as such, lone surrogates as \ud800
    text = text.replace(json.dumps(BIG), "9" * 5000).replace(json.dumps(DEEP), "[" * 30_000 + "]" * 30_000)
    data = text.encode()
    if garble is not None:
        middle = len(data) // 2
        data = data[:middle] + garble + data[middle:]  # invalid UTF-8 somewhere in the body
    return data


@given(body=BODIES, garble=st.none() | st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
def test_any_body_is_answered_4xx_or_written_never_500(client, feed, graph, vectors, body, garble):
    before = snapshot(graph)
    response = post(client, encode(body, garble))
    event(f"answered {response.status_code}")  # --hypothesis-show-statistics: the mix of answers
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 400:
        assert "error" in response.json()
        assert snapshot(graph) == before, "a refused request wrote something"
