"""Tasks the broker tests hand to real django-q2 clusters (imported there by dotted path)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def always_fails(marker: str) -> None:
    """Fails every time it runs, leaving one line per attempt in `marker`."""
    with open(marker, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    raise RuntimeError("this task always fails")


def slow(marker: str, seconds: float) -> str:
    """Writes 'started <pid>' to `marker`, works for `seconds`, then writes 'finished <pid>'."""
    path = Path(marker)
    with path.open("a") as handle:
        handle.write(f"started {os.getpid()}\n")
    time.sleep(seconds)
    with path.open("a") as handle:
        handle.write(f"finished {os.getpid()}\n")
    return "done"
