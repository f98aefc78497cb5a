"""What a web server does before it accepts its first connection (nightingale/gunicorn_conf.py).

`before_fork()` runs in gunicorn's arbiter: it imports what the first requests would import (every
view, the stores' client libraries), compiles every template, and loads the embedding model (one
thread: see gunicorn_conf). The forked workers inherit all of it. Without it the first page in each
worker took 2.3 s (LanceDB's import alone is about 2 s) and the first search 2-9 s, while the
workers embedded a backfill (`bench/dashboard.py --backfill`).

`after_fork()` runs in each worker before it takes a request: one query embedded on one thread,
which touches the model's shared pages.
"""

from __future__ import annotations

import time
from pathlib import Path


def before_fork(*, model: bool) -> float:
    """Import, compile and (with `model`) load the embedding model; returns the seconds it took."""
    from django.conf import settings
    from django.template.loader import get_template
    from django.urls import get_resolver

    from sync.stores import import_clients

    started = time.monotonic()
    get_resolver().url_patterns  # noqa: B018 — imports every view module
    import_clients()
    for directory in settings.TEMPLATES[0]["DIRS"]:
        for path in sorted(Path(directory).rglob("*.html")):
            get_template(path.relative_to(directory).as_posix())
    if model:
        from sync.embedding import warm_up

        warm_up()
    return time.monotonic() - started


def after_fork() -> float:
    from sync.embedding import warm_up

    return warm_up()
