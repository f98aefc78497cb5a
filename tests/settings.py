"""Test settings: the production settings module, read with test defaults in the environment.

The test Neo4j runs on its own port and data directory so a test run never touches the graph
that `bin/run` serves.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DATA_DIR", str(_ROOT / "var" / "test"))
os.environ.setdefault("NEO4J_URI", "bolt://127.0.0.1:7688")
os.environ.setdefault("NEO4J_PASSWORD", "nightingale-test")
os.environ.setdefault("SYNC_KICK_DRAIN", "false")
os.environ.setdefault("SYNC_WORKER_NICE", "0")  # worker subprocesses keep the tests' own priority
os.environ.setdefault("OBSERVE_BESIDE_CAPTURE", "false")  # tests run the observer themselves
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    # A fresh directory per run (worker subprocesses inherit it): counters start at zero.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="nightingale-test-prometheus-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], True)
os.environ.setdefault("SECRET_KEY", "test-only-secret-key-0123456789abcdefghijklmnop")

from nightingale.settings import *  # noqa: E402,F403

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 — whitenoise warns about a missing one
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405

# A file, not pytest-django's in-memory default, so worker subprocesses in the crash and
# concurrency tests can share the test database.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}  # noqa: F405
