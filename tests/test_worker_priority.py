"""The embedding workers give the web server the CPU first (SYNC_WORKER_NICE): they lower their own
priority at start, never raise it, and their children inherit it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = """
import os, subprocess, sys
import django
django.setup()
from sync.worker import lower_cpu_priority
own = lower_cpu_priority()
child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True)
print(own, child.stdout.strip())
"""


def niceness_after(wanted: int, *, start: int = 0) -> tuple[int, int]:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", SYNC_WORKER_NICE=str(wanted))
    prefix = ["nice", "-n", str(start)] if start else []
    done = subprocess.run([*prefix, sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    own, child = done.stdout.split()[-2:]
    return int(own), int(child)


def test_workers_lower_their_priority_and_their_children_inherit_it():
    base = os.nice(0)
    assert niceness_after(base + 7) == (base + 7, base + 7)


def test_a_worker_started_nicer_than_the_setting_is_never_raised():
    base = os.nice(0)
    assert niceness_after(base + 3, start=12) == (base + 12, base + 12)


def test_zero_leaves_the_priority_as_it_is():
    base = os.nice(0)
    assert niceness_after(0) == (base, base)
