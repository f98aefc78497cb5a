"""Reconciliation: the runs (mode, trigger, who, duration, drift by kind, repairs, conflicts,
match per label), one run's sample findings with "resync these", starting a run, and live
progress while one goes."""

import hashlib

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render

from dashboard import equivalents
from dashboard.access import analyst_action, viewer_required
from sync.models import ReconcileRun
from sync.reconcile import reconciler as reconcile
from sync.reconcile import runs

PAGE = 50
SORTS = {"started": "started_at", "mode": "mode", "status": "status", "duration": "duration",
         "trigger": "trigger", "conflicts": "conflicts_opened"}
LIST_FIELDS = ("id", "mode", "status", "trigger", "triggered_by__username", "dry_run", "started_at", "finished_at",
               "duration", "drift", "repaired", "conflicts_opened", "labels", "progress_done", "progress_total",
               "entities_checked", "vectors_checked", "error")


def _filtered(request):
    sort = request.GET.get("sort", "-started")
    field = SORTS.get(sort.lstrip("-"), "started_at")
    order = f"-{field}" if sort.startswith("-") else field
    rows = ReconcileRun.objects.select_related("triggered_by").only(*LIST_FIELDS).order_by(order, "-id")
    mode, status = request.GET.get("mode", ""), request.GET.get("status", "")
    if mode in ReconcileRun.Mode.values:
        rows = rows.filter(mode=mode)
    if status in ReconcileRun.Status.values:
        rows = rows.filter(status=status)
    return rows, mode, status


@viewer_required
def index(request):
    rows, mode, status = _filtered(request)
    page = Paginator(rows, PAGE).get_page(request.GET.get("page"))
    active = ReconcileRun.objects.filter(status__in=runs.ACTIVE).order_by("started_at").first()
    return render(request, "dashboard/reconciliation.html", {
        "page": page, "mode": mode, "status": status, "modes": ReconcileRun.Mode.values,
        "statuses": ReconcileRun.Status.values, "kinds": reconcile.KINDS, "active": active,
        "default_sort": "-started",
        "command": equivalents.manage("reconcile", "--incremental", "--queue", user=request.user)
        + "    # or --full; --dry-run to count only",
        "curl": equivalents.curl("/api/v1/reconciliations", {"mode": "incremental", "dry_run": False}),
    })


def _version(run: ReconcileRun) -> str:
    state = (run.status, run.progress_done, run.progress_total, run.entities_checked, run.vectors_checked,
             run.finished_at, sorted(run.drift.items()))
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


def _detail(run: ReconcileRun) -> dict:
    scores = run.match_scores()
    return {"run": run, "progress": runs.progress(run), "samples": runs.samples_by_kind(run),
            "kind_rows": [(kind, run.drift.get(kind, 0), run.repaired.get(kind, 0), reconcile.REPAIR[kind])
                          for kind in reconcile.KINDS],
            "in_flight": [(kind, run.in_flight[kind]) for kind in reconcile.KINDS if run.in_flight.get(kind)],
            "label_rows": [(label, c.get("checked", 0), c.get("drift", 0), scores[label])
                           for label, c in sorted(run.labels.items())],
            "resyncable": runs.RESYNCABLE, "version": _version(run)}


@viewer_required
def detail(request, pk: int):
    run = get_object_or_404(ReconcileRun.objects.select_related("triggered_by"), pk=pk)
    return render(request, "dashboard/reconciliation_run.html", _detail(run))


@viewer_required
def progress(request, pk: int):
    """The run's live region, polled while it is queued or running: 204 while nothing moved;
    once the run has ended the region comes without its poll, so the watching stops there."""
    run = get_object_or_404(ReconcileRun.objects.select_related("triggered_by"), pk=pk)
    context = _detail(run)
    if request.GET.get("v") == context["version"]:
        return HttpResponse(status=204)
    return render(request, "dashboard/partials/reconciliation_run_live.html", context)


@analyst_action
def start(request):
    mode = request.POST.get("mode", "")
    if mode not in ReconcileRun.Mode.values:
        return HttpResponseBadRequest("mode must be incremental or full\n", content_type="text/plain")
    try:
        run = runs.start_for(request.user, mode, dry_run=request.POST.get("dry_run") == "on")
    except runs.NotStarted as exc:
        messages.warning(request, f"Not started: {exc}.")
        return redirect("reconciliation-run", pk=exc.run.pk) if exc.run else redirect("reconciliation")
    messages.success(request, f"Queued {'a dry run of ' if run.dry_run else ''}a {run.mode} reconciliation "
                              f"(#{run.pk}, audited as reconcile.start); it starts as soon as a worker is free.")
    return redirect("reconciliation-run", pk=run.pk)


@analyst_action
def resync(request, pk: int):
    run = get_object_or_404(ReconcileRun, pk=pk)
    kind = request.POST.get("kind", "")
    try:
        n = runs.resync_samples(run, kind, request.user)
    except runs.NotStarted as exc:
        messages.error(request, f"Nothing queued: {exc}.")
    else:
        messages.success(request, f"Queued a resync of {n} {kind.replace('_', ' ')} entit{'y' if n == 1 else 'ies'} "
                                  "(audited as resync, one entry per entity).")
    return redirect("reconciliation-run", pk=run.pk)
