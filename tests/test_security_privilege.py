"""Issue 18, defects 3, 6 and 9: privilege escalation through the admin site and the task
cluster, login throttling behind a proxy, and what the probes and /metrics tell whom.

- An admin (not a superuser) cannot make anyone a superuser or staff, nor grant permissions or
  non-role groups, nor touch a superuser's account — refused when saved, not only left out of the
  form; every change to a user's flags, groups or permissions is audited, whoever makes it.
- django-q2 runs only the project's tasks: a Schedule naming another function cannot be saved, a
  task naming one is refused where it is enqueued (the scheduler's too, without stopping the other
  schedules) and again where a worker takes it; the task pages are read-only but for superusers.
- Login throttling keys on the client's address behind the trusted proxies, per username and
  address and per address.
- /healthz and /readyz tell anyone only their status, reuse one store check for a while, and never
  write; their details and /metrics are for a viewer or the metrics token.

The role × action matrix is tests/test_privilege_matrix.py.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import re
import subprocess
import sys
from datetime import timedelta
from multiprocessing import Value
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import ValidationError
from django.test import RequestFactory
from django.utils import timezone
from django_q.models import OrmQ, Schedule
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from dashboard.access import ADMIN, ANALYST, VIEWER
from nightingale.logins import client_ip
from sync import cluster, tasks
from sync.models import AuditEntry, ChangeCursor
from sync.observe import health
from sync.observe.models import Alert, AlertDelivery, Heartbeat
from tests.conftest import make_user

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db


def leave_mark(path: str) -> None:
    """What a planted task would do: leave a trace that it ran."""
    Path(path).write_text("ran")


def harmless() -> str:
    return "done"


@pytest.fixture
def superuser(db):
    user = make_user("sue-super", ADMIN)
    user.is_superuser = True
    user.save()
    return user


def change_form(client, user) -> dict:
    """The admin site's change form for `user`, as a browser would post it back unchanged."""
    form = client.get(f"/admin/auth/user/{user.pk}/change/").context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update(date_joined_0=user.date_joined.strftime("%Y-%m-%d"), date_joined_1=user.date_joined.strftime("%H:%M:%S"))
    for name in ("date_joined", "last_login"):
        data.pop(name, None)
    return data


# --- defect 3: the admin role cannot escalate ------------------------------------------------

def test_a_forged_post_by_an_admin_grants_nothing(client, admin_user):
    client.force_login(admin_user)
    every = Permission.objects.filter(content_type__app_label="django_q").values_list("pk", flat=True)
    data = change_form(client, admin_user) | {"is_superuser": "on", "is_staff": "on", "user_permissions": list(every)}
    client.post(f"/admin/auth/user/{admin_user.pk}/change/", data)
    admin_user.refresh_from_db()
    assert not admin_user.is_superuser and not admin_user.user_permissions.exists()
    page = client.get(f"/admin/auth/user/{admin_user.pk}/change/").content.decode()
    assert 'name="is_superuser"' not in page and 'name="user_permissions"' not in page


def test_the_save_refuses_what_the_form_might_let_through(client, admin_user, viewer, monkeypatch):
    """Were the fields ever editable again (a form change), saving still refuses them: 403,
    audited, nothing written."""
    from dashboard.admin import AuditedUserAdmin

    monkeypatch.setattr(AuditedUserAdmin, "get_readonly_fields", lambda self, request, obj=None: ())
    client.force_login(admin_user)
    for forged in ({"is_superuser": "on"}, {"is_staff": "on"},
                   {"user_permissions": [Permission.objects.get(codename="add_schedule").pk]}):
        response = client.post(f"/admin/auth/user/{viewer.pk}/change/", change_form(client, viewer) | forged)
        assert response.status_code == 403, forged
    viewer.refresh_from_db()
    assert not viewer.is_superuser and not viewer.is_staff and not viewer.user_permissions.exists()
    denied = AuditEntry.objects.filter(action="access.denied", actor=admin_user)
    assert [e.after["fields"] for e in denied] == [["user_permissions or groups other than the roles"],
                                                 ["is_staff"], ["is_superuser"]]


def test_an_admin_gives_roles_only(client, admin_user, viewer):
    client.force_login(admin_user)
    powerful = Group.objects.create(name="task-operators")
    powerful.permissions.add(Permission.objects.get(codename="add_schedule"))
    response = client.post(f"/admin/auth/user/{viewer.pk}/change/",
                           change_form(client, viewer) | {"groups": [powerful.pk]})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    viewer.groups.add(powerful)  # given by a superuser: the admin's change of role keeps it
    analyst = Group.objects.get(name=ANALYST)
    response = client.post(f"/admin/auth/user/{viewer.pk}/change/", change_form(client, viewer) | {"groups": [analyst.pk]})
    assert response.status_code == 302
    assert sorted(viewer.groups.values_list("name", flat=True)) == [ANALYST, "task-operators"]
    # Made an admin in the admin site, the user can use it (is_staff follows the role).
    admin_group = Group.objects.get(name=ADMIN)
    client.post(f"/admin/auth/user/{viewer.pk}/change/", change_form(client, viewer) | {"groups": [admin_group.pk]})
    viewer.refresh_from_db()
    assert viewer.is_staff
    assert AuditEntry.objects.get(action="user.flags", actor=admin_user).after == {"is_staff": True}


def test_a_superusers_account_is_a_superusers_to_change(client, admin_user, superuser):
    client.force_login(admin_user)
    assert client.get(f"/admin/auth/user/{superuser.pk}/change/").status_code == 200  # to look at
    data = change_form(client, superuser) | {"is_active": ""}
    assert client.post(f"/admin/auth/user/{superuser.pk}/change/", data).status_code == 403
    assert client.get(f"/admin/auth/user/{superuser.pk}/password/").status_code == 403
    assert client.post(f"/admin/auth/user/{superuser.pk}/password/",
                       {"password1": "a brand new secret 1", "password2": "a brand new secret 1",
                        "usable_password": "true"}).status_code == 403
    assert client.post(f"/admin/auth/user/{superuser.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post("/admin/auth/user/", {"action": "delete_selected", "_selected_action": [superuser.pk], "post": "yes"})
    superuser.refresh_from_db()
    assert superuser.is_active and superuser.check_password("correct horse battery staple")


def test_a_superuser_may_and_is_named_in_the_trail(client, superuser, viewer):
    client.force_login(superuser)
    data = change_form(client, viewer) | {"is_superuser": "on", "is_staff": "on",
                                          "user_permissions": [Permission.objects.get(codename="view_schedule").pk]}
    assert client.post(f"/admin/auth/user/{viewer.pk}/change/", data).status_code == 302
    flags = AuditEntry.objects.get(action="user.flags", actor=superuser)
    assert (flags.target, flags.before, flags.after, flags.note) == (
        f"user:{viewer.username}", {"is_superuser": False, "is_staff": False},
        {"is_superuser": True, "is_staff": True}, "in the admin site")
    assert AuditEntry.objects.get(action="user.permissions", actor=superuser).after == ["django_q.view_schedule"]


OPERATIONS = st.lists(st.sampled_from([
    "superuser", "staff", "active", "join viewer", "leave viewer", "join a group (from the group)",
    "clear the group", "grant a permission", "revoke it", "clear permissions", "save unchanged"]),
    min_size=1, max_size=6)


@hypothesis_settings(max_examples=25)
@given(operations=OPERATIONS)
def test_every_change_to_a_users_privileges_is_audited_whoever_makes_it(db, operations):
    """From a shell, through either side of the relation: each operation that changes a flag,
    the groups or the permissions writes exactly one entry, whose before and after are the states."""
    user = User.objects.create_user(f"u{User.objects.count()}")
    viewer, group = Group.objects.get(name=VIEWER), Group.objects.create(name=f"group-of-{user.username}")
    permission = Permission.objects.get(codename="view_schedule")

    def state():
        fresh = User.objects.get(pk=user.pk)
        return {"user.flags": {f: getattr(fresh, f) for f in ("is_superuser", "is_staff", "is_active")},
                "user.role": sorted(fresh.groups.values_list("name", flat=True)),
                "user.permissions": sorted(fresh.user_permissions.values_list("codename", flat=True))}

    def flip(flag):
        fresh = User.objects.get(pk=user.pk)
        setattr(fresh, flag, not getattr(fresh, flag))
        fresh.save()

    act = {
        "superuser": lambda: flip("is_superuser"), "staff": lambda: flip("is_staff"), "active": lambda: flip("is_active"),
        "join viewer": lambda: user.groups.add(viewer), "leave viewer": lambda: user.groups.remove(viewer),
        "join a group (from the group)": lambda: group.user_set.add(user),
        "clear the group": lambda: group.user_set.clear(),
        "grant a permission": lambda: user.user_permissions.add(permission),
        "revoke it": lambda: permission.user_set.remove(user), "clear permissions": lambda: user.user_permissions.clear(),
        "save unchanged": lambda: User.objects.get(pk=user.pk).save(),
    }
    for operation in operations:
        before, written = state(), AuditEntry.objects.count()
        act[operation]()
        after = state()
        entries = list(AuditEntry.objects.order_by("id")[written:])
        changed = [kind for kind in after if after[kind] != before[kind]]
        assert [e.action for e in entries] == changed, operation
        for entry in entries:
            assert entry.target == f"user:{user.username}" and entry.actor_name == "system"
            if entry.action == "user.role":
                assert (entry.before["groups"], entry.after["groups"]) == (before["user.role"], after["user.role"])
            elif entry.action == "user.permissions":
                assert [p.split(".")[1] for p in entry.after] == after["user.permissions"]
            else:
                assert all(after["user.flags"][f] == v for f, v in entry.after.items())
                assert entry.after and all(before["user.flags"][f] == v for f, v in entry.before.items())


def test_schedules_name_only_the_projects_tasks(db):
    from sync.management.commands.setup_schedules import SCHEDULES

    assert {func for _, func, *_ in SCHEDULES} <= tasks.TASKS
    # Every task the engine hands to the cluster itself is on the list too.
    handed = set()
    for path in (ROOT / "sync").rglob("*.py"):
        handed |= set(re.findall(r"async_task\(\s*\"([\w.]+)\"", path.read_text()))
    assert handed and handed <= tasks.TASKS
    with pytest.raises(ValidationError, match="not one of the project's tasks"):
        Schedule.objects.create(name="planted", func="os.system", args="'touch /tmp/x'")
    with pytest.raises(ValidationError, match="result hooks are not allowed"):
        Schedule.objects.create(name="hooked", func="sync.tasks.upkeep", hook="os.system")
    kept = Schedule.objects.create(name="upkeep", func="sync.tasks.upkeep")
    kept.func = "builtins.exec"
    with pytest.raises(ValidationError, match="not one of the project's tasks"):
        kept.save()
    assert list(Schedule.objects.values_list("name", "func")) == [("upkeep", "sync.tasks.upkeep")]


def test_a_task_outside_the_list_is_refused_where_it_is_enqueued(db, tmp_path):
    from django_q.tasks import async_task

    mark = tmp_path / "mark"
    with pytest.raises(PermissionError, match="not one of the project's tasks"):
        async_task("tests.test_security_privilege.leave_mark", str(mark), sync=True)
    async_task("sync.tasks.upkeep", hook="tests.test_security_privilege.leave_mark")
    assert OrmQ.objects.get().task["func"] == cluster.REFUSED and "hook" not in OrmQ.objects.get().task
    assert not mark.exists()
    refused = AuditEntry.objects.filter(action="task.refused").order_by("id")
    assert [(e.target, e.after["where"]) for e in refused] == [
        ("tests.test_security_privilege.leave_mark", "enqueue"), ("sync.tasks.upkeep", "enqueue")]


@pytest.mark.django_db(transaction=True)  # the scheduler closes the connection it finds
def test_a_planted_schedule_is_refused_and_the_others_still_run(tmp_path):
    from django_q.brokers import get_broker
    from django_q.scheduler import scheduler

    due = timezone.now() - timedelta(minutes=1)
    kept = Schedule.objects.create(name="upkeep", func="sync.tasks.upkeep", schedule_type=Schedule.MINUTES,
                                   minutes=5, next_run=due)
    planted = Schedule.objects.create(name="planted", func="sync.tasks.upkeep", schedule_type=Schedule.MINUTES,
                                      minutes=5, next_run=due)
    # Written around the model's check (raw SQL, a restored backup): the scheduler still refuses it.
    Schedule.objects.filter(pk=planted.pk).update(func="tests.test_security_privilege.leave_mark",
                                                  args=repr(str(tmp_path / "mark")))
    scheduler(broker=get_broker())
    queued = sorted((row.task["group"], row.task["func"]) for row in OrmQ.objects.all())
    assert queued == [("planted", cluster.REFUSED), ("upkeep", "sync.tasks.upkeep")]
    assert all(s.next_run > timezone.now() for s in Schedule.objects.filter(pk__in=[kept.pk, planted.pk]))


@pytest.mark.django_db(transaction=True)  # django-q2's worker closes the connection it finds
def test_a_worker_runs_only_the_projects_tasks(tmp_path, settings):
    """django-q2's own worker loop, reading its tasks through sync.cluster's allow-list as the
    cluster of `manage.py workers` does: a task that reached the broker some other way is answered
    as a failure, never run."""
    from django_q.worker import worker

    settings.EXTRA_TASKS = ("tests.test_security_privilege.harmless",)
    mark = tmp_path / "mark"
    tasks_in, results = queue.Queue(), queue.Queue()
    for n, (func, hook) in enumerate([("tests.test_security_privilege.leave_mark", None),
                                      ("tests.test_security_privilege.harmless", "tests.test_security_privilege.leave_mark"),
                                      ("tests.test_security_privilege.harmless", None)]):
        tasks_in.put({"id": str(n), "name": f"task-{n}", "func": func, "hook": hook, "args": (str(mark),) if n == 0 else (),
                      "kwargs": {}, "started": timezone.now(), "ack_id": n})
    tasks_in.put("STOP")
    worker(cluster.ProjectTasksOnly(tasks_in, results), results, Value("f", -1), None)
    done = [results.get_nowait() for _ in range(3)]
    assert [(t["name"], t["success"]) for t in done] == [("task-0", False), ("task-1", False), ("task-2", True)]
    assert done[0]["result"].startswith("refused: 'tests.test_security_privilege.leave_mark' is not one of")
    assert "hook" not in done[1] and all(t["ack_failure"] for t in done[:2]) and done[2]["result"] == "done"
    assert not mark.exists()
    assert AuditEntry.objects.filter(action="task.refused", after__where="worker").count() == 2


def test_the_clusters_workers_read_through_the_allow_list(monkeypatch):
    from django_q.worker import worker

    spawned = []
    sentinel = object.__new__(cluster.CleanSentinel)
    sentinel.task_queue, sentinel.result_queue, sentinel.timeout = queue.Queue(), queue.Queue(), 60
    monkeypatch.setattr(cluster.CleanSentinel, "spawn_process", lambda self, target, *args: spawned.append((target, args)))
    sentinel.spawn_worker()
    (target, args), = spawned
    assert target is worker and isinstance(args[0], cluster.ProjectTasksOnly)
    assert args[0].tasks is sentinel.task_queue and args[1] is sentinel.result_queue


def test_django_q_pages_are_read_only_but_for_superusers(client, admin_user, superuser):
    schedule = Schedule.objects.create(name="upkeep", func="sync.tasks.upkeep", schedule_type=Schedule.MINUTES, minutes=5)
    form = {"name": "upkeep", "func": "sync.tasks.upkeep", "schedule_type": "I", "minutes": "5", "repeats": "-1",
            "next_run_0": "2030-01-01", "next_run_1": "00:00:00"}
    client.force_login(admin_user)
    assert client.get("/admin/django_q/schedule/").status_code == 200
    assert client.get("/admin/django_q/schedule/add/").status_code == 403
    assert client.post(f"/admin/django_q/schedule/{schedule.pk}/change/", form | {"minutes": "1"}).status_code == 403
    assert client.post(f"/admin/django_q/schedule/{schedule.pk}/delete/", {"post": "yes"}).status_code == 403
    assert "resubmit" not in client.get("/admin/django_q/failure/").content.decode()
    client.force_login(superuser)
    response = client.post("/admin/django_q/schedule/add/", form | {"name": "planted", "func": "os.system"})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert client.post(f"/admin/django_q/schedule/{schedule.pk}/change/", form | {"minutes": "7"}).status_code == 302
    assert Schedule.objects.get().minutes == 7 and Schedule.objects.count() == 1


# --- defect 6: login throttling behind the proxy -----------------------------------------------

def login(client, username, password="wrong", address="203.0.113.5"):
    """A login through one trusted proxy on this host: REMOTE_ADDR is always the proxy's."""
    return client.post("/accounts/login/", {"username": username, "password": password},
                       REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=f"10.9.9.9, {address}")


@pytest.fixture
def behind_proxy(settings):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 8
    return settings


def test_a_user_guessing_admins_password_locks_out_only_their_own_address(client, behind_proxy):
    make_user("admin", ADMIN)
    for _ in range(behind_proxy.AXES_FAILURE_LIMIT):
        login(client, "admin")
    assert login(client, "admin", "correct horse battery staple").status_code == 429
    assert login(client, "admin", "correct horse battery staple", address="198.51.100.7").status_code == 302


def test_a_password_sprayed_across_usernames_is_stopped(client, behind_proxy):
    make_user("victim", VIEWER)
    for n in range(behind_proxy.LOGIN_ADDRESS_FAILURE_LIMIT - 1):
        assert login(client, f"user{n}", "Spring2025!").status_code == 200
    assert login(client, "user-last", "Spring2025!").status_code == 429  # the failure that reaches the limit
    assert login(client, "victim", "correct horse battery staple").status_code == 429
    assert login(client, "victim", "correct horse battery staple", address="198.51.100.7").status_code == 302


def test_a_sprayer_cannot_reset_the_count_with_an_account_of_their_own(client, behind_proxy):
    make_user("mallory", VIEWER)
    for n in range(behind_proxy.LOGIN_ADDRESS_FAILURE_LIMIT - 1):
        login(client, f"user{n}")
    assert login(client, "mallory", "correct horse battery staple").status_code == 302
    client.logout()
    login(client, "user-last")
    assert login(client, "mallory", "correct horse battery staple").status_code == 429


ADDRESSES = st.ip_addresses()


@given(client_wrote=st.lists(st.text(max_size=40), max_size=4), real=ADDRESSES,
       proxies=st.lists(ADDRESSES, min_size=1, max_size=3))
def test_the_client_address_is_what_the_trusted_proxies_appended(settings, client_wrote, real, proxies):
    """Whatever the client puts in the header itself, the address is the one the outermost trusted
    proxy appended; the request's peer is the innermost proxy."""
    settings.TRUSTED_PROXY_COUNT, settings.CLIENT_IP_META_KEY = len(proxies), "HTTP_X_FORWARDED_FOR"
    hops = [*client_wrote, str(real), *map(str, proxies[:-1])]
    request = RequestFactory().get("/", REMOTE_ADDR=str(proxies[-1]), HTTP_X_FORWARDED_FOR=", ".join(hops))
    assert client_ip(request) == str(ipaddress.ip_address(real))


def test_without_the_proxies_header_the_peer_is_the_client(settings):
    settings.CLIENT_IP_META_KEY = "HTTP_X_FORWARDED_FOR"
    forged = RequestFactory().get("/", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.0.0.1")
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_ip(forged) == "192.0.2.1"  # no proxy: the header is the client's own
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_ip(forged) == "192.0.2.1"  # too short: it did not come through both proxies
    assert client_ip(RequestFactory().get("/", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="junk, 10.0.0.2")) == "192.0.2.1"


@pytest.mark.parametrize(("env", "message"), [
    ({"TRUSTED_PROXY_COUNT": "1", "CLIENT_IP_HEADER": "X Forwarded For"}, "CLIENT_IP_HEADER must be an HTTP header name"),
    ({"CLIENT_IP_HEADER": "X-Real-IP"}, "CLIENT_IP_HEADER is set but TRUSTED_PROXY_COUNT is 0"),
    ({"TRUSTED_PROXY_COUNT": "one"}, "TRUSTED_PROXY_COUNT must be an integer"),
    ({"TRUSTED_PROXY_COUNT": "-1"}, "TRUSTED_PROXY_COUNT must be at least 0"),
    ({"LOGIN_ADDRESS_FAILURE_LIMIT": "3"}, "LOGIN_ADDRESS_FAILURE_LIMIT (3) must be at least LOGIN_FAILURE_LIMIT (5)"),
    ({"HEALTH_CACHE_SECONDS": "nan"}, "HEALTH_CACHE_SECONDS must be a finite number"),
])
def test_a_bad_proxy_or_throttle_setting_stops_start_up(tmp_path, env, message):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TRUSTED_PROXY_COUNT", "CLIENT_IP_HEADER", "LOGIN_FAILURE_LIMIT")}
    done = subprocess.run([sys.executable, "-c", "import nightingale.settings"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=environment | {"DATA_DIR": str(tmp_path), **env})
    assert done.returncode != 0 and message in done.stderr


# --- defect 9: probes and /metrics ----------------------------------------------------------

@pytest.fixture
def stale_observer(db, settings):
    """The observer stopped beating 10 minutes ago; notifications would go to a webhook."""
    settings.HEARTBEAT_MAX_AGE, settings.ALERT_WEBHOOK_URL = 60, "https://hooks.example.org/T0/B0/x"
    ChangeCursor.objects.create(name="neo4j", polled_at=timezone.now() - timedelta(minutes=10))
    Heartbeat.beat("observer", "w1")
    from sync.observe.models import Heartbeat as Beat

    Beat.objects.update(at=timezone.now() - timedelta(minutes=10))


def test_anyone_gets_the_probes_status_only(client, neo4j_driver, vectors, stale_observer, settings):
    health.forget_recent()
    settings.METRICS_TOKEN = "scrape-token-for-tests"
    nobody = make_user("nobody", None)
    for who in (None, nobody):
        if who:
            client.force_login(who)
        assert client.get("/healthz").json() == {"status": "ok"}
        response = client.get("/readyz")
        assert (response.status_code, response.json()) == (503, {"status": "not_ready"})
    # A probe only reads: the stale observer opened no alert and sent nothing.
    assert not Alert.objects.exists() and not AlertDelivery.objects.exists()
    detailed = client.get("/healthz", HTTP_AUTHORIZATION="Bearer scrape-token-for-tests").json()
    assert detailed["services"]["graph"]["target"].startswith("bolt://")
    client.force_login(make_user("vic", VIEWER))
    checks = client.get("/readyz").json()["checks"]
    assert "change capture polled 10 min ago" in checks["workers"]["detail"]
    # The upkeep task reports the stopped observer instead.
    assert tasks.upkeep()["observer"]["opened"] == ["workers_heartbeat"]


def test_the_probes_do_not_ask_the_stores_on_every_call(client, neo4j_driver, vectors, monkeypatch, settings):
    health.forget_recent()
    calls = []
    real = health.check_services
    monkeypatch.setattr(health, "check_services", lambda: calls.append(1) or real())
    for _ in range(5):
        assert client.get("/healthz").status_code == 200
        client.get("/readyz")
    assert len(calls) == 1
    settings.HEALTH_CACHE_SECONDS = 0
    client.get("/healthz")
    assert len(calls) == 2


def test_an_unreachable_store_is_named_only_to_a_viewer(client, viewer, neo4j_driver, vectors):
    from sync.stores import graph_store, use_graph_store
    from sync.stores.neo4j_graph import Neo4jGraphStore

    real, dead = graph_store(), Neo4jGraphStore("bolt://internal-graph.example:9", "neo4j", "whatever-password")
    use_graph_store(dead)
    try:
        response = client.get("/healthz")
        assert (response.status_code, response.json()) == (503, {"status": "degraded"})
        assert "internal-graph" not in client.get("/readyz").content.decode()
        client.force_login(viewer)
        assert "internal-graph" in client.get("/healthz").content.decode()
    finally:
        use_graph_store(real)
        dead.close()


def test_metrics_need_a_role_or_the_token(client, settings):
    settings.METRICS_TOKEN = "scrape-token-for-tests"
    assert client.get("/metrics").status_code == 401
    client.force_login(make_user("nobody", None))
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-for-tests").status_code == 200
    client.force_login(make_user("vic", VIEWER))
    assert client.get("/metrics").status_code == 200
