"""gunicorn settings for the dashboard (bin/serve, the Dockerfile, compose.yaml): `-c
nightingale/gunicorn_conf.py`.

The embedding model is ready before the server accepts its first connection, so that no page or
search waits for the weights (a first request used to wait 17 s while the workers loaded them).
The arbiter loads the application (`preload_app`) and then, in `on_starting` — before it binds
its sockets — loads the model and embeds one query on a single thread. Every worker forked from it
inherits the loaded weights, shared copy-on-write (docs/deploy.md gives the memory measured), and
a worker that replaces a dead one is ready at once.

Single-threaded is the rule in the arbiter: a process forked after torch ran a multi-threaded
operation hangs at its own first one (GNU OpenMP's thread pool does not survive a fork; tried
here: both children hung). One thread never starts the pool. Each worker then embeds one query in
`post_worker_init`, which touches the shared pages before the worker takes a request.

`EMBEDDING_PRELOAD=false` skips both (the first search in each worker then loads the model).
"""

import logging
import os

logger = logging.getLogger("nightingale.web")

# The application (Django and the model) is loaded once, in the arbiter, before the fork.
preload_app = True


def _preload_enabled() -> bool:
    from django.conf import settings

    return settings.EMBEDDING_PRELOAD


def on_starting(server):
    """In the arbiter, after the application is loaded and before the sockets are bound."""
    if not _preload_enabled():
        return
    from sync.embedding import warm_up

    try:
        seconds = warm_up()
    except Exception:  # noqa: BLE001 — search then answers with the model's error; pages still work
        logger.exception("the embedding model could not be loaded; searches will report it")
        return
    server.log.info("embedding model loaded in %.1fs, before accepting connections", seconds)


def post_worker_init(worker):
    if not _preload_enabled():
        return
    from sync.embedding import warm_up

    try:
        seconds = warm_up()
    except Exception:  # noqa: BLE001 — as in on_starting
        logger.exception("web worker %s: the embedding model could not be loaded", os.getpid())
        return
    logger.info("web worker %s: embedding model ready in %.2fs", os.getpid(), seconds)
