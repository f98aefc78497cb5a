"""Conflicts: the filtered list with counts by kind, one conflict side by side with per-field
choices, and bulk actions (apply the proposal, dismiss, resolve similar) over a confirmed snapshot.
The work is in sync.conflicts.review; these views parse, call it and render."""

import json
from dataclasses import replace

from django.contrib import messages
from django.http import HttpResponseBadRequest, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from dashboard import equivalents
from dashboard.access import analyst_action, analyst_page, viewer_required
from dashboard.forms import BadRequest, conflict_decision, conflict_filter
from sync.conflicts import resolve as resolution
from sync.conflicts import review as review_
from sync.conflicts.records import ConflictError
from sync.conflicts.resolve import StaleConflict
from sync.models import Conflict

STATUSES = ["open", "auto_resolved", "resolved", "dismissed", "all"]


def _bad(message, status=400):
    return HttpResponseBadRequest(f"{message}\n", content_type="text/plain; charset=utf-8", status=status)


def _list_url(selection) -> str:
    params = [(k, v) for k, v in selection.params() if k != "as_of"]
    return reverse("conflicts") + (f"?{urlencode(params)}" if params else "")


@viewer_required
def index(request):
    try:
        selection = conflict_filter(request.GET)
        page = int(request.GET.get("page", "1") or 1)
    except (BadRequest, ValueError) as exc:
        return _bad(exc if isinstance(exc, BadRequest) else "page must be a number")
    found = review_.listing(selection, page)
    as_of = timezone.now()
    keep = urlencode([(k, v) for k, v in selection.params() if k != "as_of"])
    return render(request, "dashboard/conflicts.html", {
        "listing": found, "selection": selection, "keep": keep, "statuses": STATUSES,
        "kinds": Conflict.Kind.values, "ages": list(review_.AGES), "page_size": review_.PAGE_SIZE,
        "as_of_iso": as_of.isoformat(timespec="microseconds"), "max_bulk": review_.MAX_BULK,
        "capped": found.total > review_.PAGE_SIZE * review_.MAX_PAGES,
    })


def _render_conflict(request, conflict, selection, status=200, note="", **options):
    review = review_.review(conflict, **options)
    seen = {row.name: row.left for row in review.rows + review.unchanged if row.name in conflict.graph_side}
    previous, following = review_.neighbours(conflict, selection)
    similar = review_.similar(conflict)
    keep = urlencode([(k, v) for k, v in selection.params() if k != "as_of"])
    return render(request, "dashboard/conflict.html", {
        "review": review, "conflict": conflict, "selection": selection, "keep": keep, "previous": previous,
        "following": following, "similar": similar, "similar_keep": urlencode(similar.params()),
        "similar_count": similar.rows().count() if conflict.status == Conflict.Status.OPEN else 0,
        "as_of_iso": timezone.now().isoformat(timespec="microseconds"),
        "seen_json": json.dumps(seen, sort_keys=True, default=str), "note": note,
        "list_url": _list_url(selection), "curl": _curl(conflict, review),
    }, status=status)


def _curl(conflict, review) -> str:
    """The API call that accepts the proposal (or keeps the graph, for a store divergence)."""
    if conflict.status != Conflict.Status.OPEN or not (conflict.proposal or review.store_kind):
        return ""
    body = {"choice": "graph" if review.store_kind else "merged", "note": "WHY"}
    if conflict.graph_version is not None:
        body["seen_version"] = conflict.graph_version
    return equivalents.curl(reverse("api-conflict-resolve", args=[conflict.pk]), body)


@viewer_required
def detail(request, pk: int):
    conflict = get_object_or_404(Conflict, pk=pk)
    try:  # the Preview button sends the page's form here: its filter travels in `back`
        selection = conflict_filter(QueryDict(request.GET["back"]) if "back" in request.GET else request.GET)
        decision = conflict_decision({**request.GET.dict(), "version": "none"}, conflict)
    except BadRequest as exc:
        return _bad(exc)
    return _render_conflict(request, conflict, selection, choices=decision.choices, edits=decision.edits)


def _back_filter(request):
    return conflict_filter(QueryDict(request.POST.get("back", "")))


@analyst_action
def resolve(request, pk: int):
    conflict = get_object_or_404(Conflict, pk=pk)
    try:
        selection = _back_filter(request)
        decision = conflict_decision(request.POST, conflict)
    except BadRequest as exc:
        return _bad(exc)
    if conflict.status != Conflict.Status.OPEN:
        who = conflict.resolver.get_username() if conflict.resolver else "a rule"
        return _bad(f"this conflict is already {conflict.get_status_display().lower().replace('_', ' ')} by "
                    f"{who}: nothing was written", status=409)
    try:
        outcome = resolution.decide(conflict, decision, request.user)
    except StaleConflict as exc:
        conflict.refresh_from_db()
        messages.error(request, f"Not resolved: {exc}. Your choices are kept where the field did not change.")
        return _render_conflict(request, conflict, selection, status=409, choices=decision.choices,
                                edits=decision.edits, seen=decision.seen, note=decision.note)
    except ConflictError as exc:
        return _bad(f"{exc}: nothing was written")
    messages.success(request, f"{conflict.label}:{conflict.uid}: {outcome.message} (audited as conflict.resolve).")
    return _next(conflict, selection)


def _next(conflict, selection):
    _, following = review_.neighbours(conflict, selection)
    keep = urlencode([(k, v) for k, v in selection.params() if k != "as_of"])
    if following:
        return redirect(reverse("conflict", args=[following]) + (f"?{keep}" if keep else ""))
    return redirect(_list_url(selection))


@analyst_action
def dismiss(request, pk: int):
    conflict = get_object_or_404(Conflict, pk=pk)
    try:
        selection = _back_filter(request)
    except BadRequest as exc:
        return _bad(exc)
    note = request.POST.get("note", "").strip()[:2000]
    if not note:
        return _bad("a note is required: say why you dismiss it, for the audit trail; nothing was written")
    outcome = resolution.dismiss(conflict.pk, actor=request.user, note=note)
    if not outcome.changed:
        return _bad(f"this conflict is {outcome.message.replace('_', ' ')}: nothing was written", status=409)
    messages.success(request, f"{conflict.label}:{conflict.uid}: dismissed (audited as conflict.dismiss).")
    return _next(conflict, selection)


@analyst_page
def bulk_confirm(request):
    action = request.GET.get("action", "")
    if action not in review_.BULK_ACTIONS:
        return _bad(f"action must be one of {', '.join(review_.BULK_ACTIONS)}")
    try:
        selection = conflict_filter(request.GET, for_action=True)
    except BadRequest as exc:
        return _bad(exc)
    ids = review_.bulk_ids(selection)
    n = min(len(ids), review_.MAX_BULK)
    return render(request, "dashboard/conflicts_confirm.html", {
        "action": action, "verb": review_.BULK_ACTIONS[action][1], "count": n, "too_many": len(ids) > review_.MAX_BULK,
        "max_bulk": review_.MAX_BULK, "what": replace(selection, status=Conflict.Status.OPEN).describe(n),
        "hidden": selection.params(), "command": equivalents.manage(*selection.command_args(action), user=request.user), "selection": selection,
        "back": _list_url(selection),
    })


@analyst_action
def bulk_act(request, action: str):
    if action not in review_.BULK_ACTIONS:
        return _bad(f"action must be one of {', '.join(review_.BULK_ACTIONS)}")
    try:
        selection = conflict_filter(request.POST, for_action=True)
    except BadRequest as exc:
        return _bad(exc)
    try:
        outcome = resolution.bulk(selection, action, request.user, request.POST.get("note", "").strip()[:2000])
    except ConflictError as exc:
        return _bad(f"{exc}: nothing was written")
    audited = "conflict.dismiss" if action == "dismiss" else "conflict.resolve"
    (messages.success if not (outcome.stale or outcome.refused) else messages.warning)(
        request, f"{outcome.words()} (audited as {audited}, one entry per conflict).")
    return redirect(_list_url(selection))
