"""What the fault cases do to the system around a fault: write to the graph as another tool would,
run change capture, drain the queue until it settles, run the observer."""

from __future__ import annotations

import threading

from django.db import connections

from sync import capture, worker
from sync.models import SyncEvent
from sync.observe import observer

UNFINISHED = [SyncEvent.Status.QUEUED, SyncEvent.Status.IN_FLIGHT]
POLLER = "faults-poller"  # every poll of the suite holds the cursor's lease under this one name


def poll(overlap: float | None = None) -> capture.CaptureResult:
    """One change-capture poll."""
    return capture.poll_once(POLLER, overlap=overlap)


def cypher(graph, query: str, **params):
    records, _, _ = graph.driver.execute_query(query, params, database_=graph.database)
    return records


def create_actors(graph, uids) -> None:
    """Foreign writes (the APOC trigger stamps their version and updated_at)."""
    cypher(graph, "UNWIND $uids AS uid CREATE (:ThreatActor {uid: uid, name: 'Actor ' + uid, "
                  "description: 'Intrusion set ' + uid + ' targeting energy utilities with spear-phishing.'})",
           uids=list(uids))


def edit_actor(graph, uid: str, description: str) -> None:
    cypher(graph, "MATCH (a:ThreatActor {uid: $uid}) SET a.description = $description", uid=uid,
           description=description)


def delete_actor(graph, uid: str) -> None:
    cypher(graph, "MATCH (a:ThreatActor {uid: $uid}) DETACH DELETE a", uid=uid)


def settle(seconds: float = 90, poll: bool = True):
    """One capture poll (unless `poll=False`), then drain until nothing is queued or in flight,
    waiting out backoffs. Returns the drain's counts."""
    if poll:
        capture.poll_once(POLLER)
    total = worker.drain(idle_exit=None, flush=False, max_seconds=seconds,
                         stop=lambda: not SyncEvent.objects.filter(status__in=UNFINISHED).exists())
    left = list(SyncEvent.objects.filter(status__in=UNFINISHED).values_list("label", "uid", "status", "last_error"))
    assert not left, f"still unfinished after {seconds} s: {left[:5]}"
    return total


def tick():
    """One observer check: a reading, the service pings, the alert rules."""
    return observer.tick("faults-observer")


class CaptureThread:
    """`capture.run` polling every `interval` seconds in a thread, as the scheduled task does."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.result = None
        self._thread = threading.Thread(target=self._run, name="faults-capture", daemon=True)

    def _run(self) -> None:
        try:
            self.result = capture.run(POLLER, seconds=3600, interval=self.interval,
                                      stop=self._stop.is_set)
        except BaseException as exc:  # noqa: BLE001 — the case asserts the loop outlived the fault
            self.error = exc
        finally:
            connections.close_all()

    def __enter__(self) -> CaptureThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

