"""The queue: depth and age per priority, batches in flight, throughput, and dead letters grouped
by error fingerprint × label, with retry / discard of one, the selected, a group or a filter."""

import hashlib

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import urlencode

from dashboard import equivalents
from dashboard.access import analyst_action, analyst_page, viewer_required
from dashboard.forms import BadRequest, dead_letter_selection, selection_params
from sync import deadletters
from sync.models import Priority
from sync.observe import backfills
from sync.observe.queue_summary import summary

ACTIONS = {"retry": "Retry", "discard": "Discard"}
GROUP_SORTS = {"label": lambda g: (g.label, g.fingerprint), "count": lambda g: (g.count, g.label),
               "first": lambda g: g.first_failure, "last": lambda g: g.last_failure,
               "error": lambda g: g.fingerprint}
SHOWN = 100  # dead letters listed on one page of a group or filter (actions apply to all)


def _bad(request, exc):
    return HttpResponseBadRequest(f"{exc}\n", content_type="text/plain; charset=utf-8")


@viewer_required
def index(request):
    try:
        selection = dead_letter_selection(request.GET)
    except BadRequest as exc:
        return _bad(request, exc)
    as_of = selection.as_of or timezone.now()
    groups = deadletters.groups(selection)  # the largest group first
    sort = request.GET.get("sort", "")
    if sort.lstrip("-") in GROUP_SORTS:
        groups.sort(key=GROUP_SORTS[sort.lstrip("-")], reverse=sort.startswith("-"))
    return render(request, "dashboard/queue.html", {
        **_live(), "groups": groups, "max_attempts": settings.SYNC_MAX_ATTEMPTS, "selection": selection, "as_of": as_of,
        "as_of_iso": as_of.isoformat(timespec="microseconds"), "filtered": bool(selection.label or selection.text),
        "matching": sum(g.count for g in groups), "labels": sorted({g.label for g in groups} | {selection.label} - {""}),
        "priorities": Priority.labels,
    })


def _live() -> dict:
    state = summary()
    loads = backfills.panels(state.backfills)
    numbers = (state.depth, state.dead_letters, state.applied, state.arrived,
               [(lane.queued, lane.backing_off, lane.in_flight, lane.oldest_created, lane.oldest_change, lane.backfill)
                for lane in state.lanes],
               [(b.worker, b.events, b.lease_expires_at, b.attempts) for b in state.batches],
               [(p.topic, p.partition, p.committed, p.high) for p in state.partitions], state.lag_error,
               backfills.version(loads, ""))
    return {"summary": state, "backfills": loads,
            "live_version": hashlib.sha256(repr(numbers).encode()).hexdigest()[:16]}


@viewer_required
def live(request):
    """The queue's numbers, polled every 5 s while the tab is visible: 204 when unchanged."""
    context = _live()
    if request.GET.get("v") == context["live_version"]:
        return HttpResponse(status=204)
    return render(request, "dashboard/partials/queue_live.html", context)


@viewer_required
def dead_letters(request):
    """The dead letters of one group or filter, each with its entity, attempts and error."""
    try:
        selection = dead_letter_selection(request.GET)
    except BadRequest as exc:
        return _bad(request, exc)
    as_of = selection.as_of or timezone.now()
    selection = deadletters.Selection(label=selection.label, group=selection.group, text=selection.text, as_of=as_of)
    group, ids = deadletters.group_scan(selection) if selection.group else (None, None)
    events, total = deadletters.members(selection, limit=SHOWN, ids=ids)
    return render(request, "dashboard/dead_letters.html", {
        "events": events, "total": total, "shown": SHOWN, "group": group, "selection": selection,
        "as_of_iso": as_of.isoformat(timespec="microseconds"),
        "hidden": selection_params(selection),
    })


@analyst_page
def confirm(request):
    """What an action will do, in words and with its count, before it is done (a POST)."""
    action = request.GET.get("action", "")
    if action not in ACTIONS:
        return _bad(request, BadRequest("action must be retry or discard"))
    try:
        selection = dead_letter_selection(request.GET, for_action=True)
    except BadRequest as exc:
        return _bad(request, exc)
    group, ids = deadletters.group_scan(selection) if selection.group and not selection.by_ids else (None, None)
    n = len(ids) if ids is not None else deadletters.count(selection)
    return render(request, "dashboard/dead_letters_confirm.html", {
        "action": action, "verb": ACTIONS[action], "count": n, "what": deadletters.describe(selection, n, group),
        "hidden": selection_params(selection, scope_all=request.GET.get("scope") == "all"),
        "command": f"{selection.as_command(action)} --user {request.user.get_username()}", "selection": selection,
        "curl": equivalents.curl(f"/api/v1/dead-letters/{action}", _as_json(selection, request.GET.get("scope"))),
        "back": request.GET.get("back", "") if request.GET.get("back", "").startswith("/queue/") else "/queue/",
    })


def _as_json(selection: deadletters.Selection, scope: str | None) -> dict:
    """The selection as the API's body (dashboard/views/api.py)."""
    if selection.ids:
        return {"ids": list(selection.ids)}
    body = {name: getattr(selection, name) for name in ("label", "group", "text") if getattr(selection, name)}
    if not body and scope == "all":
        body["scope"] = "all"
    if selection.as_of:
        body["as_of"] = selection.as_of.isoformat(timespec="microseconds")
    return body


@analyst_action
def act(request, action: str):
    if action not in ACTIONS:
        return _bad(request, BadRequest("action must be retry or discard"))
    try:
        selection = dead_letter_selection(request.POST, for_action=True)
    except BadRequest as exc:
        return _bad(request, exc)
    if action == "retry":
        try:
            outcome = deadletters.retry(selection, request.user)
        except deadletters.NotRetried as exc:
            messages.error(request, str(exc))
            return redirect("/queue/")
        done = (f"Retried {outcome.done} dead letter{'s' if outcome.done != 1 else ''}: "
                f"they are {deadletters.retried_to()}")
    else:
        outcome = deadletters.discard(selection, request.user, note=request.POST.get("note", "")[:1000])
        done = f"Discarded {outcome.done} dead letter{'s' if outcome.done != 1 else ''}"
    skipped = f"; {outcome.skipped} of those shown were already handled by someone else" if outcome.skipped else ""
    messages.success(request, f"{done}{skipped} (audited as dead_letter.{action}, one entry per event).")
    back = {k: v for k, v in (("label", selection.label), ("text", selection.text)) if v}
    return redirect("/queue/" + (f"?{urlencode(back)}" if back else ""))
