"""Helpers for the observation tests: events as the engine leaves them, a local webhook receiver."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.utils import timezone

from sync.models import Priority, SyncEvent

_uid = iter(range(10**9))


def finished(lag: float | None, *, priority: int = Priority.MEDIUM, at: datetime | None = None,
             label: str = "ThreatActor", outcome: str = "upserted") -> SyncEvent:
    """An event the engine acked at `at` with this change-to-vector lag."""
    at = at or timezone.now()
    n = next(_uid)
    return SyncEvent.objects.create(label=label, uid=f"done-{n}", priority=priority, status=SyncEvent.Status.DONE,
                                    created_at=at - timedelta(seconds=(lag or 0) + 1), finished_at=at,
                                    outcome=outcome, lag_seconds=lag,
                                    changed_at=at - timedelta(seconds=lag or 0))


def waiting(*, priority: int = Priority.MEDIUM, age: float = 0.0, status: str = SyncEvent.Status.QUEUED,
            label: str = "ThreatActor", now: datetime | None = None) -> SyncEvent:
    """A queued, in-flight or dead event whose change is `age` seconds old at `now`."""
    n = next(_uid)
    now = now or timezone.now()
    return SyncEvent.objects.create(label=label, uid=f"wait-{n}", priority=priority, status=status,
                                    changed_at=now - timedelta(seconds=age), created_at=now - timedelta(seconds=age),
                                    finished_at=now if status == SyncEvent.Status.DEAD else None,
                                    last_error="boom" if status == SyncEvent.Status.DEAD else "")


class Receiver:
    """A local HTTP server that records what is POSTed to it and answers `statuses` in turn
    (then 200)."""

    def __init__(self, statuses: list[int] | None = None):
        self.bodies: list[dict] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.bodies.append(body)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[tuple[str, str]]:
        return [(b["alert"]["rule"], b["alert"]["event"]) for b in self.bodies]
