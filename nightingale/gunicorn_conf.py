"""gunicorn settings for the dashboard (bin/serve, the Dockerfile, compose.yaml): `-c
nightingale/gunicorn_conf.py`.

The server is ready before it accepts its first connection, so that no page or search waits for
imports, templates or the model's weights (a first request used to wait 2-17 s while the workers
embedded a backfill). The arbiter loads the application (`preload_app`) and then, in
`on_starting` — before it binds its sockets — runs `dashboard.warmup.before_fork`: every view
imported, the stores' client libraries imported, every template compiled, and the embedding model
loaded with one query embedded on a single thread. Every worker forked from it inherits all of it,
the weights shared copy-on-write (docs/deploy.md gives the memory measured), and a worker that
replaces a dead one is ready at once.

Single-threaded is the rule in the arbiter: a process forked after torch ran a multi-threaded
operation hangs at its own first one (GNU OpenMP's thread pool does not survive a fork; tried
here: both children hung). One thread never starts the pool. Each worker then embeds one query in
`post_worker_init`, which touches the shared pages before the worker takes a request.

`EMBEDDING_PRELOAD=false` leaves the model out of both (the first search in each worker then
loads it); the imports and templates are prepared either way.
"""

import logging
import os

logger = logging.getLogger("nightingale.web")

# The application (Django, its views and templates, the model) is loaded once, in the arbiter.
preload_app = True


def _model() -> bool:
    from django.conf import settings

    return settings.EMBEDDING_PRELOAD


def on_starting(server):
    """In the arbiter, after the application is loaded and before the sockets are bound."""
    from dashboard.warmup import before_fork

    try:
        seconds = before_fork(model=_model())
    except Exception:  # noqa: BLE001 — search then answers with the model's error; pages still work
        logger.exception("preparing the web server failed; the first requests will do it")
        return
    server.log.info("views, templates%s ready in %.1fs, before accepting connections",
                    " and the embedding model" if _model() else "", seconds)


def post_worker_init(worker):
    if not _model():
        return
    from dashboard.warmup import after_fork

    try:
        seconds = after_fork()
    except Exception:  # noqa: BLE001 — as in on_starting
        logger.exception("web worker %s: the embedding model could not be loaded", os.getpid())
        return
    logger.info("web worker %s: embedding model ready in %.2fs", os.getpid(), seconds)
