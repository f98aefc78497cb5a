"""The overview: KPI cards, charts of the metric samples over a shared range, services."""

from django.http import HttpResponse
from django.shortcuts import render

from dashboard import figures
from dashboard.access import viewer_required
from sync.observe import backfills, overview, readings, samples


def _live_context() -> dict:
    reading = readings.read()
    services, checked_at = overview.services(reading.at)
    cards = overview.cards(reading)
    loads = backfills.panels(reading.backfills)  # bulk loads, beside the streaming figures
    lag = backfills.lag_line(reading.backfill_lag)
    return {"cards": cards, "services": services, "services_checked_at": checked_at, "reading_at": reading.at,
            "backfills": loads, "backfill_lag": lag,
            "live_version": overview.version(cards, services) + backfills.version(loads, lag)}


def _charts_context(range_key: str) -> dict:
    window = samples.window(range_key)
    shown = samples.in_window(window)
    return {"window": window, "ranges": list(samples.RANGES), "sample_count": len(shown),
            "figures": figures.figures(shown, window, overview.markers(window)),
            "charts_version": f"{window.key}:{shown[-1].at.timestamp() if shown else 0}"}


def _unchanged(request, version: str) -> bool:
    return request.GET.get("v") == version


@viewer_required
def home(request):
    context = {**_live_context(), **_charts_context(request.GET.get("range", ""))}
    return render(request, "dashboard/overview.html", context)


@viewer_required
def live(request):
    """The KPI cards and services, polled every 5 s: 204 (htmx swaps nothing) when nothing changed."""
    context = _live_context()
    if _unchanged(request, context["live_version"]):
        return HttpResponse(status=204)
    return render(request, "dashboard/partials/overview_live_region.html", context)


@viewer_required
def charts(request):
    """The charts of one range: for the range picker, and polled for new samples (204 when none)."""
    context = _charts_context(request.GET.get("range", ""))
    if _unchanged(request, context["charts_version"]):
        return HttpResponse(status=204)
    return render(request, "dashboard/partials/overview_charts.html", context)
