"""Resync: a preview of what a resync of one entity, a label or everything will do, a
confirmation scaled to its size (typing the label, or "everything"), and the start itself."""

from django.contrib import messages
from django.http import HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils.http import urlencode

from dashboard import equivalents
from dashboard.access import analyst_action, analyst_page
from sync import resync


def _bad(message: str):
    return HttpResponseBadRequest(f"{message}\n", content_type="text/plain; charset=utf-8")


def _back(scope: resync.Scope) -> str:
    params = {"scope": scope.kind, "label": scope.label, "uid": scope.uid}
    return "/resync/?" + urlencode({k: v for k, v in params.items() if v})


def _api_scope(scope: resync.Scope) -> dict:
    """The scope as the API's body (dashboard/views/api.py)."""
    return {resync.ENTITY: {"entity": scope.target}, resync.LABEL: {"labels": [scope.label]},
            resync.ALL: {"all": True}}[scope.kind]


@analyst_page
def confirm(request):
    try:
        scope = resync.scope_from(request.GET)
        shown = resync.preview(scope)
    except resync.NotResynced as exc:
        return _bad(f"Cannot resync: {exc}.")
    return render(request, "dashboard/resync_confirm.html", {
        "preview": shown, "scope": scope,
        "command": equivalents.manage(*scope.command_args(shown.default_priority), user=request.user),
        "curl": equivalents.curl("/api/v1/resync", {**_api_scope(scope), "priority": shown.default_priority}),
        "high_max": resync.HIGH_MAX,
        "inline_max": resync.INLINE_MAX,
    })


@analyst_action
def start(request):
    try:
        scope = resync.scope_from(request.POST)
        shown = resync.preview(scope)
    except resync.NotResynced as exc:
        return _bad(f"Nothing queued: {exc}.")
    if shown.confirm_word and request.POST.get("confirm", "").strip() != shown.confirm_word:
        return _bad(f"Nothing queued: type {shown.confirm_word!r} to confirm a resync of {shown.entities} entities.")
    priority = request.POST.get("priority", shown.default_priority)
    if priority not in shown.priorities:
        return _bad(f"Nothing queued: priority must be one of {', '.join(shown.priorities)} for "
                    f"{shown.entities} entities (HIGH only for up to {resync.HIGH_MAX}).")
    try:
        done = resync.start(scope, actor=request.user, priority=priority, note=request.POST.get("note", "")[:1000])
    except resync.NotResynced as exc:
        messages.warning(request, f"Nothing queued: {exc}.")
        return redirect(_back(scope))
    where = "; the task cluster is queueing them now — follow it on the overview" if done["background"] else ""
    messages.success(request, f"Queued a resync of {scope.describe()} ({shown.entities} entit"
                              f"{'y' if shown.entities == 1 else 'ies'}, {priority.upper()} lane{where}); "
                              "audited as resync.")
    if scope.kind == resync.ENTITY:
        return redirect("entity", label=scope.label, uid=scope.uid)
    return redirect("home")
