"""Who may do what: every role × every action, against the README's role table ("Logging in,
roles"). The roles: anonymous, a user without a role, viewer, analyst, admin, superuser. The
actions: every URL in the URLconf (found there, as tests/test_pages.py finds them: a route added
later is covered or this test says it is not), every JSON API endpoint with an API token of each
role, the admin site's own pages, and the management commands that act as `--user`.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from django_q.models import Schedule

from dashboard import tokens
from dashboard.access import ADMIN, ANALYST, VIEWER
from sync.models import Conflict, SyncEvent
from sync.observe.models import Alert
from tests.conftest import make_user
from tests.test_pages import API, PROTECTED, PUBLIC, ROUTES, hostile, url_for  # noqa: F401 — hostile is a fixture

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db

ANONYMOUS, NO_ROLE, SUPERUSER = "anonymous", "no role", "superuser"
ROLES = [ANONYMOUS, NO_ROLE, VIEWER, ANALYST, ADMIN, SUPERUSER]  # the README table's rows, in order
RANK = {ANONYMOUS: -2, NO_ROLE: -1, VIEWER: 0, ANALYST: 1, ADMIN: 2, SUPERUSER: 3}
STAFF = {ADMIN, SUPERUSER}


def may(role: str, needed: str) -> bool:
    """A role holds the rights of every role before it; a superuser holds the admin's."""
    return RANK[role] >= RANK[needed]


def person(role: str):
    if role == ANONYMOUS:
        return None
    user = make_user(f"matrix-{role.replace(' ', '-')}", None if role == NO_ROLE else min(role, ADMIN, key=RANK.get))
    if role == SUPERUSER:
        user.is_superuser = True
        user.save()
    return user


def client_of(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def test_the_readme_table_lists_these_roles():
    section = (ROOT / "README.md").read_text().split("## Logging in, roles")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (?:`([^`]+)`|([a-z ]+)) \|", section, re.M)
    assert [code or words.strip() for code, words in rows if (code or words.strip()) != "role"] == ROLES


# --- every page and action of the dashboard ---------------------------------------------------

POST_DATA = {"scope": "all", "mode": "full", "kind": "stale_vector", "note": "matrix"}


@pytest.mark.parametrize("role", ROLES)
def test_pages_and_actions(role, hostile, graph, vectors):  # noqa: F811
    user = person(role)
    client = client_of(user)
    found = []
    for name, view in PROTECTED:
        rule = view.access
        url = url_for(name, hostile)
        for method in ("GET", "POST"):
            if method not in rule.methods:
                continue
            response = client.get(url) if method == "GET" else client.post(url, POST_DATA)
            if role == ANONYMOUS:
                outcome = "login" if response.status_code == 302 and response["Location"].startswith(
                    "/accounts/login/") else response.status_code
                expected = "login"
            else:
                outcome = "refused" if response.status_code == 403 else "allowed"
                expected = "allowed" if may(role, rule.role) else "refused"
                assert response.status_code < 500, (name, method, response.status_code)
            if outcome != expected:
                found.append((name, method, outcome, expected))
    assert found == [], f"{role}: (route, method, got, README says)"


@pytest.mark.parametrize("role", ROLES)
def test_probes_and_metrics(role, settings, neo4j_driver, vectors):
    """Probes answer anyone with their status; their details and /metrics need a role."""
    client = client_of(person(role))
    insider = may(role, VIEWER)
    assert {"healthz", "readyz", "metrics", "api-entities"} == PUBLIC  # each one is classified here
    health = client.get("/healthz")
    assert health.status_code == 200 and ("services" in health.json()) == insider
    assert ("checks" in client.get("/readyz").json()) == insider
    assert client.get("/metrics").status_code == (200 if insider else 401 if role == ANONYMOUS else 403)


# --- the JSON API, with a token of each role ---------------------------------------------------

def api_url(name: str, objects: dict) -> str:
    from django.urls import reverse

    kwargs = {"api-dead-letters": {"action": "retry"}, "api-alert-acknowledge": {"pk": objects["alert"].pk},
              "api-conflict-resolve": {"pk": objects["conflict"].pk}, "api-conflict-dismiss": {"pk": objects["conflict"].pk}}
    return reverse(name, kwargs=kwargs.get(name))


@pytest.mark.parametrize("role", ROLES)
def test_api_endpoints(role, hostile, graph, vectors):  # noqa: F811
    user = person(role)
    token = tokens.create(user, "matrix")[1] if user is not None else None
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    client = Client(enforce_csrf_checks=True)
    found = []
    for name, view in API:
        rule = view.api_access
        url = api_url(name, hostile)
        if "GET" in rule.methods:
            response = client.get(url, **headers)
        else:
            response = client.post(url, json.dumps({"note": "matrix", "ids": [hostile["event"].pk]}),
                                   content_type="application/json", **headers)
        expected = 401 if role == ANONYMOUS else "allowed" if may(role, rule.role) else 403
        outcome = response.status_code if response.status_code in (401, 403) else "allowed"
        assert response.status_code < 500, (name, response.status_code)
        if outcome != expected:
            found.append((name, outcome, expected))
    # The ingest API takes ingest tokens, bound to sources and labels; a role's token is no such thing.
    ingest = client.post("/api/v1/entities", json.dumps({"label": "ThreatActor", "uid": "x", "source": "misp"}),
                         content_type="application/json", **headers)
    assert ingest.status_code == 401
    assert found == [], f"{role}: (endpoint, got, README says)"


# --- the admin site's own pages ---------------------------------------------------------------

# page -> what an admin and a superuser get (anyone else, not staff, is sent to a login page).
ADMIN_SITE = {
    "index": ("GET", "/admin/", 200, 200),
    "users": ("GET", "/admin/auth/user/", 200, 200),
    "add a user": ("GET", "/admin/auth/user/add/", 200, 200),
    "change a viewer": ("POST", "/admin/auth/user/{viewer}/change/", 302, 302),
    "look at a superuser": ("GET", "/admin/auth/user/{root}/change/", 200, 200),
    "change a superuser": ("POST", "/admin/auth/user/{root}/change/", 403, 302),
    "a superuser's password": ("GET", "/admin/auth/user/{root}/password/", 403, 200),
    "look at a role group": ("GET", "/admin/auth/group/{group}/change/", 200, 200),
    "change a role group": ("POST", "/admin/auth/group/{group}/change/", 403, 302),
    "schedules": ("GET", "/admin/django_q/schedule/", 200, 200),
    "add a schedule": ("GET", "/admin/django_q/schedule/add/", 403, 200),
    "change a schedule": ("POST", "/admin/django_q/schedule/{schedule}/change/", 403, 302),
    "failed tasks": ("GET", "/admin/django_q/failure/", 200, 200),
    "audit entries": ("GET", "/admin/sync/auditentry/", 200, 200),
    "change a sync event": ("POST", "/admin/sync/syncevent/{event}/change/", 403, 403),
}


def _admin_post_data(page: str, objects: dict, who) -> dict:
    if page == "change a viewer" or page == "change a superuser":
        target = objects["viewer_user"] if page == "change a viewer" else objects["root_user"]
        form = client_of(objects["root_user"]).get(f"/admin/auth/user/{target.pk}/change/").context["adminform"].form
        data = {n: form[n].value() for n in form.fields if form[n].value() is not None}
        data.update(date_joined_0=target.date_joined.strftime("%Y-%m-%d"),
                    date_joined_1=target.date_joined.strftime("%H:%M:%S"), first_name="Changed")
        return {k: v for k, v in data.items() if k not in ("date_joined", "last_login", "password")}
    if page == "change a role group":
        group = Group.objects.get(name=VIEWER)
        return {"name": group.name, "permissions": list(group.permissions.values_list("pk", flat=True))}
    if page == "change a schedule":
        return {"name": "upkeep", "func": "sync.tasks.upkeep", "schedule_type": "I", "minutes": "6", "repeats": "-1",
                "next_run_0": "2030-01-01", "next_run_1": "00:00:00"}
    return {"status": "done"}


@pytest.mark.parametrize("role", ROLES)
def test_admin_site_pages(role, db):
    user = person(role)
    root = make_user("matrix-root", ADMIN)
    root.is_superuser = True
    root.save()
    viewer = make_user("matrix-target", VIEWER)
    objects = {
        "viewer": viewer.pk, "root": root.pk, "group": Group.objects.get(name=VIEWER).pk,
        "schedule": Schedule.objects.create(name="upkeep", func="sync.tasks.upkeep", schedule_type="I", minutes=5).pk,
        "event": SyncEvent.objects.create(label="ThreatActor", uid="apt29", status="dead").pk,
        "viewer_user": viewer, "root_user": root,
    }
    client = client_of(user)
    found = []
    for page, (method, path, as_admin, as_superuser) in ADMIN_SITE.items():
        url = path.format(**objects)
        response = client.get(url) if method == "GET" else client.post(url, _admin_post_data(page, objects, user))
        got = response.status_code
        if got == 302 and response["Location"].startswith(("/admin/login/", "/accounts/login/")):
            got = "login"
        expected = {ADMIN: as_admin, SUPERUSER: as_superuser}.get(role, "login")
        if got != expected:
            found.append((page, got, expected))
    assert found == [], f"{role}: (page, got, README says)"


# --- management commands that act as --user ----------------------------------------------------

ACTING = {  # command -> its arguments (the analyst role or above may be named)
    "dead_letters": lambda o: ["retry", "--ids", str(o["event"].pk)],
    "reconcile": lambda o: ["--full", "--dry-run", "--queue"],
    "conflicts": lambda o: ["--apply", "dismiss", "--note", "matrix"],
    "alerts": lambda o: ["acknowledge", str(o["alert"].pk)],
    "resync": lambda o: ["--entity", "ThreatActor:apt29"],
}
NOT_ACTING = {  # commands whose --user names no one acting on the sync
    "api_token": "`list --user NAME` filters the listing",
    "ingest_token": "names who issued or revoked an ingest token (the ingest tokens' part of issue 18)",
}


def commands_with_user() -> set[str]:
    found = set()
    for name, app in get_commands().items():
        if app not in ("sync", "dashboard", "sync.observe"):
            continue
        parser = load_command_class(app, name).create_parser("manage.py", name)
        parsers = [parser] + [p for action in parser._subparsers._group_actions if hasattr(action, "choices")
                              for p in (action.choices or {}).values()] if parser._subparsers else [parser]
        if any("--user" in p._option_string_actions for p in parsers):
            found.add(name)
    return found


def test_every_command_with_a_user_option_is_classified():
    assert commands_with_user() == set(ACTING) | set(NOT_ACTING)


@pytest.mark.parametrize("role", ROLES)
def test_commands_acting_as_user(role, graph, vectors):
    user = person(role)
    username = user.username if user is not None else "nobody-by-that-name"
    objects = {"event": SyncEvent.objects.create(label="ThreatActor", uid="apt29", status="dead",
                                                 finished_at=timezone.now()),
               "alert": Alert.objects.create(rule="dead_letters", severity="warning", summary="x")}
    Conflict.objects.create(kind="threat_severity", label="ThreatActor", uid="apt29",
                            graph_side={"severity": "high"}, other_side={"severity": "low"})
    graph.write_entity("ThreatActor", "apt29", {"name": "APT29"}, source="test")
    found = []
    for command, arguments in ACTING.items():
        try:
            call_command(command, *arguments(objects), "--user", username, stdout=io.StringIO())
            got = "allowed"
        except CommandError as exc:
            got = "no such user" if "there is no user" in str(exc) else "refused" if "may not" in str(exc) else str(exc)
        expected = "no such user" if role == ANONYMOUS else "allowed" if may(role, ANALYST) else "refused"
        if got != expected:
            found.append((command, got, expected))
    assert found == [], f"{role}: (command, got, README says)"
