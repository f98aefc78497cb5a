"""Entities: the list of sync records (search by uid or name, filter by label, status and
priority, sort, bounded pages) and one entity's page — the graph node beside its vector copy with
the differences highlighted, the sync record, graph neighbours and one timeline across both
stores."""

import hashlib

from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse

from dashboard.access import viewer_required
from sync.entities import lookup as entities
from sync.entities import timeline
from sync.models import Priority, SyncRecord
from sync.policy import synced_labels


def _bad(message: str):
    return HttpResponseBadRequest(f"{message}\n", content_type="text/plain; charset=utf-8")


@viewer_required
def index(request):
    try:
        selection = entities.parse_filter(request.GET)
    except entities.BadEntityFilter as exc:
        return _bad(str(exc))
    found = entities.list_entities(selection)
    return render(request, "dashboard/entities.html", {
        "selection": selection, "found": found, "labels": synced_labels(), "statuses": SyncRecord.Status.values,
        "priorities": Priority.labels, "default_sort": entities.DEFAULT_SORT,
        "max_page": entities.MAX_PAGE, "page_size": entities.PAGE_SIZE,
    })


def _linked(moments: list[timeline.Moment]) -> list[tuple[timeline.Moment, str]]:
    """Each moment with its link's URL ("" where that page does not exist)."""
    linked = []
    for moment in moments:
        url = ""
        if moment.link:
            try:
                url = reverse(moment.link[0], args=moment.link[1])
            except NoReverseMatch:
                url = ""
        linked.append((moment, url))
    return linked


@viewer_required
def detail(request, label: str, uid: str):
    try:
        view = entities.entity_view(label, uid)
    except ValueError:
        raise Http404("no such entity key") from None
    kinds = {k for k in request.GET.getlist("kind") if k in timeline.KINDS}
    unknown = [k for k in request.GET.getlist("kind") if k not in timeline.KINDS]
    if unknown:
        return _bad(f"kind must be among {', '.join(timeline.KINDS)}, got {unknown[0][:40]!r}")
    return render(request, "dashboard/entity.html", {
        "view": view, "moments": _linked(timeline.timeline(label, uid, kinds or None)),
        "kinds": timeline.KINDS, "chosen": kinds, "record_version": _record_version(view.record),
    })


def _record_version(record) -> str:
    state = None if record is None else (record.status, record.graph_version, record.vector_version,
                                         record.content_hash, record.synced_at, record.last_error)
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


@viewer_required
def record(request, label: str, uid: str):
    """The entity's sync record, polled while the page is visible: 204 when unchanged."""
    found = SyncRecord.objects.filter(label=label, uid=uid).first()
    version = _record_version(found)
    if request.GET.get("v") == version:
        return HttpResponse(status=204)
    return render(request, "dashboard/partials/entity_record.html", {
        "record": found, "label": label, "uid": uid, "record_version": version,
        "synced": label in synced_labels(),
    })
