"""The dashboard from its first request while a backfill embeds (`bench/dashboard.py --backfill`).

A real web server (gunicorn with nightingale/gunicorn_conf.py, 2 workers as bin/serve starts it)
and a real embedding worker (`manage.py drain`) on one machine: the demo graph is enqueued whole,
as the initial sync, the worker starts embedding it, then the web server starts and pages and
searches are requested over HTTP from the moment it accepts connections. Each variant runs in a
fresh process on a fresh database and graph; printed per variant: the first page and the first
search after start (from the moment it accepts a connection), then page and search p50 / p95 (client-side, over HTTP) while the worker
embeds, and how much the worker embedded meanwhile. Goals: page p95 <= 300 ms, search p95 <= 300
ms, from the first request.

Variants (default: all, side by side):
  default    the model loaded by gunicorn's arbiter before it binds the port, shared by its forked
             workers; embedding workers at SYNC_WORKER_NICE=10
  no-nice    preloaded model; workers at the web server's priority (SYNC_WORKER_NICE=0)
  lazy       EMBEDDING_PRELOAD=false: the first search in each web worker loads the model (views and
             templates are still prepared before the fork)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "default": {"EMBEDDING_PRELOAD": "true", "SYNC_WORKER_NICE": "10"},
    "no-nice": {"EMBEDDING_PRELOAD": "true", "SYNC_WORKER_NICE": "0"},
    "lazy": {"EMBEDDING_PRELOAD": "false", "SYNC_WORKER_NICE": "0"},
}
PAGES = ("/", "/queue/", "/conflicts/", "/entities/", "/entities/ThreatActor/{actor}", "/audit/", "/policy/",
         "/alerts/")
SEARCHES = ("/search/?q=Russian+espionage+against+energy+firms&k=10",
            "/search/?q=ransomware+initial+access&label=Malware&k=10",
            "/search/?q=phishing+with+malicious+attachments&k=10")
GOAL_MS = 300.0


def get(url: str, cookie: str) -> float:
    request = urllib.request.Request(url, headers={"Cookie": cookie, "Host": "127.0.0.1"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        assert response.status == 200, (url, response.status)
    return (time.perf_counter() - started) * 1000


def smaps(pid: int) -> dict[str, float]:
    """RSS, PSS and private memory of a process, in MB (/proc/<pid>/smaps_rollup)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def web_memory(arbiter: int) -> dict:
    """The arbiter's and each web worker's memory while they serve (workers: the arbiter's children)."""
    children = [int(pid) for pid in Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()]
    return {"arbiter": smaps(arbiter), "workers": [smaps(pid) for pid in children]}


def session_cookie() -> str:
    """A logged-in analyst's session, made in the database the web server reads."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    from dashboard.access import assign_role

    user = User.objects.create_user("bench-analyst")
    assign_role(user, "analyst")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def run_variant(name: str, seconds: float) -> dict:
    """One variant, in this (fresh) process."""
    os.environ.update(VARIANTS[name])
    from bench.common import free_port, setup, wipe_graph

    setup()
    from django.core.management import call_command

    from sync import queue
    from sync.demo.graph import load_demo
    from sync.models import SyncEvent
    from sync.observe.readings import percentiles
    from sync.policy import synced_labels
    from sync.stores import graph_store, vector_store

    call_command("collectstatic", "--noinput", verbosity=0)
    vector_store()
    wipe_graph()
    graph = graph_store()
    graph.ensure_schema(synced_labels())
    load_demo(graph)
    entities = [e for label in synced_labels() for e in graph.scan_label(label, None, 1_000_000)]
    queue.enqueue_many([queue.Work(e.label, e.uid, version=e.version, priority=queue.priority_of(e.label))
                        for e in entities])
    actor = next(e.uid for e in entities if e.label == "ThreatActor")
    cookie = session_cookie()
    env = dict(os.environ, LOG_LEVEL="warning")
    drain = subprocess.Popen([sys.executable, "manage.py", "drain", "--until-empty"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while SyncEvent.objects.filter(status=SyncEvent.Status.DONE).count() == 0:  # the worker is embedding
        assert drain.poll() is None, "the worker ended before its first batch"
        time.sleep(0.2)
    done_before = SyncEvent.objects.filter(status=SyncEvent.Status.DONE).count()
    port = free_port()
    web = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "nightingale.wsgi:application", "-c",
                            "nightingale/gunicorn_conf.py", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                            "--threads", "4"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        while True:  # the first moment it accepts a connection
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert web.poll() is None, "the web server ended"
                time.sleep(0.05)
        accepting = time.perf_counter() - started
        first_page = get(base + "/", cookie)
        first_search = get(base + SEARCHES[0], cookie)
        pages, searches = [], []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and drain.poll() is None:
            for path in PAGES:
                pages.append(get(base + path.format(actor=actor), cookie))
            for path in SEARCHES:
                searches.append(get(base + path, cookie))
        embedding_throughout = drain.poll() is None
        memory = web_memory(web.pid)
        done_after = SyncEvent.objects.filter(status=SyncEvent.Status.DONE).count()
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        drain.terminate()
        web.wait(30)
        drain.wait(60)
    page_p50, page_p95 = percentiles(pages, 0.50, 0.95)
    search_p50, search_p95 = percentiles(searches, 0.50, 0.95)
    return {"variant": name, "accepting_s": accepting, "first_page_ms": first_page, "first_search_ms": first_search,
            "page_p50": page_p50, "page_p95": page_p95, "search_p50": search_p50, "search_p95": search_p95,
            "pages": len(pages), "searches": len(searches), "events_applied": done_after - done_before,
            "embedding_throughout": embedding_throughout, "backlog": len(entities), "memory": memory}


def main(variants: list[str], seconds: float) -> None:
    results = []
    for name in variants:
        done = subprocess.run([sys.executable, "-u", str(Path(__file__)), name, str(seconds)], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode:
            print(f"{name}: failed\n{done.stderr[-3000:]}")
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if not results:
        raise SystemExit(1)
    backlog = results[0]["backlog"]
    print(f"\nthe dashboard while a backfill of {backlog} entities embeds (gunicorn 2x4, one drain worker; "
          f"{os.cpu_count()} cores), over HTTP from the first request")
    print(f"{'variant':<9} {'listening':>9} {'1st page':>9} {'1st search':>10} {'page p50':>9} {'page p95':>9} "
          f"{'search p50':>10} {'search p95':>10} {'requests':>9} {'applied':>8}  verdict (goal p95 <= 300 ms)")
    for r in results:
        ok = max(r["page_p95"], r["search_p95"], r["first_page_ms"], r["first_search_ms"]) <= GOAL_MS
        note = "" if r["embedding_throughout"] else " (the backfill ended before the measurement did)"
        print(f"{r['variant']:<9} {r['accepting_s']:>8.1f}s {r['first_page_ms']:>7.0f}ms {r['first_search_ms']:>8.0f}ms "
              f"{r['page_p50']:>7.0f}ms {r['page_p95']:>7.0f}ms {r['search_p50']:>8.0f}ms {r['search_p95']:>8.0f}ms "
              f"{r['pages'] + r['searches']:>9} {r['events_applied']:>8}  {'ok' if ok else 'OVER'}{note}")
    print("\nmemory while serving, MB (RSS / PSS / private):")
    for r in results:
        arbiter, workers = r["memory"]["arbiter"], r["memory"]["workers"]
        each = ", ".join(f"{w['rss']:.0f} / {w['pss']:.0f} / {w['private']:.0f}" for w in workers)
        total = arbiter["pss"] + sum(w["pss"] for w in workers)
        print(f"{r['variant']:<9} arbiter {arbiter['rss']:.0f} / {arbiter['pss']:.0f} / {arbiter['private']:.0f}; "
              f"workers {each}; PSS of all {total:.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    run = run_variant(sys.argv[1], float(sys.argv[2]))
    print(json.dumps(run))
