"""Dead-letter fingerprints, groups, snapshots and bulk actions (sync.deadletters, no HTTP)."""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from sync import deadletters
from sync.deadletters import Selection, fingerprint, group_key
from sync.models import AuditEntry, SyncEvent

pytestmark = pytest.mark.django_db


def dead(label, uid, error, *, died=None, attempts=8):
    return SyncEvent.objects.create(label=label, uid=uid, status=SyncEvent.Status.DEAD, last_error=error,
                                    attempts=attempts, finished_at=died or timezone.now())


@pytest.mark.parametrize(("error", "expected"), [
    ("ReadTimeout: timed out after 10.0 s talking to https://x.svc:443", "ReadTimeout: timed out after <n> s talking to https://x.svc:<n>"),
    ("vector ThreatActor:apt29#3 has 383 dimensions, expected 384",
     "vector <entity> has <n> dimensions, expected <n>"),
    ("version conflict: expected v12, graph has v14", "version conflict: expected v<n>, graph has v<n>"),
    ("request 3f2a6c1e-8b7d-4e5f-9a0b-1c2d3e4f5a6b refused", "request <uuid> refused"),
    ("content hash 9f86d081884c7d659a2feaa0c55ad015 differs", "content hash <hex> differs"),
    ("at 2026-12-01T23:40:05.123+00:00 the lease ran out", "at <time> the lease ran out"),
    ("PermanentStoreError: metadata too large\nTraceback (most recent call last):\n  File x",
     "PermanentStoreError: metadata too large"),
    ("", "(no error recorded)"),
])
def test_fingerprints_take_out_what_varies(error, expected):
    assert fingerprint(error) == expected


def test_errors_that_differ_only_in_ids_and_numbers_share_a_group():
    dead("ThreatActor", "apt29", "vector ThreatActor:apt29#0 has 383 dimensions, expected 384")
    dead("ThreatActor", "apt28", "vector ThreatActor:apt28#1 has 12 dimensions, expected 384")
    dead("Malware", "emotet", "vector Malware:emotet#0 has 383 dimensions, expected 384")
    dead("ThreatActor", "lazarus", "ReadTimeout: timed out")
    found = deadletters.groups()
    assert [(g.label, g.count) for g in found] == [("ThreatActor", 2), ("Malware", 1), ("ThreatActor", 1)]
    biggest = found[0]
    assert (biggest.label, biggest.count) == ("ThreatActor", 2)
    assert biggest.key == group_key("ThreatActor", "vector <entity> has <n> dimensions, expected <n>")
    assert biggest.first_failure <= biggest.last_failure
    assert len(deadletters.groups(Selection(label="Malware"))) == 1
    assert [g.count for g in deadletters.groups(Selection(text="timed out"))] == [1]


def test_a_group_action_leaves_out_what_died_after_the_snapshot(analyst_user):
    before = [dead("ThreatActor", f"a{i}", f"timeout after {i} s") for i in range(3)]
    key = deadletters.groups()[0].key
    shown_at = timezone.now()
    later = dead("ThreatActor", "late", "timeout after 9 s", died=shown_at + timedelta(seconds=1))
    outcome = deadletters.retry(Selection(group=key, as_of=shown_at), analyst_user)
    assert (outcome.asked, outcome.done) == (3, 3)
    assert set(SyncEvent.objects.filter(status="queued").values_list("id", flat=True)) == {e.id for e in before}
    assert SyncEvent.objects.get(id=later.id).status == SyncEvent.Status.DEAD
    assert AuditEntry.objects.filter(action="dead_letter.retry", actor=analyst_user).count() == 3


def test_ids_select_exactly_those_and_a_second_try_finds_them_handled(analyst_user):
    a, b, c = (dead("Report", f"r{i}", "boom") for i in range(3))
    first = deadletters.discard(Selection(ids=(a.id, b.id)), analyst_user, note="known bad reports")
    assert (first.asked, first.done) == (2, 2)
    assert SyncEvent.objects.get(id=c.id).status == SyncEvent.Status.DEAD
    again = deadletters.discard(Selection(ids=(a.id, b.id)), analyst_user)
    assert (again.asked, again.done) == (0, 0)
    entry = AuditEntry.objects.filter(action="dead_letter.discard").first()
    assert entry.note == "known bad reports"


def test_a_filter_counts_and_describes_itself():
    for i in range(4):
        dead("KEV", f"CVE-2024-{i}", "PermanentStoreError: refused")
    dead("Report", "r", "PermanentStoreError: refused")
    selection = Selection(label="KEV", as_of=timezone.now())
    assert deadletters.count(selection) == 4
    assert deadletters.describe(selection, 4) == "4 dead letters from KEV"
    key = group_key("KEV", "PermanentStoreError: refused")
    assert deadletters.describe(Selection(group=key, as_of=timezone.now()), 4) == \
        "4 dead letters from KEV with the error “PermanentStoreError: refused”"
    assert "--group " + key in Selection(group=key, as_of=timezone.now()).as_command("retry")
    events, total = deadletters.members(selection, limit=2)
    assert total == 4 and len(events) == 2


def test_the_command_lists_and_retries_a_group(analyst_user):
    for i in range(2):
        dead("Malware", f"m{i}", f"ServiceUnavailable: neo4j at 127.0.0.1:{7000 + i} is down")
    out = io.StringIO()
    call_command("dead_letters", "list", stdout=out)
    key = out.getvalue().split()[0]
    out = io.StringIO()
    call_command("dead_letters", "retry", "--group", key, "--user", analyst_user.username, stdout=out)
    assert out.getvalue().strip() == "retried 2 of 2 dead letters"
    assert not SyncEvent.objects.filter(status="dead").exists()
    assert AuditEntry.objects.filter(action="dead_letter.retry", actor=analyst_user).count() == 2


def test_the_command_wants_a_selection(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="say which dead letters"):
        call_command("dead_letters", "discard")


def test_one_pass_over_a_group_finds_what_the_grouping_does():
    from datetime import timedelta

    now = timezone.now()
    for i, minutes in enumerate((9, 5, 5, 5, 1)):
        dead("Malware", f"m{i}", f"ReadTimeout: timed out after {i + 1}.0 s", died=now - timedelta(minutes=minutes))
    dead("Malware", "other", "PermanentStoreError: refused")
    dead("Report", "r", "ReadTimeout: timed out after 3.0 s")  # same error, another label: another group
    expected = next(g for g in deadletters.groups() if g.label == "Malware" and g.count == 5)
    group, ids = deadletters.group_scan(Selection(group=expected.key, as_of=timezone.now()))
    assert (group.key, group.label, group.fingerprint, group.count) == (
        expected.key, "Malware", "ReadTimeout: timed out after <n> s", 5)
    assert (group.first_failure, group.last_failure) == (expected.first_failure, expected.last_failure)
    assert ids == list(SyncEvent.objects.filter(label="Malware", last_error__startswith="ReadTimeout")
                       .order_by("finished_at", "id").values_list("id", flat=True))
    assert deadletters.group_scan(Selection(group="0" * 12, as_of=timezone.now())) == (None, [])
