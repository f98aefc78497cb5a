"""The dashboard's template tags: status badges, relative times, durations, sortable headers."""

from datetime import UTC, datetime, timedelta

from django.template import Context, Template
from django.test import RequestFactory

from dashboard.templatetags.ui import reltime, seconds, status


def test_a_status_has_a_word_and_a_shape():
    assert str(status("in_sync")) == ('<span class="status status-ok"><span class="status-icon" aria-hidden="true">✓'
                                      '</span> in sync</span>')
    assert "✕</span> dead" in str(status("dead"))
    assert "◆</span> conflict" in str(status("conflict"))
    assert "—</span> excluded" in str(status("excluded"))
    assert "&lt;b&gt;" in str(status("<b>"))  # unknown words are shown, escaped


def test_relative_times_carry_the_absolute_time():
    now = datetime(2026, 12, 1, 23, 40, 5, tzinfo=UTC)
    html = str(reltime(now - timedelta(minutes=3), now))
    assert html == '<time datetime="2026-12-01T23:37:05+00:00" title="2026-12-01 23:37:05 UTC">3 min ago</time>'
    assert ">in 2 h<" in str(reltime(now + timedelta(hours=2), now))
    assert reltime(None) == "—"
    assert ">just now<" in str(reltime(now - timedelta(seconds=2), now))  # not "0 s ago"
    assert ">12 s ago<" in str(reltime(now - timedelta(seconds=12), now))


def test_durations_pick_their_unit():
    assert [seconds(v) for v in (0.25, 12.44, 420, 11520, 200000, None)] == \
        ["250 ms", "12.4 s", "7 min", "3.2 h", "2.3 d", "—"]


def test_a_sortable_header_toggles_and_keeps_the_filters():
    template = Template('{% load ui %}{% sortable "-count" "Dead letters" %}')
    request = RequestFactory().get("/queue/", {"label": "KEV", "page": "3"})
    first = template.render(Context({"request": request}))
    assert 'aria-sort="none"' in first and 'href="?label=KEV&amp;sort=-count"' in first
    request = RequestFactory().get("/queue/", {"label": "KEV", "sort": "-count"})
    again = template.render(Context({"request": request}))
    assert 'aria-sort="descending"' in again and "sort=count" in again
