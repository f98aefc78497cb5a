"""Backfills: a bulk load is a phase of its own (issue 21, item 1). Its progress (done of total,
rate, ETA), its lag and its stall alert are read beside the streaming figures, which it never
inflates; streaming changes are claimed before its work; the first start's demo load is the
"initial sync", shown as such on the overview and the Queue page instead of a critical alert."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from sync import backfill, capture, queue, resync, tasks
from sync.demo.graph import DEMO_LABELS
from sync.models import Backfill, Priority, SyncEvent
from sync.observe import alerting, backfills, metrics, readings
from sync.observe.models import Alert
from sync.policy import synced_labels
from sync.reconcile import reconciler as reconcile
from tests.conftest import make_user
from tests.observe_helpers import finished

pytestmark = pytest.mark.django_db(transaction=True)
Kind = Backfill.Kind
FAR = 10**6  # a starvation age no test event reaches: no aged share in the claim


def judge(now=None, rules=alerting.RULES):
    return alerting.evaluate(readings.read(now, observer_alive=True), None, rules=rules, now=now)


def only(*keys):
    return tuple(alerting.BY_KEY[k] for k in keys)


def loaded_with(n: int, *, kind=Kind.RESYNC, label="ThreatActor", priority=Priority.LOW, started_ago=600.0,
                changed_at=None) -> Backfill:
    """A backfill that handed `n` entities to the queue, started `started_ago` seconds ago."""
    load = backfill.start(kind, scope=label, reason="a test", actor="tester", total=n)
    Backfill.objects.filter(pk=load.pk).update(started_at=timezone.now() - timedelta(seconds=started_ago))
    load.refresh_from_db()
    with backfill.tracking(load):
        queue.enqueue_many([queue.Work(label, f"{label.lower()}-{k:04d}", version=1, priority=priority,
                                       changed_at=changed_at, source="resync") for k in range(n)])
    load.refresh_from_db()
    return load


def apply(n: int, *, lag: float, ago: float = 60.0, **claim) -> list[SyncEvent]:
    """A worker claims `n` events and acks them with this lag, `ago` seconds ago."""
    batch = queue.claim_batch("test-worker", n, starvation_seconds=FAR, **claim)
    assert len(batch) == n
    assert queue.ack(batch, "upserted", {e.id: lag for e in batch}) == n
    SyncEvent.objects.filter(id__in=[e.id for e in batch]).update(finished_at=timezone.now() - timedelta(seconds=ago))
    return batch


# --- progress -------------------------------------------------------------------------------

def test_progress_is_done_of_total_with_the_recent_rate_and_an_eta():
    load = backfill.start(Kind.RESYNC, scope="ThreatActor", reason="a test", actor="tester", total=100)
    Backfill.objects.filter(pk=load.pk).update(started_at=timezone.now() - timedelta(minutes=10))
    load.refresh_from_db()
    with backfill.tracking(load):
        queue.enqueue_many([queue.Work("ThreatActor", f"a-{k}", version=1, priority=Priority.LOW) for k in range(40)])
        shown = backfill.progress_of(load)  # still queueing: what is not handed over yet is still to do
        assert (shown.loading, shown.total, shown.done, shown.waiting, shown.remaining) == (True, 100, 0, 40, 100)
        queue.enqueue_many([queue.Work("ThreatActor", f"a-{k}", version=1, priority=Priority.LOW)
                            for k in range(40, 100)])
    shown = backfill.progress_of(load)
    assert (shown.loading, shown.total, shown.done, shown.remaining) == (False, 100, 0, 100)
    assert shown.rate is None and shown.eta is None  # nothing finished yet: no guess
    assert backfills.panel(shown).headline == "Resync: 0 of 100 entities, no estimate until its first entities are synced"

    apply(30, lag=240.0, ago=60)  # 30 applied a minute ago: 30 in the last 5 min is 0.1/s
    [dead] = queue.claim_batch("test-worker", 1, starvation_seconds=FAR)
    queue.fail(dead, "the store refused it", permanent=True)
    shown = backfill.progress_of(load)
    assert (shown.done, shown.failed, shown.waiting, shown.remaining) == (30, 1, 69, 69)
    assert shown.rate == pytest.approx(31 / 300)  # the dead letter finished too
    assert shown.eta == 668  # 69 left at 31 per 5 min
    panel = backfills.panel(shown)
    assert panel.headline == "Resync: 30 of 100 entities, about 12 minutes left"
    assert (panel.state, panel.state_word, panel.done, panel.total) == ("info", "syncing", 30, 100)
    assert "6.2 entities/min over the last 5 min" in panel.detail and "1 dead letter" in panel.detail
    assert "ThreatActor, started 10 min ago by tester: a test" in panel.detail

    apply(69, lag=240.0, ago=1)
    shown = backfill.progress_of(load)
    assert shown.finished and shown.eta == 0 and (shown.done, shown.failed) == (99, 1)
    assert backfill.settle() == 1 and backfill.settle() == 0
    load.refresh_from_db()
    assert load.finished_at is not None
    [still] = backfill.current()  # shown a while after it finished
    assert backfills.panel(still).headline == "Resync: 99 of 100 entities, done"


def test_a_streaming_change_takes_its_entity_out_of_the_backfill():
    load = loaded_with(2, label="KEV", priority=Priority.HIGH)
    changed = timezone.now() - timedelta(seconds=3)
    queue.enqueue(queue.Work("KEV", "kev-0000", version=2, priority=Priority.HIGH, changed_at=changed))
    event = SyncEvent.objects.get(uid="kev-0000", status="queued")
    # One event still (coalesced), now a streaming change, timed from that change.
    assert (event.backfill_id, event.version, event.changed_at) == (None, 2, changed)
    assert (backfill.progress_of(load).done, backfill.progress_of(load).waiting) == (1, 1)
    # The other way round: backfill work for an entity a streaming change already waits for stays streaming.
    queue.enqueue(queue.Work("KEV", "kev-new", version=1, priority=Priority.HIGH, changed_at=changed))
    with backfill.tracking(backfill.start(Kind.RESYNC, total=1)) as later:
        queue.enqueue(queue.Work("KEV", "kev-new", version=1, priority=Priority.LOW))
    assert SyncEvent.objects.get(uid="kev-new").backfill_id is None
    shown = backfill.progress_of(later)
    assert (shown.total, shown.done, shown.finished) == (1, 1, True)


# --- streaming first ----------------------------------------------------------------------

def test_high_streaming_changes_are_claimed_before_an_older_backfill():
    load = loaded_with(20, label="KEV", priority=Priority.HIGH, started_ago=3600)
    SyncEvent.objects.update(created_at=timezone.now() - timedelta(hours=1), next_attempt_at=timezone.now()
                             - timedelta(hours=1))
    queue.enqueue(queue.Work("KEV", "CVE-2025-0001", version=1, priority=Priority.HIGH, changed_at=timezone.now()))
    queue.enqueue(queue.Work("Report", "weekly", version=1, priority=Priority.LOW, changed_at=timezone.now()))
    # Older, and HIGH too, the backfill's work still waits behind every streaming change.
    first = queue.claim_batch("w", 2, starvation_seconds=FAR)
    assert {(e.uid, e.backfill_id) for e in first} == {("CVE-2025-0001", None), ("weekly", None)}
    # The HIGH-only claims (change capture's urgent pass) never take a backfill's HIGH work.
    assert queue.claim_batch("w", 10, max_priority=Priority.HIGH) == []
    # The aged share still moves a backfill along under streaming load.
    queue.enqueue_many([queue.Work("Report", f"r-{k}", priority=Priority.LOW) for k in range(10)])
    mixed = queue.claim_batch("w", 8, starvation_seconds=600)
    assert sum(e.backfill_id == load.pk for e in mixed) == 2 and len(mixed) == 8
    # The HIGH change stays measured as a streaming one; the backfill's lag is apart.
    queue.ack(first, "upserted", {e.id: 0.8 for e in first})
    queue.ack(mixed, "upserted", {e.id: 3600.0 for e in mixed})
    now = timezone.now()
    lag = readings.lag_by_priority(now - timedelta(minutes=5), now)
    assert (lag["high"].n, lag["high"].p95) == (1, 0.8)
    assert readings.backfill_lag(now - timedelta(minutes=5), now).n == 2


def test_the_lanes_count_a_backfill_apart_from_the_streaming_depth():
    loaded_with(5, label="Technique", priority=Priority.MEDIUM, changed_at=timezone.now() - timedelta(hours=2))
    queue.enqueue(queue.Work("Technique", "t-live", priority=Priority.MEDIUM, changed_at=timezone.now()))
    lane = queue.lanes()["medium"]
    assert (lane.queued, lane.in_flight, lane.backfill) == (1, 0, 5)
    assert (timezone.now() - lane.oldest_change).total_seconds() < 60  # the backfill's old change times are not its


# --- lag, freshness and alerts are about streaming changes ------------------------------------

def test_lag_freshness_depth_and_their_alerts_leave_a_backfill_out(settings):
    settings.ALERT_WEBHOOK_URL, settings.ALERT_QUEUE_DEPTH, settings.ALERT_LAG_SECONDS = "", 10, 60
    settings.FRESHNESS_WINDOW = 300
    # A whole-catalogue import queued for the workers: HIGH work whose changes are 20 minutes old.
    load = loaded_with(60, kind=Kind.IMPORT, label="KEV", priority=Priority.HIGH,
                       changed_at=timezone.now() - timedelta(minutes=20))
    apply(20, lag=1200.0, ago=30)
    for _ in range(3):
        finished(2.0, priority=Priority.HIGH)
    r = readings.read(observer_alive=True)
    assert (r.lag["high"].n, r.lag["high"].p95, r.lag["all"].n) == (3, 2.0, 3)
    assert (r.backfill_lag.n, r.backfill_lag.p95) == (20, 1200.0)
    assert not r.freshness["high"].breached and r.oldest_unsynced["high"] is None
    assert r.queue_depth == 0
    [shown] = r.backfills
    assert (shown.backfill.pk, shown.done, shown.waiting) == (load.pk, 20, 40)
    changes = judge(rules=only("lag", "queue_depth", "freshness_high", "backfill_stalled"))
    assert changes.opened == [] and not Alert.objects.exists()
    assert "Backfill lag over the last 5 min: p50 20 min · p95 20 min over 20 entities" in backfills.lag_line(r.backfill_lag)
    scraped = metrics.exposition().decode()
    assert f'sync_backfill_entities{{backfill="{load.pk}",kind="import",state="done"}} 20.0' in scraped
    assert f'sync_backfill_entities{{backfill="{load.pk}",kind="import",state="waiting"}} 40.0' in scraped
    assert 'sync_backfill_window_lag_seconds{quantile="95"} 1200.0' in scraped
    assert 'sync_queue_depth{priority="high"} 0.0' in scraped


def test_a_backfill_that_stops_progressing_alerts_and_resolves_once_it_moves(settings):
    settings.ALERT_WEBHOOK_URL, settings.BACKFILL_STALL_MINUTES, settings.ALERT_RESOLVE_AFTER = "", 10, 0
    load = loaded_with(3, started_ago=30 * 60)
    [alert] = judge(rules=only("backfill_stalled")).opened
    assert (alert.severity, alert.title) == ("warning", "Backfill stalled")
    assert alert.summary.startswith(f"Resync #{load.pk} (ThreatActor) has finished nothing for 30 min: "
                                    "0 of 3 entities done, 3 to go (threshold 10 min).")
    assert backfills.panel(backfill.progress_of(load)).state_word == "stalled"
    apply(1, lag=5.0, ago=0)
    assert [a.rule for a in judge(rules=only("backfill_stalled")).resolved] == ["backfill_stalled"]
    assert alerting.promql(alerting.BY_KEY["backfill_stalled"]) == "max(sync_backfill_idle_seconds) > 600"


def test_a_backfill_whose_producer_died_mid_load_covers_what_it_handed_over_and_finishes(settings):
    """A producer SIGKILLed mid-load never marks its backfill loaded; upkeep does, once nothing has
    been handed over for BACKFILL_STALL_MINUTES, so the backfill finishes instead of staying stalled."""
    settings.BACKFILL_STALL_MINUTES = 10
    dead = backfill.start(Kind.RESYNC, scope="ThreatActor", reason="a test", actor="tester", total=500)
    with queue.backfill_scope(dead.pk):  # handed 3 of 500 over, then killed: `tracking` never ended
        queue.enqueue_many([queue.Work("ThreatActor", f"a-{k}", version=1, priority=Priority.LOW, source="resync")
                            for k in range(3)])
    busy = backfill.start(Kind.RESYNC, scope="Malware", reason="a test", actor="tester", total=500)
    with queue.backfill_scope(busy.pk):  # its producer still hands work over
        queue.enqueue_many([queue.Work("Malware", "m-0", version=1, priority=Priority.LOW, source="resync")])
    quiet = timezone.now() - timedelta(minutes=11)
    Backfill.objects.update(started_at=quiet)
    SyncEvent.objects.filter(backfill=dead).update(created_at=quiet)
    assert tasks.upkeep()["backfills_ended"] == 1
    dead.refresh_from_db()
    busy.refresh_from_db()
    assert dead.loaded_at is not None and busy.loaded_at is None
    assert backfill.progress_of(dead).total == 3  # what was handed over, not the 500 announced
    batch = queue.claim_batch("test-worker", 10, starvation_seconds=FAR)
    queue.ack([e for e in batch if e.backfill_id == dead.pk], "upserted", {})
    assert backfill.settle() == 1
    dead.refresh_from_db()
    assert dead.finished_at is not None
    assert tasks.upkeep()["backfills_ended"] == 0  # nothing more to end


# --- what starts one -----------------------------------------------------------------------

def test_a_label_resync_is_a_backfill_audited_with_it(graph, db):
    graph.import_entities("ThreatActor", [{"uid": f"actor-{n}", "name": f"Actor {n}", "description": "d"}
                                          for n in range(4)], source="t")
    done = resync.start(resync.Scope(resync.LABEL, "ThreatActor"), actor="someone", note="new model")
    load = Backfill.objects.get()
    assert (load.kind, load.scope, load.total, load.enqueued, done["queued"]) == ("resync", "ThreatActor", 4, 4, 4)
    assert load.reason == "resync of ThreatActor: new model" and load.loaded_at is not None
    assert set(SyncEvent.objects.values_list("backfill", "source", "priority")) == {(load.pk, "resync", Priority.LOW)}


def test_a_reconciliations_repairs_past_the_threshold_are_a_backfill(graph, vectors, settings, monkeypatch):
    """Entities with no vector at all: each one a repair. The first act's repairs, below the
    threshold, are taken along once the second passes it."""
    settings.BACKFILL_MIN_ENTITIES = 3
    monkeypatch.setattr(reconcile, "ACT_EVERY", 2)
    graph.import_entities("ThreatActor", [{"uid": f"ta-{n}", "name": f"Actor {n}", "description": f"text {n}"}
                                          for n in range(6)], source="t")
    run = reconcile.full()
    assert run.repaired == {"missing_vector": 6}
    load = Backfill.objects.get()
    assert (load.kind, load.scope, load.total, load.enqueued) == ("repair", f"full reconciliation #{run.pk}", 6, 6)
    assert load.loaded_at is not None
    assert list(SyncEvent.objects.values_list("backfill", flat=True).distinct()) == [load.pk]


def test_a_whole_catalogue_import_is_a_backfill_and_a_days_delta_is_not(graph, vectors, tmp_path, settings):
    from tests.test_kev_import import entry, feed

    settings.BACKFILL_MIN_ENTITIES = 5
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(feed(*(entry(f"CVE-2024-{1000 + n}") for n in range(6)))))
    call_command("import_kev", str(catalogue), "--queue", stdout=StringIO())
    load = Backfill.objects.get()
    assert (load.kind, load.scope, load.total, load.actor_name) == ("import", "catalogue.json: 6 entries", 12,
                                                                    "import_kev")
    assert load.loaded_at is not None and load.enqueued == 12  # each entry: its KEV and its Vulnerability
    assert set(SyncEvent.objects.values_list("backfill", flat=True)) == {load.pk}
    delta = tmp_path / "delta.json"
    delta.write_text(json.dumps(feed(entry("CVE-2025-0001"), entry("CVE-2025-0002"))))
    call_command("import_kev", str(delta), "--queue", stdout=StringIO())
    assert Backfill.objects.count() == 1  # a day's delta is streaming work, measured against the HIGH target
    assert set(SyncEvent.objects.filter(uid__startswith="CVE-2025").values_list("backfill", flat=True)) == {None}


# --- the first start ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_first_start_shows_the_initial_sync_not_a_critical_alert(client, graph, settings):
    settings.ALERT_WEBHOOK_URL, settings.ALERT_QUEUE_DEPTH = "", 1000
    out = StringIO()
    call_command("load_demo", "--if-empty", "--no-conflicts", stdout=out)
    load = Backfill.objects.get()
    synced = sum(graph.count_label(label) for label in DEMO_LABELS if label in synced_labels())
    assert (load.kind, load.total, load.enqueued) == ("initial_sync", synced, synced)
    assert load.reason == "first start: the demo graph was loaded into an empty Neo4j"
    assert f"{synced} entities queued for the vector index as the initial sync (backfill #{load.pk}" in out.getvalue()
    assert SyncEvent.objects.filter(backfill=load).count() == synced
    # Change capture reads the same new nodes: the backfill covers them, none becomes a streaming change.
    polled = capture.poll_once("test-poller")
    assert polled.changes >= synced and polled.enqueued == 0
    assert not SyncEvent.objects.filter(backfill__isnull=True).exists()

    # Some minutes in: 300 entities synced at their load's lag, the rest waiting; a live HIGH change synced.
    Backfill.objects.filter(pk=load.pk).update(started_at=timezone.now() - timedelta(minutes=5))
    apply(300, lag=200.0, ago=30)
    finished(1.5, priority=Priority.HIGH, label="KEV")
    for _ in range(2):  # two checks: every rule judged on the same state
        judge()
    assert not Alert.objects.filter(severity="critical").exists(), list(Alert.objects.values_list("rule", "summary"))
    assert not Alert.objects.filter(rule__in=["lag", "queue_depth", "freshness_high", "freshness_medium",
                                              "freshness_low", "backfill_stalled"]).exists()

    client.force_login(make_user("vera", "viewer"))
    page = client.get("/").content.decode()
    headline = re.search(r"Initial sync: 300 of ([\d,]+) entities, about (\d+) minutes left", page)
    assert headline and int(headline[1].replace(",", "")) == synced, page[:3000]
    assert int(headline[2]) == -(-(synced - 300) // 60)  # 300 in 5 min: 1 a second
    assert f'<progress max="{synced}" value="300"' in page
    assert "Backfill lag over the last 5 min: p50 3 min · p95 3 min over 300 entities" in page
    assert "breached" not in page and "alert-critical" not in page
    assert "target 60 s: met" in page
    queue_page = client.get("/queue/").content.decode()
    assert ">Backfills</h2>" in queue_page and headline[0] in queue_page
    assert f'id="backfill-depth">{synced - 300}<' in queue_page
