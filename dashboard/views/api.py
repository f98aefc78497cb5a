"""JSON endpoints for every dashboard action (dashboard.api: tokens, strict bodies). Each one
calls the engine function its page calls, so the audit trail cannot tell them apart but by the
user. Documented in docs/api.md."""

from django.http import JsonResponse

from dashboard.access import ANALYST, VIEWER, role_of
from dashboard.api import ApiError, body, ints, token_role
from dashboard.forms import BadRequest, audit_filter
from nightingale import times
from sync import audit, deadletters, ids
from sync.conflicts import resolve as resolution
from sync.conflicts.records import ConflictError
from sync.models import Conflict, ReconcileRun
from sync.observe import alerting
from sync.observe.models import Alert
from sync.policy import policy_for, shown_properties, synced_labels
from sync.policy import summary as policy_summary
from sync.reconcile import runs
from sync.resync import ALL, ENTITY, LABEL, NotResynced, RateLimited, Scope
from sync.resync import start as start_resync

DEAD_LETTER_FIELDS = {"ids": list, "label": str, "group": str, "text": str, "as_of": str, "scope": str, "note": str}
DEAD_LETTER_WORDING = deadletters.Wording(
    both="choose dead letters either by ids or by filter (label, group, text), not both",
    nothing='nothing selected: give ids, a label, group or text, or "scope": "all"')


@token_role(VIEWER, ("GET",))
def whoami(request):
    token = request.api_token
    return JsonResponse({"user": request.user.get_username(), "role": role_of(request.user),
                         "token": {"id": token.pk, "prefix": token.prefix, "name": token.name}})


@token_role(VIEWER, ("GET",))
def audit_entries(request):
    """The audit page's filter and keyset pages: ?user=&action=&target=&since=&until=&before="""
    try:
        where = audit_filter(request.GET)
        before = audit.Cursor.parse(request.GET.get("before", ""), "before")
    except (BadRequest, audit.BadAuditFilter) as exc:
        raise ApiError(400, str(exc)) from None
    found = audit.page(where, before=before, size=100)
    return JsonResponse({"entries": [audit.as_json(e) for e in found.entries],
                         "older": str(found.older) if found.older else None,
                         "count": found.count, "count_capped": found.count_capped})


@token_role(VIEWER, ("GET",))
def policy(request):
    return JsonResponse(policy_summary.as_json())


def _selection(data: dict) -> deadletters.Selection:
    """The dead letters a body names, as the Queue page's confirmation would: ids, or a filter
    bounded by as_of (default: now, as `manage.py dead_letters` does)."""
    numbers = ints(data, "ids")
    try:
        as_of = times.parse_time((data.get("as_of") or "").strip(), "as_of")
    except times.BadTime as exc:
        raise ApiError(400, str(exc), field="as_of") from None
    try:
        return deadletters.select(numbers, label=data.get("label") or "", group=data.get("group") or "",
                                  text=data.get("text") or "", as_of=as_of, everything=data.get("scope") == "all",
                                  action=True, now_by_default=True, wording=DEAD_LETTER_WORDING)
    except deadletters.BadSelection as exc:
        raise ApiError(400, str(exc), **({"field": exc.field} if exc.field else {})) from None


@token_role(ANALYST)
def dead_letters(request, action: str):
    if action not in ("retry", "discard"):
        raise ApiError(404, "the dead-letter actions are retry and discard")
    data = body(request, DEAD_LETTER_FIELDS if action == "discard"
                else {k: v for k, v in DEAD_LETTER_FIELDS.items() if k != "note"})
    selection = _selection(data)
    if action == "retry":
        try:
            outcome = deadletters.retry(selection, request.user)
        except deadletters.NotRetried as exc:
            raise ApiError(503, str(exc)) from None
    else:
        outcome = deadletters.discard(selection, request.user, note=data.get("note", "")[:1000])
    return JsonResponse({"action": action, "asked": outcome.asked, "done": outcome.done, "skipped": outcome.skipped,
                         "as_of": selection.as_of.isoformat() if selection.as_of else None,
                         "audited_as": f"dead_letter.{action}"})


@token_role(ANALYST)
def reconciliations(request):
    data = body(request, {"mode": str, "dry_run": bool}, required=("mode",))
    if data["mode"] not in ReconcileRun.Mode.values:
        raise ApiError(400, f"mode must be one of {', '.join(ReconcileRun.Mode.values)}", field="mode")
    try:
        run = runs.start_for(request.user, data["mode"], dry_run=bool(data.get("dry_run")),
                             trigger=ReconcileRun.Trigger.COMMAND)
    except runs.NotStarted as exc:
        return JsonResponse({"error": str(exc), "run": exc.run.pk if exc.run else None}, status=409)
    return JsonResponse({"run": run.pk, "mode": run.mode, "dry_run": run.dry_run, "status": run.status,
                         "audited_as": "reconcile.start"}, status=201)


@token_role(ANALYST)
def acknowledge(request, pk: int):
    data = body(request, {"note": str})
    if not Alert.objects.filter(pk=pk).exists():
        raise ApiError(404, f"there is no alert #{pk}")
    try:
        alert = alerting.acknowledge(pk, request.user, note=data.get("note", "")[:1000])
    except alerting.NotAcknowledgeable as exc:
        raise ApiError(409, str(exc)) from None
    return JsonResponse({"alert": alert.pk, "rule": alert.rule, "acknowledged_by": alert.acknowledged_name,
                         "acknowledged_at": alert.acknowledged_at.isoformat(), "audited_as": "alert.acknowledge"})


@token_role(ANALYST)
def resync(request):
    """What the Resync confirmation and `manage.py resync` do, through the same `resync.start`:
    the LOW lane unless told, HIGH only for a few entities, the per-user rate limit, audited."""
    data = body(request, {"entity": str, "labels": list, "all": bool, "priority": str, "note": str})
    given = [name for name in ("entity", "labels", "all") if data.get(name)]
    if len(given) != 1:
        raise ApiError(400, 'say what to resync: exactly one of "entity": "Label:uid", "labels": [...], "all": true')
    if data.get("entity"):
        try:
            label, uid = ids.parse_entity_key(data["entity"])
        except ValueError:
            raise ApiError(400, "entity takes Label:uid, e.g. ThreatActor:apt29", field="entity") from None
        if not policy_for(label).synced:
            raise ApiError(400, f"{label} is not a label the policy syncs", field="entity")
        scopes = [Scope(ENTITY, label, uid)]
    elif data.get("all"):
        scopes = [Scope(ALL)]
    else:
        unknown = sorted(str(name) for name in data["labels"] if name not in synced_labels())
        if unknown:
            raise ApiError(400, f"not synced by the policy: {', '.join(unknown)}", field="labels")
        scopes = [Scope(LABEL, name) for name in dict.fromkeys(data["labels"])]
    priority = data.get("priority", "low").strip().lower()
    queued, started = {}, []
    try:
        for scope in scopes:
            done = start_resync(scope, actor=request.user, priority=priority, note=data.get("note", "")[:1000])
            queued[scope.target] = done["queued"]
            started.append({"target": scope.target, **done})
    except NotResynced as exc:
        # Scopes before this one are queued (and audited) already: say which.
        raise ApiError(429 if isinstance(exc, RateLimited) else 400, str(exc), queued=queued) from None
    return JsonResponse({"queued": queued, "resyncs": started, "audited_as": "resync"})


def _conflict(pk: int) -> Conflict:
    conflict = Conflict.objects.filter(pk=pk).first()
    if conflict is None:
        raise ApiError(404, f"there is no conflict #{pk}")
    return conflict


@token_role(ANALYST)
def resolve(request, pk: int):
    data = body(request, {"choice": str, "note": str, "fields": dict, "edits": dict, "seen_version": int},
                required=("choice", "note"))
    conflict = _conflict(pk)
    if any(not isinstance(v, str) for v in (data.get("fields") or {}).values()):
        raise ApiError(400, 'fields maps each field to "graph" or "other"', field="fields")
    try:
        outcome = resolution.resolve(conflict.pk, choice=data["choice"], actor=request.user, note=data["note"][:2000],
                                     field_choices=data.get("fields"), edits=data.get("edits"),
                                     seen_version=data.get("seen_version"))
    except resolution.StaleConflict as exc:
        conflict.refresh_from_db()
        return JsonResponse({"error": str(exc), "graph_version": conflict.graph_version,
                             "graph_side": shown_properties(conflict.label, conflict.graph_side)}, status=409)
    except ConflictError as exc:
        raise ApiError(400, str(exc)) from None
    if not outcome.changed:
        raise ApiError(409, outcome.message, conflict_status=outcome.conflict.status)
    return JsonResponse({"conflict": pk, "status": outcome.conflict.status, "message": outcome.message,
                         "version": outcome.version, "audited_as": "conflict.resolve"})


@token_role(ANALYST)
def dismiss(request, pk: int):
    data = body(request, {"note": str}, required=("note",))
    conflict = _conflict(pk)
    outcome = resolution.dismiss(conflict.pk, actor=request.user, note=data["note"][:2000])
    if not outcome.changed:
        raise ApiError(409, outcome.message, conflict_status=outcome.conflict.status)
    return JsonResponse({"conflict": pk, "status": outcome.conflict.status, "audited_as": "conflict.dismiss"})
