"""Issue 18, defect 1: an entity whose apply a timeout cuts short, again and again, becomes a dead
letter saying so instead of cycling for ever; the events that shared its batches are applied.

A batch cut short by a timeout goes back to the queue without an attempt counted (the batch may
just have been too big), but each of its events counts the interruption: an event interrupted
once is claimed alone from then on, and after SYNC_MAX_INTERRUPTIONS it is dead.
"""

from __future__ import annotations

import pytest
from django_q.exceptions import TimeoutException

from sync import deadletters, embedding, queue
from sync.apply import apply_events
from sync.models import SyncEvent, SyncRecord
from sync.shutdown import StopRequested

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def poison(monkeypatch):
    """django-q2's timeout (a SystemExit raised in the worker) whenever a batch embeds the
    poison entity's text: its apply never ends within the task's time limit."""
    model = embedding.get_embedder()
    real = model.encode

    def encode(texts, *args, **kwargs):
        if any("Poison" in text for text in texts):
            raise TimeoutException("Task exceeded maximum timeout value (180 seconds)")
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(model, "encode", encode)


def write_actors(graph, uids):
    for uid in uids:
        graph.write_entity("ThreatActor", uid, {"name": uid.title(), "description": f"{uid} is an actor"}, source="t")
    queue.enqueue_many([queue.Work("ThreatActor", uid) for uid in uids])


def drain_by_hand(rounds: int = 20) -> list[list[str]]:
    """Claim and apply until nothing is ready, as the drain task does, surviving the timeouts
    (django-q2 starts a fresh worker). Returns the uids of each batch."""
    batches = []
    for _ in range(rounds):
        batch = queue.claim_batch("worker-1", 10)
        if not batch:
            return batches
        batches.append(sorted(event.uid for event in batch))
        try:
            apply_events(batch)
        except TimeoutException:
            pass
    raise AssertionError(f"still cycling after {rounds} batches: {batches}")


def test_a_poison_entity_is_a_dead_letter_after_n_timeouts_and_its_batch_mates_are_applied(
        synced_graph, graph, vectors, poison, settings):
    settings.SYNC_MAX_INTERRUPTIONS = 3
    write_actors(graph, ["poison", "mate-a", "mate-b", "mate-c"])
    batches = drain_by_hand()
    assert batches[0] == ["mate-a", "mate-b", "mate-c", "poison"]  # cut short: all four interrupted once
    assert all(len(batch) == 1 for batch in batches[1:])  # from then on each is claimed alone
    assert batches.count(["poison"]) == 2  # its second and third interruptions
    dead = SyncEvent.objects.get(uid="poison")
    assert (dead.status, dead.interruptions, dead.attempts) == ("dead", 3, 0)
    assert dead.last_error == queue.interrupted_error(3)
    assert dead.last_error.startswith("interrupted by timeouts 3 times")
    mates = SyncEvent.objects.filter(uid__startswith="mate-")
    assert {(e.status, e.outcome, e.interruptions) for e in mates} == {("done", "upserted", 1)}
    assert set(SyncRecord.objects.filter(status="in_sync").values_list("uid", flat=True)) == {"mate-a", "mate-b", "mate-c"}


def test_the_queue_page_shows_why_it_died(synced_graph, graph, vectors, poison, settings, client, viewer):
    settings.SYNC_MAX_INTERRUPTIONS = 2
    write_actors(graph, ["poison"])
    drain_by_hand()
    client.force_login(viewer)
    assert "interrupted by timeouts &lt;n&gt; times" in client.get("/queue/").content.decode()
    [group] = deadletters.groups()
    listing = client.get(f"/queue/dead/?group={group.key}").content.decode()
    assert "ThreatActor:poison" in listing and "interrupted by timeouts 2 times (SYNC_MAX_INTERRUPTIONS)" in listing


def test_a_retried_dead_letter_starts_with_no_interruptions(synced_graph, graph, vectors, poison, settings, admin_user):
    settings.SYNC_MAX_INTERRUPTIONS = 1
    write_actors(graph, ["poison"])
    drain_by_hand()
    dead = SyncEvent.objects.get(uid="poison", status="dead")
    assert queue.retry_dead([dead.id], admin_user) == 1
    dead.refresh_from_db()
    assert (dead.status, dead.interruptions, dead.attempts) == ("queued", 0, 0)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_stop_asked_for_by_a_person_counts_no_interruption(synced_graph, graph, vectors, monkeypatch, stop):
    error = KeyboardInterrupt() if stop == "ctrl-c" else StopRequested("stopped by SIGTERM")
    write_actors(graph, ["actor-1", "actor-2"])
    model = embedding.get_embedder()

    def stopped(*args, **kwargs):
        raise error

    monkeypatch.setattr(model, "encode", stopped)
    batch = queue.claim_batch("worker-1", 10)
    with pytest.raises(type(error)):
        apply_events(batch)
    assert {(e.status, e.attempts, e.interruptions) for e in SyncEvent.objects.all()} == {("queued", 0, 0)}


def test_a_newer_change_queued_meanwhile_inherits_the_interruptions(synced_graph, graph, vectors, poison, settings):
    settings.SYNC_MAX_INTERRUPTIONS = 5
    write_actors(graph, ["poison"])
    batch = queue.claim_batch("worker-1", 10)
    queue.enqueue(queue.Work("ThreatActor", "poison", source="capture"))  # a newer change, queued beside it
    with pytest.raises(TimeoutException):
        apply_events(batch)
    retired, queued = SyncEvent.objects.order_by("id")
    assert (retired.status, retired.outcome) == ("done", "superseded")
    assert (queued.status, queued.interruptions) == ("queued", 1)
