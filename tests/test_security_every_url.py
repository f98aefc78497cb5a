"""Every URL, every parameter: each route of the URLconf (found as tests/test_pages.py finds them,
so a route added later is covered without being listed here) is sent hostile query strings, form
bodies and JSON bodies — wrong types, nulls, huge numbers, nested values, invalid UTF-8, extreme
dates, HTML and script — by an admin (a session for the pages, an admin's bearer token for the
JSON API, an ingest token for the ingest API), so every access check passes and the handlers
themselves run. Requests are built from the parameters the views read, each given a plausible
value (the real conflict's version, a dead letter's number, a time now) or a hostile one, so they
get past the first check into the engine.

The properties: never a 500 (the test client re-raises a view's exception, so one shows here
with its traceback), and a request answered 4xx writes nothing: no audit entry (but the record of
its own refusal, e.g. `ingest_token.denied`), sync event, conflict, reconciliation run or
acknowledgement, and no new graph version.

Examples per URL and method: the loaded Hypothesis profile's max_examples / 20 (3 under "ci",
100 under HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard import tokens
from sync.ingest import tokens as ingest_tokens
from sync.models import AuditEntry, Conflict, ReconcileRun, SyncEvent
from sync.observe.models import Alert
from sync.writes import write_entity
from tests.conftest import make_user
from tests.test_pages import routes

pytestmark = pytest.mark.django_db

EXAMPLES = max(3, settings.default.max_examples // 20)
ROUTES = [name for name, _ in routes()]
PROBES = {"healthz", "readyz"}  # "not ready" (503) is a probe's answer, not a failure
JSON_ROUTES = {name for name, view in routes() if getattr(view, "api_access", None)} | {"api-entities"}
NODES = [("ThreatActor", "apt29"), ("Prospect", "acme"), ("Vulnerability", "CVE-2024-3400"), ("Deal", "d-1")]

# Placeholders a request carries, replaced by the real objects' values when it is sent.
REAL = ("__VERSION__", "__EVENT__", "__NOW__", "__ALERT__")
EXTREMES = (
    "", " ", "null", "None", "true", "false", "-1", "0", "1", "1.5", "1e300", "-1e300", "NaN", "nan", "inf",
    "Infinity", "-Infinity", "9" * 30, "-" + "9" * 20, "9" * 5000, "18446744073709551616", "9223372036854775808",
    "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59.999999+00:00", "0001-01-01T00:00:00+14:00",
    "0001-01-01", "9999-12-31", "2024-02-30", "2024-06-01T12:00:00", "9999-12-31T23:59:59-14:00_1",
    "<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "javascript:alert(1)", "\x00", "a\nb",
    "\u202e\u200b", "é" * 300, "x" * 5000, "../../etc/passwd", "{}", "[]", '{"sector": "x"}', "a,b,,c", "1,2,x",
)
SCALAR = st.one_of(st.sampled_from(EXTREMES), st.sampled_from(REAL), st.text(max_size=30),
                   st.integers().map(str), st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()))
CHOICES = ("left", "right", "proposal", "edit", "graph", "other", "merged", "fields", "sideways")
EDITED = ("sector", "tier", "cvss_score")
# A plausible value for each name the views read: a request starts from these, so it gets past
# the first check into the handler, where one or a few of them are then made hostile.
VALID: dict[str, tuple[str, ...]] = {
    "q": ("apt", "Acme"), "label": ("ThreatActor", "Prospect", "Deal"), "status": ("open", "all", "in_sync"),
    "priority": ("high", "low"), "sort": ("-synced", "oldest", "newest", "entity"), "page": ("1", "2"),
    "kind": ("prospect_metadata", "graph", "analyst"), "k": ("10",), "v": ("0",), "ids": ("__EVENT__",),
    "group": ("",), "text": ("timed out",), "as_of": ("__NOW__",), "since": ("2020-01-01T00:00:00+00:00",),
    "until": ("__NOW__",), "before": ("__NOW___1",), "after": ("__NOW___1",), "scope": ("all", "entity", "label"),
    "action": ("retry", "discard", "proposal", "dismiss", "left", "right"), "mode": ("full", "incremental"),
    "dry_run": ("true",), "note": ("checked the registry",), "user": ("fuzz-admin",), "target": ("Prospect:",),
    "rule": ("ask_analyst",), "age": ("24h",), "field": ("sector",), "back": ("", "status=all"),
    "version": ("__VERSION__",), "uid": ("apt29",), "entity": ("ThreatActor:apt29",), "range": ("1h", "24h"),
    "severity": ("warning",), "confirm": ("1",),
    **{f"choice-{f}": ("edit", "edit", "left", "right", "proposal") for f in EDITED},
    **{f"edit-{f}": ("8", "energy", "a, b") for f in EDITED},
}
NUMBERS = st.sampled_from(["1e300", "-1e300", "nan", "inf", "-inf", "9" * 30, "9223372036854775808", "-0",
                           "7.5", "1,2", "true"])
TIMES = st.sampled_from(["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999+00:00",
                         "0001-01-01", "9999-12-31", "9" * 30])
HOSTILE: dict[str, st.SearchStrategy] = {
    "since": TIMES | SCALAR, "until": TIMES | SCALAR, "as_of": TIMES | SCALAR,
    "before": st.sampled_from(["__NOW___99999999999999999999", "9999-12-31T23:59:59-14:00_1"]) | SCALAR,
    "ids": st.sampled_from(["0", "-1", "9223372036854775808", "9" * 40, ",".join(["1"] * 20_000)]) | SCALAR,
    **{f"edit-{f}": NUMBERS | SCALAR for f in EDITED},
}
# The names each page reads, by URL name prefix (the first prefix that matches).
RELEVANT = (
    ("conflict-resolve", ("version", "note", "back", *(f"{k}-{f}" for f in EDITED for k in ("choice", "edit")))),
    ("conflict-dismiss", ("note", "back")),
    ("conflicts-bulk", ("action", "as_of", "note", "kind", "status", "label", "rule", "age", "field")),
    ("conflicts", ("kind", "status", "label", "rule", "age", "field", "as_of", "sort", "page")),
    ("conflict", ("back", "version", *(f"{k}-{f}" for f in EDITED for k in ("choice", "edit")))),
    ("audit", ("since", "until", "before", "after", "user", "action", "target")),
    ("api-audit", ("since", "until", "before", "user", "action", "target")),
    ("queue", ("ids", "label", "group", "text", "as_of", "scope", "action", "note")),
    ("entit", ("q", "label", "status", "priority", "sort", "page", "kind", "v")),
    ("search", ("q", "label", "k")),
    ("resync", ("scope", "label", "uid", "priority", "note", "entity")),
    ("reconciliation", ("mode", "dry_run", "kind", "page", "v")),
    ("alert", ("note", "status", "severity", "rule")),
    ("", ("range", "v")),
)
INVALID_UTF8 = ("%FF", "%C3%28", "%ED%A0%80", "%F4%90%80%80", "%80%80", "%FE%FF")


@st.composite
def query_strings(draw, route: str = "") -> str:
    """A query string or form body: the names the route reads, each plausible or left out, then
    one to three names (the route's or any) made hostile; now and then a name nobody reads, a
    repeated name, raw invalid UTF-8."""
    relevant = next(names for prefix, names in RELEVANT if route.startswith(prefix))
    values = {name: draw(st.sampled_from(VALID[name])) for name in relevant if draw(st.integers(0, 3))}
    everything = sorted({*relevant, *VALID})
    for name in draw(st.lists(st.sampled_from(everything) if not draw(st.integers(0, 3)) else st.sampled_from(relevant),
                              min_size=1, max_size=3)):
        values[name] = draw(HOSTILE.get(name, SCALAR))
    pairs = list(values.items())
    if draw(st.integers(0, 4)) == 0:
        pairs += draw(st.lists(st.tuples(st.sampled_from(everything) | st.text(max_size=8), SCALAR), max_size=2))
    encoded = urlencode(pairs)
    if draw(st.integers(0, 4)) == 0:
        encoded += ("&" if encoded else "") + f"{draw(st.sampled_from(everything))}=" \
                                             f"{draw(st.sampled_from(INVALID_UTF8))}"
    if draw(st.integers(0, 9)) == 0:
        encoded += ("&" if encoded else "") + f"{draw(st.sampled_from(INVALID_UTF8))}=1"
    return encoded


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=10**40),
                      st.floats(allow_nan=False, allow_infinity=False), st.floats(min_value=1e300),
                      st.text(max_size=30), SCALAR)
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = st.sampled_from(["sector", "tier", "cvss_score", "severity", "revenue", "name"])
API_FIELDS = ("ids", "label", "group", "text", "as_of", "scope", "note", "mode", "dry_run", "entity", "labels",
              "all", "priority", "choice", "fields", "edits", "seen_version")
# Bodies a JSON parser must refuse cleanly, whatever its defaults make of them.
RAW_JSON = (
    b"[" * 100_000 + b"]" * 100_000, b'{"note": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    b'{"ids": [' + b"9" * 5000 + b"]}", b'{"note": NaN}', b'{"ids": [1, Infinity]}',
    b'{"choice": "merged", "note": "n", "edits": {"cvss_score": -Infinity}}', b"\xff\xfe{}",
    b'{"note": "\xed\xa0\x80"}', b'{"note": "\\ud800"}', b'{"note": "a"', b"", b"null", b"1e400", b'"text"',
    b'{"a": 1, "a": 2}', b'{"ids": [' + b"1," * 20_000 + b"1]}", b'{"labels": [' + b'"KEV",' * 20_000 + b'"KEV"]}',
    b'{"choice": "merged", "note": "n", "edits": {"cvss_score": 1e300}}',
    b'{"choice": "merged", "note": "n", "edits": {"cvss_score": 100000000000000000000000}}',
    b'{"choice": "graph", "note": "n", "seen_version": 1e300}', b'{"note": null, "label": null, "priority": null}',
)


class Body(bytes):
    """A request body that a failing example prints short."""

    def __repr__(self) -> str:
        return repr(bytes(self[:200])) + (f"… ({len(self):,} bytes)" if len(self) > 200 else "")


@st.composite
def json_bodies(draw) -> Body:
    if draw(st.integers(0, 4)) == 0:
        return Body(draw(st.sampled_from(RAW_JSON)))
    body = draw(st.dictionaries(st.sampled_from(API_FIELDS), JSON_VALUE, max_size=5))
    if draw(st.integers(0, 3)):  # shaped like a resolution, so it reaches the engine's checks
        body.update(choice=draw(st.sampled_from(["graph", "other", "merged", "fields", None, 3])),
                    note=draw(st.sampled_from(["checked", None, "", 7])),
                    seen_version=draw(st.sampled_from(["__VERSION__", None, -1, 2**64])),
                    fields=draw(st.dictionaries(FIELDS, st.sampled_from(["graph", "other", "x", None]), max_size=3)),
                    edits=draw(st.dictionaries(FIELDS, JSON_LEAF | JSON_VALUE, max_size=3)))
    if draw(st.integers(0, 3)) == 0:  # shaped like an ingest item
        body = {"label": draw(st.sampled_from(["ThreatActor", "Prospect", "Deal", "KEV"])), "uid": draw(SCALAR),
                "source": "fuzz-feed", "properties": draw(st.dictionaries(st.text(max_size=8), JSON_VALUE, max_size=3))}
    return Body(json.dumps(body, allow_nan=True).encode())


@pytest.fixture
def world(graph, vectors, settings):
    """An admin, the tokens, and one object of each kind a URL names, in both stores: open
    conflicts on strings (a prospect) and on an integer score (a vulnerability)."""
    settings.CONFLICT_RULES = {"prospect_metadata": "ask_analyst", "vulnerability_score": "ask_analyst"}
    write_entity("ThreatActor", "apt29", {"name": "APT29", "severity": "high", "description": "Espionage."},
                 source="misp")
    write_entity("Prospect", "acme", {"name": "Acme Energy", "sector": "energy", "tier": "2"}, source="crm")
    write_entity("Prospect", "acme", {"sector": "utilities", "tier": "1"}, source="enrichment")
    write_entity("Vulnerability", "CVE-2024-3400", {"cve_id": "CVE-2024-3400", "cvss_score": 9}, source="nvd")
    write_entity("Vulnerability", "CVE-2024-3400", {"cvss_score": 7}, source="blog")
    write_entity("Deal", "d-1", {"amount": 125000, "currency": "EUR", "stage": "negotiation"}, source="crm")
    admin = make_user("fuzz-admin", "admin")
    event = SyncEvent.objects.create(label="ThreatActor", uid="apt29", status=SyncEvent.Status.DEAD, attempts=8,
                                     last_error="ReadTimeout: timed out", finished_at=timezone.now())
    run = ReconcileRun.objects.create(mode="full", status=ReconcileRun.Status.SUCCEEDED)
    alert = Alert.objects.create(rule="dead_letters", severity="warning", summary="1 dead letter")
    conflicts = {c.label: c for c in Conflict.objects.filter(status="open")}
    assert set(conflicts) == {"Prospect", "Vulnerability"}
    api_token = tokens.create(admin, "fuzz")[1]
    ingest_token = ingest_tokens.create("fuzz-feed", ["fuzz-feed"], ["ThreatActor", "Prospect", "KEV"])[1]
    client = Client()
    client.force_login(admin)
    return {"client": client, "api_token": api_token, "ingest_token": ingest_token, "event": event, "run": run,
            "alert": alert, "conflicts": conflicts, "graph": graph}


PK = st.sampled_from(["Vulnerability", "Prospect", "Vulnerability", "Prospect", 0, 999_999, 2**63, 10**30])
TEXT_ARG = st.sampled_from(["real", "Deal", "<b>x</b>", "x" * 300, "retry", "discard", "proposal", "dismiss",
                            "left", "right", "nope", "%FF"])


def path_for(name: str, world: dict, pk, text_arg: str) -> tuple[str, Conflict]:
    """A concrete path (the real objects' keys, or a hostile one in their place) and the conflict
    it is about, if any."""
    conflict = world["conflicts"][pk if isinstance(pk, str) else "Prospect"]
    numbers = {"reconciliation": world["run"].pk, "alert": world["alert"].pk, "conflict": conflict.pk}
    owner = next((k for k in numbers if name.startswith((k, f"api-{k}"))), "")
    number = numbers.get(owner, 1) if isinstance(pk, str) else pk
    word = {"queue-dead-act": "retry", "conflicts-bulk-act": "proposal", "api-dead-letters": "retry"}.get(name)
    keys = {
        "entity": ("Prospect", "acme") if text_arg == "real" else ("Deal", text_arg),
        "entity-record": ("ThreatActor", "apt29" if text_arg == "real" else text_arg),
    }
    if name in keys:
        label, uid = keys[name]
        return reverse(name, kwargs={"label": label, "uid": "UID"}).replace("UID", quote(uid, safe="%")), conflict
    if word:
        return reverse(name, kwargs={"action": "ACTION"}).replace("ACTION", quote(
            word if text_arg == "real" else text_arg, safe="%")), conflict
    try:
        return reverse(name, kwargs={"pk": number}), conflict
    except Exception:  # noqa: BLE001 — a route without a pk
        return reverse(name), conflict


def fill(text: str, world: dict, conflict: Conflict, *, json_body: bool = False) -> str:
    """The placeholders replaced by the real values (JSON numbers unquoted)."""
    values = {"__VERSION__": str(conflict.graph_version), "__EVENT__": str(world["event"].pk),
              "__NOW__": timezone.now().isoformat(), "__ALERT__": str(world["alert"].pk)}
    for token, value in values.items():
        if json_body and token != "__NOW__":
            text = text.replace(f'"{token}"', value)
        text = text.replace(token, quote(value, safe="") if not json_body else value)
    return text


# What a refusal itself records, by design: the audit trail keeps who tried what and was refused
# (an ingest token claiming a label or source it is not bound to, a role short of an action).
REFUSALS = ("ingest_token.denied", "access.denied")


def state(graph) -> tuple:
    """Everything a request could write: rows of the engine's tables and the nodes' versions (the
    audit entries of refusals apart: recording its own refusal is what a refusal should write)."""
    nodes = graph.get_entities(NODES)
    return (list(AuditEntry.objects.exclude(action__in=REFUSALS).values_list("id", flat=True)),
            list(SyncEvent.objects.order_by("id").values_list("id", "status", "attempts")),
            list(Conflict.objects.order_by("id").values_list("id", "status", "resolution")),
            list(ReconcileRun.objects.order_by("id").values_list("id", "status")),
            list(Alert.objects.order_by("id").values_list("id", "acknowledged_at")),
            sorted((key, entity.version) for key, entity in nodes.items()))


def send(world: dict, name: str, method: str, path: str, query: str, body: bytes):
    client = world["client"]
    headers = {}
    if name == "api-entities":
        headers["HTTP_AUTHORIZATION"] = f"Bearer {world['ingest_token']}"
    elif name in JSON_ROUTES:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {world['api_token']}"
    if method == "GET":
        return client.get(path, QUERY_STRING=query, **headers)
    content_type = "application/json" if name in JSON_ROUTES else "application/x-www-form-urlencoded"
    return client.generic("POST", path, body, content_type=content_type, **headers)


def check(world: dict, name: str, method: str, path: str, query: str = "", body: bytes = b"") -> None:
    before = state(world["graph"])
    response = send(world, name, method, path, query, body)
    content = b"".join(response.streaming_content) if response.streaming else response.content
    designed = response.status_code == 503 and name in PROBES
    assert response.status_code < 500 or designed, (name, method, path, query, Body(body), content[:500])
    if 400 <= response.status_code < 500:
        assert state(world["graph"]) == before, f"{name}: answered {response.status_code} but wrote"


@pytest.mark.parametrize("name", ROUTES)
@settings(max_examples=EXAMPLES)
@given(data=st.data(), pk=PK, text_arg=TEXT_ARG)
def test_a_hostile_query_string_is_never_a_500(world, name, data, pk, text_arg):
    path, conflict = path_for(name, world, pk, text_arg)
    check(world, name, "GET", path, query=fill(data.draw(query_strings(name), label="query"), world, conflict))


@pytest.mark.parametrize("name", ROUTES)
@settings(max_examples=EXAMPLES)
@given(data=st.data(), pk=PK, text_arg=TEXT_ARG)
def test_a_hostile_body_is_never_a_500_and_a_refusal_writes_nothing(world, name, data, pk, text_arg):
    path, conflict = path_for(name, world, pk, text_arg)
    if name in JSON_ROUTES:
        raw = data.draw(json_bodies(), label="body").decode("utf-8", "surrogateescape")
        body = fill(raw, world, conflict, json_body=True)
        check(world, name, "POST", path, body=body.encode("utf-8", "surrogateescape"))
    else:
        check(world, name, "POST", path, body=fill(data.draw(query_strings(name), label="form"), world,
                                                   conflict).encode())


def test_a_refused_ingest_claim_records_its_refusal_and_nothing_else(world):
    """What Hypothesis once drew: a label the ingest token is not bound to. The refusal (403) is
    audited, as designed, and that is all it writes."""
    before = AuditEntry.objects.filter(action="ingest_token.denied").count()
    check(world, "api-entities", "POST", "/api/v1/entities",
          body=b'{"label": "Deal", "uid": "null", "source": "fuzz-feed", "properties": {}}')
    assert AuditEntry.objects.filter(action="ingest_token.denied").count() == before + 1
