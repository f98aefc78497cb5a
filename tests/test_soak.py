"""The short soak: `bench/soak.py --minutes 2`, the whole stack (its own Neo4j, the workers, change
capture, scheduled reconciliation, the web server) under 5 changes a second while Neo4j is killed
and started again, the vector store goes down for a while and a worker is killed — ending with
zero drift and nothing lost. The long mode is run by hand (README, Benchmarks).

It shares no server with the other tests: bin/test runs it beside the fault suite, in a pytest
session of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 420  # seconds; then the soak is asked to stop (SIGTERM), and it takes its stack down
TEARDOWN = 120


@pytest.mark.slow
def test_two_minutes_of_load_through_faults_end_with_zero_drift():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_", "PROMETHEUS_"))}
    soak = subprocess.Popen([sys.executable, "-u", "bench/soak.py", "--minutes", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = soak.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # Killed outright, it would leave its workers, web server and Neo4j running.
        soak.send_signal(signal.SIGTERM)
        try:
            out, err = soak.communicate(timeout=TEARDOWN)
        except subprocess.TimeoutExpired:
            soak.kill()
            out, err = soak.communicate()
        pytest.fail(f"the soak ran past {TIMEOUT} s:\n{out[-8000:]}\n{err[-3000:]}")
    results = out[out.find("=== soak: results ==="):]
    assert soak.returncode == 0 and "verdict: zero drift, nothing lost" in results, f"{out[-8000:]}\n{err[-3000:]}"
    assert "drift none" in results and "unfinished events {}" in results
    assert "Neo4j killed and started again" in results and "vector store down" in results and "killed (SIGKILL)" in results
