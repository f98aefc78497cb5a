"""gunicorn settings for the dashboard (bin/serve, the Dockerfile, compose.yaml): `-c
nightingale/gunicorn_conf.py`.

Each web worker loads the embedding model before it accepts a request (`post_worker_init` runs
after the application is loaded and before the worker listens), so an analyst's first search
does not wait seconds for the weights while the workers embed. Each worker holds its own copy
(measured with all-MiniLM-L6-v2 and PyPI's torch: about 530 MB of private memory per worker, RSS
950 MB of which 420 MB are torch's shared libraries; docs/deploy.md): the model is not loaded
before the fork, since torch's thread pools do not survive one. `EMBEDDING_PRELOAD=false` skips it
(the first search in each worker then loads the model).
"""

import logging
import os
import threading

logger = logging.getLogger("nightingale.web")


def post_worker_init(worker):
    from django.conf import settings

    if not settings.EMBEDDING_PRELOAD:
        return
    from sync.embedding import warm_up

    # The arbiter kills a worker silent for --timeout seconds; loading takes longer on a busy machine.
    loaded = threading.Event()

    def heartbeat():
        while not loaded.wait(1.0):
            worker.notify()

    threading.Thread(target=heartbeat, name="warm-up-heartbeat", daemon=True).start()
    try:
        seconds = warm_up()
    except Exception:  # noqa: BLE001 — search then answers with the model's error; pages still work
        logger.exception("web worker %s: the embedding model could not be loaded", os.getpid())
        return
    finally:
        loaded.set()
    logger.info("web worker %s: embedding model ready in %.1fs", os.getpid(), seconds)
