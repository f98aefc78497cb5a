"""Shared set-up for the benchmarks: a bench Neo4j of its own, a fresh SQLite file and LanceDB.

Benchmarks never touch the graphs `bin/run` and `bin/test` use: they run a third local Neo4j on
127.0.0.1:7689 with its data under var/bench-neo4j (started here when it is not running).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"


def setup(fresh: bool = True) -> None:
    os.environ.setdefault("NEO4J_URI", "bolt://127.0.0.1:7689")
    os.environ.setdefault("NEO4J_PASSWORD", "nightingale-bench")
    os.environ.setdefault("NEO4J_LOCAL_DIR", str(ROOT / "var" / "bench-neo4j"))
    os.environ.setdefault("NEO4J_PAGECACHE", "512m")
    os.environ.setdefault("NEO4J_HEAP", "1g")
    os.environ["DATA_DIR"] = str(BENCH_DIR)
    os.environ.setdefault("SYNC_KICK_DRAIN", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nightingale.settings")
    os.environ.setdefault("LOG_LEVEL", "warning")
    if fresh and BENCH_DIR.exists():
        shutil.rmtree(BENCH_DIR)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "tools" / "neo4j" / "neo4jctl.py"), "start"], check=True)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def wipe_graph() -> None:
    from sync.stores import graph_store

    graph = graph_store()
    with graph.driver.session(database=graph.database) as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()
        # With the APOC trigger installed (bench/lag.py), the wipe itself leaves tombstones.
        session.run("MATCH (t:_SyncTombstone) DELETE t").consume()


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries a forked
    parent's high-water mark across exec into it, so a child started by a process that had just
    built a million rows reported that process's peak, not its own."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
