"""Resync: enqueue entities again, whatever our records say (used by commands, the UI and repair)."""

from __future__ import annotations

from sync import queue
from sync.models import AuditEntry
from sync.stores import graph_store

PAGE = 1000


def resync_entity(label: str, uid: str, *, actor) -> None:
    queue.enqueue(queue.Work(label=label, uid=uid, priority=queue.priority_of(label), source="resync"))
    AuditEntry.record(actor, "resync", f"{label}:{uid}")


def resync_labels(labels: list[str], *, actor) -> dict[str, int]:
    """Page through each label in uid order and enqueue every entity (one graph read per page)."""
    graph = graph_store()
    counts: dict[str, int] = {}
    for label in labels:
        priority = queue.priority_of(label)
        after, total = None, 0
        while True:
            page = graph.scan_label(label, after, PAGE)
            if not page:
                break
            # No change time: a resync is not a change, and must not count the data's age as lag.
            queue.enqueue_many([queue.Work(label=e.label, uid=e.uid, version=e.version, priority=priority,
                                           source="resync") for e in page])
            total += len(page)
            after = page[-1].uid
        counts[label] = total
        AuditEntry.record(actor, "resync", label, after={"queued": total})
    return counts
