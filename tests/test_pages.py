"""Every dashboard URL, found in the URLconf (so pages added later are covered without listing
them here): who may see and post what, method and CSRF checks, the Content-Security-Policy, no
secrets, and hostile text from the graph shown escaped wherever it reaches."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from dashboard.access import ROLES, VIEWER
from sync import deadletters
from sync.ingest import tokens
from sync.models import AuditEntry, Conflict, ReconcileRun, SyncEvent, SyncRecord
from sync.observe.models import Alert

# Views anyone may call: probes, the scrape endpoint and the token-authenticated API.
PUBLIC = {"healthz", "readyz", "metrics", "api-entities"}
AUTH_VIEWS = {"login", "logout", "password_change", "password_change_done", "password_reset",
              "password_reset_done", "password_reset_confirm", "password_reset_complete"}
PAYLOAD = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"
ESCAPED = "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;"
SECRETS = {"SECRET_KEY": "secret-key-that-must-never-be-shown-0123456789",
           "NEO4J_PASSWORD": "neo4j-password-never-shown", "PINECONE_API_KEY": "pcsk_never_shown_key",
           "METRICS_TOKEN": "metrics-token-never-shown", "EMAIL_HOST_PASSWORD": "smtp-password-never-shown",
           "ALERT_WEBHOOK_URL": "https://hooks.example.org/services/T000/B000/never-shown"}


def routes() -> list[tuple[str, object]]:
    """(URL name, view) of every dashboard and sync route outside Django's admin and auth views."""
    found = []

    def walk(patterns):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                if entry.app_name == "admin":
                    continue
                walk(entry.url_patterns)
            elif isinstance(entry, URLPattern) and entry.name not in AUTH_VIEWS:
                found.append((entry.name, entry.callback))

    walk(get_resolver().url_patterns)
    return found


ROUTES = routes()
# The JSON API's routes take a bearer token, not a session (tests/test_api_actions.py checks them).
API = [(name, view) for name, view in ROUTES if getattr(view, "api_access", None)]
PROTECTED = [(name, view) for name, view in ROUTES if name not in PUBLIC and (name, view) not in API]


@pytest.fixture
def hostile(db):
    """Graph text, uids and error messages carrying HTML and script, in every table a page reads."""
    event = SyncEvent.objects.create(label="ThreatActor", uid=PAYLOAD, status=SyncEvent.Status.DEAD,
                                     last_error=f"PermanentStoreError: {PAYLOAD}", attempts=8, finished_at=timezone.now())
    SyncRecord.objects.create(label="ThreatActor", uid=PAYLOAD, status=SyncRecord.Status.FAILED, last_error=PAYLOAD)
    run = ReconcileRun.objects.create(
        mode="full", status=ReconcileRun.Status.SUCCEEDED, finished_at=timezone.now(), duration=1.5,
        drift={"stale_vector": 1}, labels={"ThreatActor": {"checked": 10, "drift": 1}}, error=PAYLOAD,
        samples=[{"kind": "stale_vector", "label": "ThreatActor", "uid": PAYLOAD, "detail": PAYLOAD}])
    conflict = Conflict.objects.create(
        kind="threat_severity", label="ThreatActor", uid=PAYLOAD, graph_side={"severity": PAYLOAD},
        other_side={"severity": "high"}, proposal={"severity": PAYLOAD}, explanation=PAYLOAD,
        sources={"graph": {"source": PAYLOAD, "confidence": 0.5}, "other": {"source": PAYLOAD}})
    alert = Alert.objects.create(rule="dead_letters", severity="warning", summary=PAYLOAD)
    AuditEntry.record("system", "resync", PAYLOAD, note=PAYLOAD)
    group = deadletters.groups()[0].key
    return {"event": event, "run": run, "alert": alert, "group": group, "conflict": conflict}


def url_for(name: str, objects: dict) -> str:
    """A concrete URL for a route; routes with parameters say here which object they show."""
    kwargs = {
        "reconciliation-run": {"pk": objects["run"].pk},
        "reconciliation-progress": {"pk": objects["run"].pk},
        "reconciliation-resync": {"pk": objects["run"].pk},
        "alert-acknowledge": {"pk": objects["alert"].pk},
        "queue-dead-act": {"action": "retry"},
        "entity": {"label": "ThreatActor", "uid": PAYLOAD},
        "entity-record": {"label": "ThreatActor", "uid": PAYLOAD},
        "conflict": {"pk": objects["conflict"].pk},
        "conflict-resolve": {"pk": objects["conflict"].pk},
        "conflict-dismiss": {"pk": objects["conflict"].pk},
        "conflicts-bulk-act": {"action": "dismiss"},
    }
    query = {
        "queue-dead": f"?group={objects['group']}",
        "queue-dead-confirm": f"?action=retry&ids={objects['event'].pk}",
        "resync": "?scope=label&label=ThreatActor",
        "conflicts-bulk-confirm": "?action=dismiss&as_of=2100-01-01T00:00:00%2B00:00",
    }
    return reverse(name, kwargs=kwargs.get(name)) + query.get(name, "")


def test_the_routes_were_found():
    names = {name for name, _ in ROUTES}
    assert {"home", "queue", "reconciliation", "alerts", "healthz"} <= names


@pytest.mark.parametrize(("name", "view"), PROTECTED, ids=[n for n, _ in PROTECTED])
def test_every_route_declares_who_may_use_it(name, view):
    rule = getattr(view, "access", None)
    assert rule is not None, f"{name}: decorate the view with a dashboard.access role decorator"
    assert rule.role in ROLES


@pytest.mark.parametrize("name", [n for n, _ in PROTECTED])
def test_anonymous_requests_go_to_the_login_page(client, hostile, name):
    url = url_for(name, hostile)
    for response in (client.get(url), client.post(url)):
        assert response.status_code == 302, name
        assert response["Location"].startswith("/accounts/login/?next=")


POSTS = [(n, v) for n, v in PROTECTED if "POST" in v.access.methods]


@pytest.mark.parametrize("name", [n for n, v in POSTS if v.access.role != VIEWER])
def test_a_viewer_post_is_refused_and_audited(client, viewer, hostile, name):
    client.force_login(viewer)
    before = {model: model.objects.count() for model in (SyncEvent, ReconcileRun, Conflict)}
    response = client.post(url_for(name, hostile), {"scope": "all", "mode": "full", "kind": "stale_vector"})
    assert response.status_code == 403
    assert AuditEntry.objects.filter(action="access.denied", actor=viewer).count() == 1
    assert SyncEvent.objects.get(pk=hostile["event"].pk).status == SyncEvent.Status.DEAD
    assert {model: model.objects.count() for model in before} == before


@pytest.mark.parametrize("name", [n for n, v in POSTS if "GET" not in v.access.methods])
def test_a_get_on_a_post_only_route_is_405(client, admin_user, hostile, name):
    client.force_login(admin_user)
    response = client.get(url_for(name, hostile))
    assert response.status_code == 405
    assert "POST" in response["Allow"]


@pytest.mark.parametrize("name", [n for n, _ in POSTS])
def test_a_post_without_the_csrf_token_is_refused(admin_user, hostile, name):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(url_for(name, hostile), {"scope": "all"}).status_code == 403
    assert SyncEvent.objects.get(pk=hostile["event"].pk).status == SyncEvent.Status.DEAD


class InlineCode(HTMLParser):
    """What a 'self'-only Content-Security-Policy would refuse: inline scripts (a JSON data block
    is not one), event-handler attributes, style attributes and <style> elements."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "script" and "src" not in names and names.get("type") != "application/json":
            self.found.append("an inline <script>")
        if tag == "style":
            self.found.append("a <style> element")
        self.found += [f"<{tag} {name}=…>" for name in names if name.startswith("on") or name == "style"]


def inline_code(page: str) -> list[str]:
    parser = InlineCode()
    parser.feed(page)
    return parser.found


GETS = [n for n, v in PROTECTED if "GET" in v.access.methods]


@pytest.mark.parametrize("role", ["viewer", "analyst", "admin"])
@pytest.mark.parametrize("name", GETS)
def test_pages_escape_hostile_text_keep_the_policy_and_show_no_secret(client, hostile, settings, role, name,
                                                                     graph, vectors):
    from tests.conftest import make_user

    # The entity itself, in the graph, carries the markup too (names, descriptions: pages that
    # read the graph show it).
    graph.write_entity("ThreatActor", PAYLOAD, {"name": PAYLOAD, "description": f"Targets energy firms. {PAYLOAD}"},
                       source="test")

    for key, value in SECRETS.items():
        setattr(settings, key, value)
    ingest_token = tokens.create("page-feed", ["page-feed"], ["ThreatActor"])[1]
    user = make_user(f"someone-{role}", role)
    client.force_login(user)
    response = client.get(url_for(name, hostile))
    rule = dict(PROTECTED)[name].access
    if rule.role != VIEWER and role == VIEWER:
        assert response.status_code == 403
        return
    assert response.status_code == 200, (name, response.status_code)
    page = (b"".join(response.streaming_content) if response.streaming else response.content).decode()
    html = response["Content-Type"].startswith("text/html")  # a CSV export holds the text as it is
    assert not html or (PAYLOAD not in page and "<script>alert" not in page and "<img src=x" not in page)
    for secret in [*SECRETS.values(), ingest_token]:
        assert secret not in page, f"{name} shows {secret}"
    assert not html or inline_code(page) == [], f"{name}: the Content-Security-Policy would refuse these"
    policy = response.get("Content-Security-Policy", "")
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


@pytest.mark.parametrize(("name", "where"), [
    ("queue", "the dead-letter group's error"), ("queue-dead", "the uid and error"),
    ("queue-dead-confirm", "the selection"), ("reconciliation-run", "the sample findings"),
    ("alerts", "the alert summary"), ("home", "the banner"), ("audit", "the audit entry's target and note"),
    ("entities", "the uid and last error"), ("entity", "the uid, record error and timeline"),
    ("conflicts", "the uid and sources"), ("conflict", "both sides, the proposal and the explanation"),
])
def test_hostile_text_reaches_these_pages_escaped(client, admin_user, hostile, name, where, neo4j_driver, vectors):
    client.force_login(admin_user)
    page = client.get(url_for(name, hostile)).content.decode()
    if name == "queue-dead-confirm":
        assert "Retry 1 dead letter" in page
        return
    assert ESCAPED in page, f"{name}: {where} should be shown, escaped"


class Actions(HTMLParser):
    """The forms that POST and can be submitted (they hold a submit button), and the links a page
    offers."""

    def __init__(self):
        super().__init__()
        self.posts: list[str] = []
        self.links: list[str] = []
        self.form: str | None = None  # the action of the POST form being read
        self.submits = False

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "form" and (names.get("method") or "").lower() == "post":
            self.form, self.submits = names.get("action") or "", False
        if self.form is not None and ((tag == "button" and names.get("type", "submit") == "submit")
                                      or (tag == "input" and names.get("type") in ("submit", "image"))):
            self.submits = True
        if tag == "a" and names.get("href", "").startswith("/"):
            self.links.append(names["href"])
        if names.get("hx-post"):
            self.posts.append(names["hx-post"])

    def handle_endtag(self, tag):
        if tag == "form" and self.form is not None:
            if self.submits:
                self.posts.append(self.form)
            self.form = None


@pytest.mark.parametrize("name", [n for n in GETS if dict(PROTECTED)[n].access.role == VIEWER])
def test_a_viewer_is_offered_no_action(client, viewer, hostile, name, neo4j_driver, vectors):
    """No form that POSTs with a button (but logging out) and no link to a page a viewer may not
    open: a viewer sees what an analyst would do, not buttons that end in 403."""
    from django.urls import Resolver404, resolve

    client.force_login(viewer)
    response = client.get(url_for(name, hostile))
    if not response["Content-Type"].startswith("text/html"):
        return  # an export: no page to act from
    parser = Actions()
    parser.feed(response.content.decode())
    assert [action for action in parser.posts if action != reverse("logout")] == [], name
    refused = []
    for href in parser.links:
        try:
            view = resolve(href.split("?")[0].split("#")[0]).func
        except Resolver404:
            continue
        rule = getattr(view, "access", None)
        if rule is not None and rule.role != VIEWER:
            refused.append(href)
    assert refused == [], f"{name} links a viewer to pages they may not open"
