"""The JSON API for every dashboard action: role-scoped tokens (viewer tokens read, analyst
tokens act, revoked ones are refused), strict bodies (unknown field, wrong type, missing note →
4xx, nothing written), and each action audited as the token's user by the same engine call as
the page."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import URLPattern, get_resolver, reverse
from django.utils import timezone

from dashboard import tokens
from dashboard.models import ApiToken
from sync.ingest import tokens as ingest_tokens
from sync.models import AuditEntry, Conflict, ReconcileRun, SyncEvent
from sync.observe.models import Alert
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def api_routes() -> list[tuple[str, object]]:
    found = []

    def walk(patterns):
        for entry in patterns:
            if isinstance(entry, URLPattern):
                if getattr(entry.callback, "api_access", None):
                    found.append((entry.name, entry.callback))
            elif hasattr(entry, "url_patterns") and getattr(entry, "app_name", None) != "admin":
                walk(entry.url_patterns)

    walk(get_resolver().url_patterns)
    return found


ROUTES = api_routes()
ACTIONS = [name for name, view in ROUTES if "POST" in view.api_access.methods]
READS = [name for name, view in ROUTES if "GET" in view.api_access.methods]


@pytest.fixture
def objects(db):
    event = SyncEvent.objects.create(label="ThreatActor", uid="apt29", status="dead", attempts=8,
                                     last_error="ReadTimeout: timed out after 30.0 s", finished_at=timezone.now())
    alert = Alert.objects.create(rule="dead_letters", severity="warning", summary="1 dead letter is waiting")
    conflict = Conflict.objects.create(kind="threat_severity", label="ThreatActor", uid="apt29", graph_version=3,
                                       graph_side={"severity": "high"}, other_side={"severity": "low"})
    return {"event": event, "alert": alert, "conflict": conflict}


def url_for(name: str, objects: dict) -> str:
    kwargs = {"api-dead-letters": {"action": "retry"}, "api-alert-acknowledge": {"pk": objects["alert"].pk},
              "api-conflict-resolve": {"pk": objects["conflict"].pk}, "api-conflict-dismiss": {"pk": objects["conflict"].pk}}
    return reverse(name, kwargs=kwargs.get(name))


def token_for(role: str | None, name: str = "") -> tuple:
    user = make_user(name or f"script-{role}", role)
    return user, tokens.create(user, f"{role} script")[1]


def call(token, path, data=None, *, method="post", content_type="application/json", raw=None):
    client = Client(enforce_csrf_checks=True)  # a token needs no CSRF cookie
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    if method == "get":
        return client.get(path, data or {}, **headers)
    payload = raw if raw is not None else json.dumps(data if data is not None else {})
    return client.post(path, payload, content_type=content_type, **headers)


def state():
    """Everything an action could write."""
    return (list(SyncEvent.objects.order_by("id").values_list("id", "status")),
            list(ReconcileRun.objects.values_list("id", "status")),
            list(Alert.objects.values_list("id", "acknowledged_at")),
            list(Conflict.objects.values_list("id", "status")),
            list(AuditEntry.objects.exclude(action="access.denied").exclude(action__startswith="api_token.")
                 .values_list("id", flat=True)))


def test_the_routes_were_found():
    assert {"api-dead-letters", "api-reconciliations", "api-alert-acknowledge", "api-resync",
            "api-conflict-resolve", "api-conflict-dismiss"} <= set(ACTIONS)
    assert {"api-audit", "api-policy", "api-whoami"} <= set(READS)


@pytest.mark.parametrize("name", [n for n, _ in ROUTES])
def test_no_token_an_unknown_one_or_a_revoked_one_is_401(objects, name, viewer):
    url = url_for(name, objects)
    method = "get" if name in READS else "post"
    _, token = token_for("admin")
    row = ApiToken.objects.get(digest=tokens.digest(token))
    before = state()
    for presented in (None, "ngs_not-a-token", token[:-2] + "xx", "Basic abc"):
        response = call(presented, url, method=method)
        assert response.status_code == 401, (presented, response.content)
        assert "error" in response.json()
    client = Client()
    client.force_login(viewer)  # a session is not a token
    assert getattr(client, method)(url).status_code == 401
    tokens.revoke(row)
    response = call(token, url, method=method)
    assert response.status_code == 401 and response.json()["error"] == "unknown or revoked API token"
    assert state() == before


@pytest.mark.parametrize("name", ACTIONS)
def test_a_viewer_token_can_do_none_of_the_actions(objects, name):
    user, token = token_for("viewer")
    before = state()
    response = call(token, url_for(name, objects), {"scope": "all", "mode": "full", "all": True, "note": "x",
                                                    "choice": "graph"})
    assert response.status_code == 403 and response.json()["needs"] == "analyst"
    denied = AuditEntry.objects.get(action="access.denied")
    assert denied.actor == user and denied.after["token"] == ApiToken.objects.get(user=user).prefix
    assert state() == before
    assert call(token, url_for(name, objects), method="get").status_code == 405


@pytest.mark.parametrize("name", READS)
def test_a_viewer_token_reads(objects, name):
    _, token = token_for("viewer")
    response = call(token, url_for(name, objects), method="get")
    assert response.status_code == 200, response.content
    assert call(token, url_for(name, objects)).status_code == 405


def test_a_token_acts_with_its_users_role_now(objects):
    user, token = token_for("analyst")
    assert call(token, "/api/v1/whoami", method="get").json()["role"] == "analyst"
    call_command("set_role", user.username, "viewer", stdout=io.StringIO())
    assert call(token, "/api/v1/resync", {"entity": "ThreatActor:apt29"}).status_code == 403
    user.is_active = False
    user.save()
    assert call(token, "/api/v1/whoami", method="get").status_code == 401
    _, roleless = token_for(None, "nobody")
    assert call(roleless, "/api/v1/whoami", method="get").status_code == 403


BAD_BODIES = [
    ("api-dead-letters", {"ids": [1], "colour": "red"}, 400, "unknown field colour"),
    ("api-dead-letters", {"ids": "1,2"}, 400, "ids must be a list"),
    ("api-dead-letters", {"ids": [True]}, 400, "ids must be a list of integers"),
    ("api-dead-letters", {}, 400, "nothing selected"),
    ("api-dead-letters", {"ids": [1], "label": "KEV"}, 400, "either by ids or by filter"),
    ("api-dead-letters", {"label": "KEV", "as_of": "yesterday"}, 400, "as_of must be an ISO 8601 time"),
    ("api-reconciliations", {}, 400, "mode is required"),
    ("api-reconciliations", {"mode": "sideways"}, 400, "mode must be one of"),
    ("api-reconciliations", {"mode": "full", "dry_run": "yes"}, 400, "dry_run must be true or false"),
    ("api-alert-acknowledge", {"note": 3}, 400, "note must be a string"),
    ("api-resync", {}, 400, "exactly one of"),
    ("api-resync", {"entity": "apt29"}, 400, "entity takes Label:uid"),
    ("api-resync", {"entity": "Contact:jane"}, 400, "not a label the policy syncs"),
    ("api-resync", {"labels": ["Deal"]}, 400, "not synced by the policy: Deal"),
    ("api-resync", {"entity": "ThreatActor:x", "all": True}, 400, "exactly one of"),
    ("api-conflict-resolve", {"choice": "graph"}, 400, "note is required"),
    ("api-conflict-resolve", {"choice": "graph", "note": "   "}, 400, "note is required"),
    ("api-conflict-resolve", {"choice": "sideways", "note": "n"}, 400, "choose one of"),
    ("api-conflict-resolve", {"choice": "fields", "note": "n", "fields": {"severity": 1}}, 400, "fields maps"),
    ("api-conflict-resolve", {"choice": "graph", "note": "n", "seen_version": "3"}, 400, "seen_version must be an integer"),
    ("api-conflict-dismiss", {}, 400, "note is required"),
    ("api-conflict-dismiss", {"note": "n", "status": "dismissed"}, 400, "unknown field status"),
]


@pytest.mark.parametrize(("name", "data", "status", "message"), BAD_BODIES,
                         ids=[f"{n}-{m}" for n, _, _, m in BAD_BODIES])
def test_a_tampered_body_is_refused_and_nothing_is_written(objects, name, data, status, message):
    _, token = token_for("analyst")
    before = state()
    response = call(token, url_for(name, objects), data)
    assert response.status_code == status, response.content
    assert message in response.json()["error"]
    assert state() == before


@pytest.mark.parametrize("name", ACTIONS)
def test_a_body_that_is_not_a_json_object_is_refused(objects, name):
    _, token = token_for("analyst")
    before = state()
    url = url_for(name, objects)
    assert call(token, url, raw="{not json").status_code == 400
    assert call(token, url, raw="[1, 2]").json()["error"] == "the body must be a JSON object"
    assert call(token, url, raw="mode=full", content_type="application/x-www-form-urlencoded").status_code == 415
    assert state() == before


def test_retry_and_discard_dead_letters_audited_as_the_tokens_user(objects):
    user, token = token_for("analyst")
    event = objects["event"]
    response = call(token, "/api/v1/dead-letters/retry", {"ids": [event.pk, 999999]})
    assert response.status_code == 200 and response.json()["done"] == 1
    entry = AuditEntry.objects.get(action="dead_letter.retry")
    assert (entry.actor, entry.target) == (user, "ThreatActor:apt29")
    assert SyncEvent.objects.get(pk=event.pk).status == "queued"
    again = call(token, "/api/v1/dead-letters/retry", {"ids": [event.pk]}).json()
    assert (again["asked"], again["done"]) == (0, 0)
    dead = SyncEvent.objects.create(label="KEV", uid="CVE-1", status="dead", last_error="boom",
                                    finished_at=timezone.now())
    response = call(token, "/api/v1/dead-letters/discard", {"label": "KEV", "note": "feed withdrew it"})
    assert response.json()["done"] == 1 and SyncEvent.objects.get(pk=dead.pk).outcome == "discarded"
    assert AuditEntry.objects.get(action="dead_letter.discard").note == "feed withdrew it"
    later = SyncEvent.objects.create(label="KEV", uid="CVE-2", status="dead", last_error="boom",
                                     finished_at=timezone.now())
    earlier = (later.finished_at - timezone.timedelta(seconds=1)).isoformat()
    assert call(token, "/api/v1/dead-letters/retry", {"label": "KEV", "as_of": earlier}).json()["done"] == 0
    assert call(token, "/api/v1/dead-letters/notify", {"ids": [1]}).status_code == 404


def test_start_a_reconciliation_once(objects, settings):
    user, token = token_for("analyst")
    response = call(token, "/api/v1/reconciliations", {"mode": "full", "dry_run": True})
    assert response.status_code == 201
    run = ReconcileRun.objects.get(pk=response.json()["run"])
    assert (run.mode, run.dry_run, run.status, run.triggered_by) == ("full", True, "queued", user)
    assert AuditEntry.objects.get(action="reconcile.start").actor == user
    second = call(token, "/api/v1/reconciliations", {"mode": "incremental"})
    assert second.status_code == 409 and second.json()["run"] == run.pk


def test_acknowledge_an_alert(objects):
    user, token = token_for("analyst")
    alert = objects["alert"]
    response = call(token, f"/api/v1/alerts/{alert.pk}/acknowledge", {"note": "on it"})
    assert response.status_code == 200 and response.json()["acknowledged_by"] == user.username
    entry = AuditEntry.objects.get(action="alert.acknowledge")
    assert (entry.actor, entry.note) == (user, "on it")
    assert call(token, f"/api/v1/alerts/{alert.pk}/acknowledge").status_code == 409
    assert call(token, "/api/v1/alerts/999999/acknowledge").status_code == 404


def test_resync_an_entity(objects, graph, vectors):
    user, token = token_for("analyst")
    gone = call(token, "/api/v1/resync", {"entity": "KEV:CVE-2024-3400"})
    assert gone.status_code == 400 and "the graph holds no KEV" in gone.json()["error"]
    graph.import_entities("KEV", [{"uid": "CVE-2024-3400", "cve_id": "CVE-2024-3400"}], source="test")
    response = call(token, "/api/v1/resync", {"entity": "KEV:CVE-2024-3400"})
    assert response.status_code == 200
    assert SyncEvent.objects.filter(label="KEV", uid="CVE-2024-3400", status="queued", source="resync").exists()
    assert AuditEntry.objects.get(action="resync").actor == user


def test_resync_a_label(objects, graph, vectors):
    graph.import_entities("Malware", [{"uid": f"m{n}", "name": f"Malware {n}"} for n in range(3)], source="test")
    user, token = token_for("analyst")
    response = call(token, "/api/v1/resync", {"labels": ["Malware"]})
    assert response.json()["queued"] == {"Malware": 3}
    assert AuditEntry.objects.get(action="resync", target="Malware").actor == user


def test_a_resync_by_api_keeps_the_pages_rules(objects, graph, vectors, settings):
    """The same resync.start as the page and the command: the LOW lane unless told, HIGH only for
    a few entities, and the per-user rate limit (429 naming it)."""
    from sync.models import Priority
    from sync.resync import HIGH_MAX

    graph.import_entities("Malware", [{"uid": f"m{n}", "name": f"Malware {n}"} for n in range(HIGH_MAX + 1)],
                          source="test")
    settings.RESYNC_PER_MINUTE = 2
    user, token = token_for("analyst")
    assert call(token, "/api/v1/resync", {"entity": "Malware:m1"}).status_code == 200
    assert SyncEvent.objects.get(uid="m1").priority == Priority.LOW
    refused = call(token, "/api/v1/resync", {"labels": ["Malware"], "priority": "high"})
    assert refused.status_code == 400 and "HIGH is for at most" in refused.json()["error"]
    assert call(token, "/api/v1/resync", {"labels": ["Malware"], "priority": "medium"}).status_code == 200
    limited = call(token, "/api/v1/resync", {"entity": "Malware:m2"})
    assert limited.status_code == 429 and "the limit is 2" in limited.json()["error"]
    assert AuditEntry.objects.filter(action="resync", actor=user).count() == 2


def test_dismiss_a_conflict_then_resolving_it_is_refused(objects):
    user, token = token_for("analyst")
    conflict = objects["conflict"]
    response = call(token, f"/api/v1/conflicts/{conflict.pk}/dismiss", {"note": "duplicate report"})
    assert response.status_code == 200 and response.json()["status"] == "dismissed"
    entry = AuditEntry.objects.get(action="conflict.dismiss")
    assert (entry.actor, entry.note) == (user, "duplicate report")
    before = state()
    again = call(token, f"/api/v1/conflicts/{conflict.pk}/resolve", {"choice": "graph", "note": "n"})
    assert again.status_code == 409 and "already dismissed" in again.json()["error"]
    assert call(token, f"/api/v1/conflicts/{conflict.pk}/dismiss", {"note": "n"}).status_code == 409
    assert call(token, "/api/v1/conflicts/999999/dismiss", {"note": "n"}).status_code == 404
    assert state() == before


@pytest.mark.django_db(transaction=True)
def test_resolve_a_conflict_field_by_field_and_a_stale_one_is_refused(synced_graph, vectors, settings):
    from sync.writes import write_entity

    settings.CONFLICT_RULES = {"prospect_metadata": "ask_analyst"}
    write_entity("Prospect", "acme", {"name": "Acme Energy", "sector": "energy", "tier": "2"}, source="crm")
    write_entity("Prospect", "acme", {"sector": "utilities", "tier": "1"}, source="enrichment")
    conflict = Conflict.objects.get(status="open")
    user, token = token_for("analyst")
    stale = call(token, f"/api/v1/conflicts/{conflict.pk}/resolve",
                 {"choice": "other", "note": "n", "seen_version": conflict.graph_version - 1})
    assert stale.status_code == 409 and "changed since it was shown" in stale.json()["error"]
    assert not AuditEntry.objects.filter(action="conflict.resolve").exists()
    response = call(token, f"/api/v1/conflicts/{conflict.pk}/resolve",
                    {"choice": "fields", "fields": {"sector": "other"}, "edits": {"tier": "3"},
                     "note": "registry says utilities", "seen_version": conflict.graph_version})
    assert response.status_code == 200, response.content
    node = synced_graph.get_entities([("Prospect", "acme")])[("Prospect", "acme")]
    assert (node.properties["sector"], node.properties["tier"]) == ("utilities", "3")
    entry = AuditEntry.objects.get(action="conflict.resolve")
    assert (entry.actor, entry.note, entry.after) == (user, "registry says utilities", {"sector": "utilities", "tier": "3"})
    again = call(token, f"/api/v1/conflicts/{conflict.pk}/resolve", {"choice": "graph", "note": "n"})
    assert again.status_code == 409 and "already resolved" in again.json()["error"]


def test_read_the_audit_trail_and_the_policy(objects):
    _, token = token_for("viewer")
    AuditEntry.record("command", "resync", "KEV:CVE-1")
    entries = call(token, "/api/v1/audit", {"action": "resync"}, method="get").json()
    assert [e["target"] for e in entries["entries"]] == ["KEV:CVE-1"] and entries["older"] is None
    assert call(token, "/api/v1/audit", {"since": "soon"}, method="get").status_code == 400
    labels = {row["label"]: row for row in call(token, "/api/v1/policy", method="get").json()["labels"]}
    assert labels["KEV"]["priority"] == "high" and labels["Contact"]["synced"] is False


def test_the_token_command_shows_a_token_once_and_stores_only_its_digest(db):
    make_user("otto", "analyst")
    out = io.StringIO()
    call_command("api_token", "create", "otto", "--name", "nightly retry job", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    row = ApiToken.objects.get()
    assert token.startswith("ngs_") and row.digest == tokens.digest(token) and token not in str(vars(row))
    assert AuditEntry.objects.get(action="api_token.create").after["prefix"] == row.prefix
    assert row.last_used_at is None
    assert call(token, "/api/v1/whoami", method="get").json()["user"] == "otto"
    row.refresh_from_db()
    assert row.last_used_at is not None
    listing = io.StringIO()
    call_command("api_token", "list", stdout=listing)
    assert row.prefix in listing.getvalue() and token not in listing.getvalue() and "last used" in listing.getvalue()
    call_command("api_token", "revoke", str(row.pk), stdout=io.StringIO())
    assert AuditEntry.objects.filter(action="api_token.revoke").count() == 1
    with pytest.raises(CommandError, match="revoked already"):
        call_command("api_token", "revoke", row.prefix)
    with pytest.raises(CommandError, match="no user 'ghost'"):
        call_command("api_token", "create", "ghost", "--name", "x")
    with pytest.raises(CommandError, match="give the token a name"):
        call_command("api_token", "create", "otto", "--name", " ")
    assert call(token, "/api/v1/whoami", method="get").status_code == 401


def test_the_ingest_api_keeps_its_own_tokens(objects):
    ingest_tokens.create("feed", ["misp"], ["ThreatActor"])
    _, token = token_for("admin")
    response = Client().post("/api/v1/entities", "{}", content_type="application/json",
                             HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 401  # a dashboard token is not an ingest token


def test_each_confirmation_shows_the_equivalent_command_and_api_call(objects, analyst_user, neo4j_driver, vectors):
    from html import unescape

    client = Client()
    client.force_login(analyst_user)
    confirm = unescape(client.get("/queue/dead/confirm", {"action": "retry", "ids": objects["event"].pk}).content.decode())
    assert f"manage.py dead_letters retry --ids {objects['event'].pk} --user ana-analyst" in confirm
    assert '/api/v1/dead-letters/retry" -H "Authorization: Bearer $NIGHTINGALE_TOKEN"' in confirm
    assert f"-d '{{\"ids\": [{objects['event'].pk}]}}'" in confirm
    runs = unescape(client.get("/reconciliation/").content.decode())
    assert "manage.py reconcile --incremental --queue --user ana-analyst" in runs
    assert '/api/v1/reconciliations"' in runs and '"mode": "incremental"' in runs
    alerts = unescape(client.get("/alerts/").content.decode())
    assert f"manage.py alerts acknowledge {objects['alert'].pk} --user ana-analyst" in alerts
    assert f"/api/v1/alerts/{objects['alert'].pk}/acknowledge" in alerts
    viewer = make_user("vv", "viewer")
    client.force_login(viewer)
    assert "The same from a shell" not in client.get("/reconciliation/").content.decode()
    assert "The same from a shell" not in client.get("/alerts/").content.decode()


def test_the_commands_the_pages_show_do_what_the_page_does(objects, analyst_user):
    out = io.StringIO()
    call_command("reconcile", "--full", "--dry-run", "--queue", "--user", analyst_user.username, stdout=out)
    run = ReconcileRun.objects.get()
    assert (run.status, run.triggered_by, run.dry_run) == ("queued", analyst_user, True)
    assert AuditEntry.objects.get(action="reconcile.start").actor == analyst_user
    with pytest.raises(CommandError, match="not started"):
        call_command("reconcile", "--queue")
    with pytest.raises(CommandError, match="--user goes with --queue"):
        call_command("reconcile", "--user", analyst_user.username)
    listing = io.StringIO()
    call_command("alerts", "list", stdout=listing)
    assert re.search(rf"#{objects['alert'].pk}\b", listing.getvalue())
    call_command("alerts", "acknowledge", str(objects["alert"].pk), "--user", analyst_user.username,
                 "--note", "seen", stdout=io.StringIO())
    entry = AuditEntry.objects.get(action="alert.acknowledge")
    assert (entry.actor, entry.note) == (analyst_user, "seen")
    with pytest.raises(CommandError, match="already acknowledged"):
        call_command("alerts", "acknowledge", str(objects["alert"].pk))
    with pytest.raises(CommandError, match="say which alert"):
        call_command("alerts", "acknowledge")


def test_the_resync_confirmation_shows_its_api_call(client, analyst_user, graph, vectors):
    from html import unescape

    graph.import_entities("Malware", [{"uid": "m1", "name": "Malware 1"}], source="test")
    client.force_login(analyst_user)
    page = unescape(client.get("/resync/?scope=label&label=Malware").content.decode())
    assert '/api/v1/resync" -H "Authorization: Bearer $NIGHTINGALE_TOKEN"' in page
    assert '-d \'{"labels": ["Malware"], "priority": "low"}\'' in page
