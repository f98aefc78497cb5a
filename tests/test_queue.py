"""The durable queue: coalescing, priority claims with anti-starvation, leases, backoff, dead letters."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from sync import queue
from sync.models import AuditEntry, Priority, SyncEvent
from sync.queue import Work

pytestmark = pytest.mark.django_db

Status = SyncEvent.Status


def test_it_coalesces_a_burst_into_one_event():
    for version in range(1, 51):
        queue.enqueue(Work("ThreatActor", "apt29", version=version))
    events = list(SyncEvent.objects.all())
    assert len(events) == 1
    assert events[0].version == 50
    assert events[0].coalesced == 49


def test_newest_version_highest_priority_and_earliest_change_win():
    early = timezone.now() - timedelta(minutes=5)
    queue.enqueue_many([
        Work("KEV", "CVE-1", version=3, priority=Priority.LOW),
        Work("KEV", "CVE-1", version=2, priority=Priority.HIGH, changed_at=early, operation="delete"),
    ])
    event = SyncEvent.objects.get()
    assert (event.version, event.priority, event.changed_at, event.operation) == (3, Priority.HIGH, early, "upsert")


def test_a_change_during_flight_gets_its_own_queued_event():
    queue.enqueue(Work("ThreatActor", "apt29", version=1))
    [claimed] = queue.claim_batch("w1", 10)
    queue.enqueue(Work("ThreatActor", "apt29", version=2))
    assert SyncEvent.objects.filter(status=Status.QUEUED).count() == 1
    assert claimed.status == Status.IN_FLIGHT


def test_it_claims_by_priority():
    queue.enqueue_many([Work("Prospect", f"p{i}", priority=Priority.LOW) for i in range(5)]
                       + [Work("KEV", f"k{i}", priority=Priority.HIGH) for i in range(5)]
                       + [Work("ThreatActor", f"t{i}", priority=Priority.MEDIUM) for i in range(5)])
    batch = queue.claim_batch("w1", 6, starvation_seconds=3600)
    assert [e.priority for e in batch] == [Priority.HIGH] * 5 + [Priority.MEDIUM]


def test_low_priority_still_progresses_under_constant_high_load():
    queue.enqueue(Work("Prospect", "old-low", priority=Priority.LOW))
    SyncEvent.objects.update(created_at=timezone.now() - timedelta(seconds=120))
    for round_ in range(3):
        queue.enqueue_many([Work("KEV", f"k{round_}-{i}", priority=Priority.HIGH) for i in range(20)])
        batch = queue.claim_batch("w1", 8, starvation_seconds=60)
        if any(e.uid == "old-low" for e in batch):
            break
    else:
        pytest.fail("the aged LOW event was never claimed under HIGH load")


def test_two_claims_never_share_an_event():
    queue.enqueue_many([Work("ThreatActor", f"t{i}") for i in range(30)])
    first = queue.claim_batch("w1", 20)
    second = queue.claim_batch("w2", 20)
    assert len(first) == 20 and len(second) == 10
    assert not {e.id for e in first} & {e.id for e in second}


def test_an_expired_lease_is_claimed_again():
    queue.enqueue(Work("ThreatActor", "apt29"))
    [lost] = queue.claim_batch("crashed-worker", 10, visibility_timeout=30)
    assert queue.claim_batch("w2", 10) == []
    SyncEvent.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    [again] = queue.claim_batch("w2", 10)
    assert again.id == lost.id and again.attempts == 2
    assert queue.ack([lost], "upserted") == 0  # the crashed worker's late ack is refused
    assert queue.ack([again], "upserted") == 1


def test_failures_back_off_then_go_dead(settings):
    settings.SYNC_MAX_ATTEMPTS = 3
    queue.enqueue(Work("ThreatActor", "apt29"))
    for attempt in (1, 2):
        [event] = queue.claim_batch("w1", 1)
        assert queue.fail(event, f"boom {attempt}") == Status.QUEUED
        event.refresh_from_db()
        assert event.next_attempt_at > timezone.now() > event.failed_at  # when it failed: for the timeline
        assert queue.claim_batch("w1", 1) == []  # backing off
        SyncEvent.objects.update(next_attempt_at=timezone.now())
    [event] = queue.claim_batch("w1", 1)
    assert queue.fail(event, "boom 3") == Status.DEAD
    event.refresh_from_db()
    assert (event.status, event.last_error) == (Status.DEAD, "boom 3")


def test_backoff_grows_with_jitter_and_honours_retry_after(settings):
    settings.SYNC_BACKOFF_BASE, settings.SYNC_BACKOFF_MAX = 2.0, 600.0
    delays = [queue.backoff_delay(n) for n in (1, 2, 3, 4, 5)]
    for n, delay in enumerate(delays, start=1):
        assert 2.0 ** n / 2 <= delay <= 2.0 ** n
    assert queue.backoff_delay(1, retry_after=30) == 30
    assert queue.backoff_delay(50) <= 600


def test_a_permanent_failure_goes_dead_at_once():
    queue.enqueue(Work("ThreatActor", "apt29"))
    [event] = queue.claim_batch("w1", 1)
    assert queue.fail(event, "metadata over 40 KB", permanent=True) == Status.DEAD


def test_dead_letters_are_retried_and_discarded_with_an_audit_trail():
    analyst = User.objects.create_user("analyst")
    queue.enqueue_many([Work("ThreatActor", "a"), Work("ThreatActor", "b")])
    for event in queue.claim_batch("w1", 2):
        queue.fail(event, "bad", permanent=True)
    a, b = SyncEvent.objects.order_by("uid")
    assert queue.retry_dead([a.id], analyst) == 1
    assert queue.discard_dead([b.id], analyst, note="obsolete") == 1
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, a.attempts) == (Status.QUEUED, 0)
    assert (b.status, b.outcome, b.resolved_by) == (Status.DONE, "discarded", analyst)
    actions = set(AuditEntry.objects.values_list("action", "actor_name"))
    assert actions == {("dead_letter.retry", "analyst"), ("dead_letter.discard", "analyst")}


def test_retrying_a_dead_letter_merges_into_a_queued_event():
    queue.enqueue(Work("ThreatActor", "a", priority=Priority.LOW))
    [event] = queue.claim_batch("w1", 1)
    queue.fail(event, "bad", permanent=True)
    queue.enqueue(Work("ThreatActor", "a", version=9, priority=Priority.LOW))
    assert queue.retry_dead([event.id], "ops") == 1
    assert SyncEvent.objects.filter(status=Status.QUEUED).count() == 1


def test_depth_counts_queued_and_in_flight_by_priority():
    queue.enqueue_many([Work("KEV", "k", priority=Priority.HIGH), Work("Prospect", "p", priority=Priority.LOW),
                        Work("Prospect", "q", priority=Priority.LOW)])
    queue.claim_batch("w1", 1)
    lanes = queue.lanes()
    assert {p: lane.depth for p, lane in lanes.items()} == {"high": 1, "medium": 0, "low": 2}
    assert (lanes["low"].queued, lanes["low"].in_flight, lanes["high"].in_flight) == (2, 0, 1)


def test_an_urgent_claim_takes_high_priority_work_only():
    queue.enqueue_many([Work("ThreatActor", f"t{i}", priority=Priority.MEDIUM) for i in range(5)]
                       + [Work("KEV", "k", priority=Priority.HIGH)])
    SyncEvent.objects.update(created_at=timezone.now() - timedelta(hours=1))  # aged, still not taken
    batch = queue.claim_batch("w1", 10, max_priority=Priority.HIGH)
    assert [e.uid for e in batch] == ["k"]


def test_the_worker_flushes_at_size_or_interval_and_never_holds_high_work():
    from sync.worker import ReadyWork, high_only, should_flush

    assert not should_flush(ReadyWork(10, False, 1.0), batch_size=100, flush_interval=5)
    assert should_flush(ReadyWork(100, False, 0.1), batch_size=100, flush_interval=5)
    assert should_flush(ReadyWork(10, False, 5.0), batch_size=100, flush_interval=5)
    assert should_flush(ReadyWork(1, True, 0.0), batch_size=100, flush_interval=5)
    assert high_only(ReadyWork(10, True, 1.0), batch_size=100, flush_interval=5)
    assert not high_only(ReadyWork(10, True, 6.0), batch_size=100, flush_interval=5)


def test_an_entity_in_flight_is_not_claimed_by_a_second_worker():
    queue.enqueue(Work("ThreatActor", "apt29", version=1))
    [first] = queue.claim_batch("w1", 10)
    queue.enqueue(Work("ThreatActor", "apt29", version=2))
    queue.enqueue(Work("ThreatActor", "apt28", version=1))
    assert [e.uid for e in queue.claim_batch("w2", 10)] == ["apt28"]
    queue.ack([first], "upserted")
    assert [e.version for e in queue.claim_batch("w2", 10)] == [2]


def test_a_released_event_goes_back_untouched():
    queue.enqueue(Work("ThreatActor", "apt29", version=1))
    [event] = queue.claim_batch("w1", 10)
    assert queue.release([event]) == 1
    event.refresh_from_db()
    assert (event.status, event.attempts, event.lease_expires_at) == (Status.QUEUED, 0, None)
    assert queue.claim_batch("w2", 10)[0].id == event.id  # claimable again at once


def test_a_released_event_folds_into_a_newer_queued_one():
    queue.enqueue(Work("KEV", "CVE-1", version=1, priority=Priority.HIGH))
    [event] = queue.claim_batch("w1", 10)
    queue.enqueue(Work("KEV", "CVE-1", version=2, priority=Priority.LOW))
    queue.release([event])
    event.refresh_from_db()
    assert (event.status, event.outcome) == (Status.DONE, "superseded")
    queued = SyncEvent.objects.get(status=Status.QUEUED)
    assert (queued.version, queued.priority) == (2, Priority.HIGH)


@pytest.mark.parametrize(
    ("current", "claimed", "upserted", "deferred", "expected"),
    [
        (100, 100, 0, 0, 400),     # cheap work and a backlog: fourfold
        (400, 400, 0, 0, 1000),    # ... up to the largest
        (400, 150, 0, 0, 400),     # the queue ran short: no reason to grow
        (100, 100, 1, 0, 400),     # little embedding: still grows, at most fourfold
        (1000, 1000, 500, 0, 200),  # half of it embedded: back to about 100 to embed
        (1000, 1000, 100, 900, 100),  # a misjudged claim: the base again
        (100, 100, 100, 0, 100),   # all embedding: the base
    ],
)
def test_the_batch_grows_while_work_is_cheap(current, claimed, upserted, deferred, expected):
    from sync.apply import ApplyCounts
    from sync.worker import next_batch_size

    counts = ApplyCounts(upserted=upserted, deferred=deferred, metadata_only=claimed - upserted - deferred)
    assert next_batch_size(current, counts, claimed, base=100, largest=1000) == expected


def test_a_failing_batch_does_not_grow_the_next():
    from sync.apply import ApplyCounts
    from sync.worker import next_batch_size

    assert next_batch_size(400, ApplyCounts(retried=400), 400, base=100, largest=1000) == 100
