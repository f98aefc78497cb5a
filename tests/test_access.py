"""Roles, the role decorators, the user commands, Django admin, CSP, login throttling."""

import io

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from dashboard.access import ADMIN, ANALYST, VIEWER, role_of
from sync.models import AuditEntry, SyncEvent
from tests.conftest import make_user

pytestmark = pytest.mark.urls("tests.access_urls")


def test_the_roles_are_groups_with_nested_rights(db):
    assert set(Group.objects.values_list("name", flat=True)) >= {VIEWER, ANALYST, ADMIN}
    viewer, analyst, admin = make_user("v", VIEWER), make_user("a", ANALYST), make_user("d", ADMIN)
    assert [role_of(u) for u in (viewer, analyst, admin)] == [VIEWER, ANALYST, ADMIN]
    assert not viewer.has_perm("dashboard.act_on_sync")
    assert analyst.has_perm("dashboard.view_dashboard") and not analyst.has_perm("dashboard.manage_users")
    assert admin.is_staff and admin.has_perm("sync.view_auditentry") and admin.has_perm("auth.change_user")
    assert not admin.has_perm("sync.change_auditentry") and not admin.has_perm("sync.delete_auditentry")


def test_a_user_without_a_role_is_told_what_to_ask_for(client, db):
    client.force_login(make_user("nobody", None))
    response = client.get("/test-access/read")
    assert response.status_code == 403
    assert "no role yet" in response.content.decode()
    assert "manage.py set_role nobody viewer" in response.content.decode()


def test_anonymous_requests_go_to_the_login_page(client, db):
    for method in (client.get, client.post):
        response = method("/test-access/act")
        assert response.status_code == 302
        assert response["Location"] == "/accounts/login/?next=/test-access/act"


def test_a_viewer_reads_but_a_viewer_post_is_refused_and_audited(client, viewer):
    client.force_login(viewer)
    assert client.get("/test-access/read").status_code == 200
    assert client.get("/test-access/confirm").status_code == 403
    response = client.post("/test-access/act")
    assert response.status_code == 403
    assert "needs the <strong>analyst</strong> role" in response.content.decode()
    entry = AuditEntry.objects.get(action="access.denied")
    assert (entry.actor, entry.target) == (viewer, "/test-access/act")
    assert entry.after == {"method": "POST", "needs": ANALYST, "has": VIEWER}


def test_an_analyst_acts_by_post_only(client, analyst_user):
    client.force_login(analyst_user)
    assert client.get("/test-access/confirm").status_code == 200
    assert client.post("/test-access/act").content == b"acted"
    response = client.get("/test-access/act")
    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_a_post_without_the_csrf_token_is_refused(analyst_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(analyst_user)
    page = client.get("/test-access/read")
    assert client.post("/test-access/act").status_code == 403
    token = client.get("/").context["csrf_token"] if page else None
    assert client.post("/test-access/act", HTTP_X_CSRFTOKEN=str(token)).status_code == 200


def test_pages_carry_a_self_only_content_security_policy(client, viewer, neo4j_driver, vectors):
    client.force_login(viewer)
    policy = client.get("/")["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy


def test_the_navigation_links_only_pages_that_exist(client, viewer, neo4j_driver, vectors):
    from django.urls import NoReverseMatch, reverse

    from dashboard.context import NAVIGATION

    client.force_login(viewer)
    links = client.get("/").context["nav_links"]
    existing = []
    for item in NAVIGATION:
        try:
            existing.append(reverse(item.url_name))
        except NoReverseMatch:
            pass
    assert [link["url"] for link in links] == existing
    assert links[0] == {"title": "Overview", "url": "/", "badge": "", "current": True}


def test_create_user_with_a_generated_password(db):
    out = io.StringIO()
    call_command("create_user", "carol", "--role", "analyst", stdout=out)
    user = User.objects.get(username="carol")
    password = out.getvalue().split("with password ")[1].strip()
    assert user.check_password(password) and role_of(user) == ANALYST and not user.is_staff
    assert AuditEntry.objects.filter(action="user.create", target="user:carol").exists()


def test_create_user_reads_the_password_from_a_named_variable(db, monkeypatch):
    monkeypatch.setenv("NEW_USER_PASSWORD", "a long enough passphrase 42")
    out = io.StringIO()
    call_command("create_user", "dora", "--role", "admin", "--password-env", "NEW_USER_PASSWORD", stdout=out)
    user = User.objects.get(username="dora")
    assert user.check_password("a long enough passphrase 42") and user.is_staff and role_of(user) == ADMIN
    assert "passphrase" not in out.getvalue()
    monkeypatch.setenv("WEAK", "123")
    with pytest.raises(CommandError, match="too short"):
        call_command("create_user", "erin", "--role", "viewer", "--password-env", "WEAK")
    with pytest.raises(CommandError, match="exists already"):
        call_command("create_user", "dora", "--role", "viewer")


def test_set_role_moves_a_user_to_exactly_one_role(db):
    user = make_user("finn", ADMIN)
    call_command("set_role", "finn", "viewer", stdout=io.StringIO())
    user.refresh_from_db()
    assert list(user.groups.values_list("name", flat=True)) == [VIEWER] and not user.is_staff
    entry = AuditEntry.objects.get(action="user.role", actor_name="command")
    assert (entry.before, entry.after) == ({"role": ADMIN, "groups": [ADMIN]}, {"role": VIEWER, "groups": [VIEWER]})
    flags = AuditEntry.objects.get(action="user.flags", actor_name="command")
    assert (flags.before, flags.after) == ({"is_staff": True}, {"is_staff": False})
    with pytest.raises(CommandError, match="no user 'ghost'"):
        call_command("set_role", "ghost", "viewer")


def test_ensure_admin_makes_an_admin(db, monkeypatch, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    monkeypatch.setenv("ADMIN_PASSWORD", "admin password for tests")
    call_command("ensure_admin", stdout=io.StringIO())
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and role_of(admin) == ADMIN
    assert admin.groups.filter(name=ADMIN).exists()


def test_django_admin_shows_the_sync_records_read_only(client, admin_user, viewer):
    entry = AuditEntry.record(viewer, "dead_letter.retry", "ThreatActor:apt29")
    event = SyncEvent.objects.create(label="ThreatActor", uid="apt29", status="dead", last_error="boom")
    client.force_login(admin_user)
    assert client.get("/admin/sync/auditentry/").status_code == 200
    assert client.get("/admin/sync/syncevent/").status_code == 200
    assert client.get("/admin/observe/alert/").status_code == 200
    page = client.get(f"/admin/sync/auditentry/{entry.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert client.get("/admin/sync/auditentry/add/").status_code == 403
    assert client.post(f"/admin/sync/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.post(f"/admin/sync/syncevent/{event.pk}/change/", {"status": "done"}).status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()
    client.force_login(viewer)
    assert client.get("/admin/sync/auditentry/").status_code == 302  # not staff: the admin's login


def test_failed_logins_lock_the_username_out(client, viewer, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = client.post("/accounts/login/", {"username": viewer.username, "password": "wrong"})
        assert response.status_code in (200, 429)
    response = client.post("/accounts/login/", {"username": viewer.username,
                                                "password": "correct horse battery staple"})
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert "_auth_user_id" not in client.session
    other = make_user("other", VIEWER)
    response = client.post("/accounts/login/", {"username": other.username, "password": "correct horse battery staple"})
    assert response.status_code == 302
