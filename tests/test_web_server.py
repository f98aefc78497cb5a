"""The real web server (gunicorn with nightingale/gunicorn_conf.py): the embedding model is loaded
before the port accepts a connection, and the workers forked after it embed search queries (a
process forked after torch ran a multi-threaded operation hangs at its first one)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings
from django.test import Client

from tests.conftest import make_user
from tests.test_stopping import database_url, free_port, kill_group, output, start, stop_group
from tests.test_worker_processes import ROOT, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SEARCHES = ("ransomware initial access", "espionage against energy firms", "phishing attachments", "botnet")


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_the_model_is_loaded_before_the_port_accepts_and_forked_workers_embed_queries(vectors, tmp_path):
    client = Client()
    client.force_login(make_user("ana", "analyst"))
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    port = free_port()
    env = worker_env(tmp_path, database_url(), EMBEDDING_PRELOAD="true", STATIC_ROOT=str(tmp_path / "static"))
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    web = start([str(ROOT / ".venv" / "bin" / "gunicorn"), "nightingale.wsgi:application", "-c",
                 "nightingale/gunicorn_conf.py", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "2",
                 "--log-level", "info"], env, tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not accepts(port):
            assert web.poll() is None and time.monotonic() < deadline, output(web)[-3000:]
            time.sleep(0.05)
        # At the first moment a connection is accepted, the arbiter has the model.
        assert "and the embedding model ready" in output(web), output(web)[-3000:]
        for query in SEARCHES:  # over a few connections: both workers answer, none hangs
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/search/?q={query.replace(' ', '+')}&k=5", headers={"Cookie": cookie})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    assert "Search" in response.read().decode()
            except urllib.error.HTTPError as exc:
                pytest.fail(f"{query!r}: {exc}\n{output(web)[-5000:]}")
        assert len(re.findall(r"web worker \d+: embedding model ready", output(web))) == 2, output(web)[-3000:]
        assert "could not be loaded" not in output(web)
        left = stop_group(web)
    finally:
        kill_group(web)
    assert left == []
