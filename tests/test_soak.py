"""The short soak: `bench/soak.py --minutes 2`, the whole stack (its own Neo4j, the workers, change
capture, scheduled reconciliation, the web server) under 5 changes a second while Neo4j is killed
and started again, the vector store goes down for a while and a worker is killed — ending with
zero drift and nothing lost. The long mode is run by hand (README, Benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_minutes_of_load_through_faults_end_with_zero_drift():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_", "PROMETHEUS_"))}
    done = subprocess.run([sys.executable, "-u", "bench/soak.py", "--minutes", "2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=420)
    out = done.stdout
    results = out[out.find("=== soak: results ==="):]
    assert done.returncode == 0 and "verdict: zero drift, nothing lost" in results, (
        f"{out[-8000:]}\n{done.stderr[-3000:]}")
    assert "drift none" in results and "unfinished events {}" in results
    assert "Neo4j killed and started again" in results and "vector store down" in results and "killed (SIGKILL)" in results
