"""One entity's history across both stores, newest first, from what the engine already records:
sync events (graph versions seen, enqueued and coalesced work, attempts and errors, vector writes),
saga logs (dual-write steps), reconciliation findings, conflicts and their resolutions, and the
audit trail (analyst actions).

Each moment names its kind (filterable) and, where there is a page for it, a link as
(URL name, args) — the dashboard reverses it; sync knows no URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sync.audit import shown_values
from sync.models import AuditEntry, Conflict, Priority, ReconcileRun, SagaLog, SyncEvent

KINDS = {
    "graph": "graph versions",
    "queue": "queued work",
    "attempt": "attempts and errors",
    "vector": "vector writes",
    "saga": "saga steps",
    "reconcile": "reconciliation findings",
    "conflict": "conflicts",
    "analyst": "analyst actions",
}
EVENTS = 200  # the entity's newest sync events read (finished ones are purged after days anyway)
RUNS = 500  # recent reconciliation runs whose sample findings are searched for the entity
ROWS = 100  # of each other source
OUTCOMES = {
    "upserted": ("vector", "ok", "embedded and written to the vector index"),
    "metadata_only": ("vector", "ok", "metadata updated in the vector index (text unchanged, not re-embedded)"),
    "unchanged": ("vector", "ok", "checked: the vector index already held this version"),
    "deleted": ("vector", "ok", "vectors deleted (the node is gone from the graph)"),
    "excluded": ("vector", "excluded", "not written: the policy never syncs this label"),
    "stale": ("vector", "stale", "skipped: a newer version was already in the vector index"),
    "deferred": ("vector", "pending", "deferred to the queue"),
}


@dataclass(frozen=True)
class Moment:
    at: datetime
    kind: str
    title: str
    detail: str = ""
    state: str = ""  # a status word for the badge
    link: tuple[str, tuple] | None = None  # (URL name, args)


def _event_moments(event: SyncEvent) -> list[Moment]:
    lane = Priority(event.priority).label.upper()
    moments = []
    if event.version is not None and event.source != "resync":
        moments.append(Moment(event.changed_at or event.created_at, "graph", f"graph v{event.version} seen",
                              f"found by {event.source}" + (f", {event.coalesced} later change(s) folded in"
                                                             if event.coalesced else "")))
    coalesced = f"; {event.coalesced} later request(s) coalesced into it" if event.coalesced else ""
    moments.append(Moment(event.created_at, "queue", f"{event.operation} queued ({lane} priority, from {event.source})",
                          f"event #{event.pk}{coalesced}", "queued"))
    if event.last_error:
        dead = event.status == SyncEvent.Status.DEAD
        moments.append(Moment(
            event.failed_at or event.finished_at or event.created_at, "attempt",
            f"attempt {event.attempts} failed" + (": dead letter" if dead else f", retry {event.next_attempt_at:%H:%M:%S}"),
            event.last_error, "dead" if dead else "failed",
            ("queue-dead", ()) if dead else None))
    if event.status == SyncEvent.Status.DONE and event.finished_at:
        kind, state, words = OUTCOMES.get(event.outcome, ("vector", "done", event.outcome or "done"))
        lag = f"; {event.lag_seconds:.1f} s after the graph change" if event.lag_seconds is not None else ""
        version = f"v{event.version} " if event.version is not None else ""
        moments.append(Moment(event.finished_at, kind, f"{version}{words}",
                              f"event #{event.pk} after {event.attempts} attempt(s){lag}", state))
    elif event.status == SyncEvent.Status.IN_FLIGHT:
        moments.append(Moment(event.created_at, "attempt", f"attempt {event.attempts} in flight",
                              f"claimed by {event.claim_token.rsplit(':', 1)[0]}", "in_flight"))
    return moments


def _saga_moments(saga: SagaLog) -> list[Moment]:
    moments = [Moment(saga.finished_at or saga.started_at, "saga",
                      f"dual-write {saga.status} (v{saga.previous_version or 0} → v{saga.new_version or '?'})",
                      saga.error or (f"by {saga.actor}" if saga.actor else ""),
                      {"committed": "ok", "compensated": "warning", "deferred": "pending"}.get(saga.status, saga.status))]
    for step in saga.steps:
        try:
            at = datetime.fromisoformat(step.get("at", ""))
        except (TypeError, ValueError):
            at = saga.started_at
        moments.append(Moment(at, "saga", f"saga step {step.get('step', '?')}: {'ok' if step.get('ok') else 'failed'}",
                              str(step.get("detail", "")), "ok" if step.get("ok") else "failed"))
    return moments


def _conflict_moments(conflict: Conflict) -> list[Moment]:
    link = ("conflict", (conflict.pk,))
    fields = ", ".join(conflict.fields)
    moments = [Moment(conflict.created_at, "conflict", f"{conflict.kind.replace('_', ' ')} conflict opened",
                      f"on {fields or 'the entity'}" + (f" (rule {conflict.rule})" if conflict.rule else ""),
                      "conflict", link)]
    if conflict.resolved_at:
        who = f" by {conflict.resolver.get_username()}" if conflict.resolver else ""
        moments.append(Moment(conflict.resolved_at, "conflict", f"conflict {conflict.status.replace('_', ' ')}{who}",
                              conflict.note or conflict.explanation, conflict.status, link))
    return moments


def _findings(label: str, uid: str) -> list[Moment]:
    """Sample findings of recent runs that name the entity (a run keeps a few samples per kind)."""
    moments = []
    runs = ReconcileRun.objects.filter(samples__icontains=uid).only("id", "mode", "started_at", "finished_at",
                                                                    "samples")
    recent = ReconcileRun.objects.order_by("-started_at").values_list("id", flat=True)[:RUNS]
    for run in runs.filter(id__in=list(recent)):
        for sample in run.samples:
            if sample.get("label") == label and sample.get("uid") == uid:
                moments.append(Moment(run.finished_at or run.started_at, "reconcile",
                                      f"{run.mode} reconciliation found {str(sample.get('kind', '')).replace('_', ' ')}",
                                      str(sample.get("detail", "")), "stale", ("reconciliation-run", (run.pk,))))
    return moments


def timeline(label: str, uid: str, kinds: set[str] | None = None) -> list[Moment]:
    """The entity's moments, newest first; `kinds` keeps only those kinds."""
    wanted = kinds or set(KINDS)
    moments: list[Moment] = []
    if wanted & {"graph", "queue", "attempt", "vector"}:
        for event in SyncEvent.objects.filter(label=label, uid=uid).order_by("-created_at", "-id")[:EVENTS]:
            moments += _event_moments(event)
    if "saga" in wanted:
        for saga in SagaLog.objects.filter(label=label, uid=uid).order_by("-started_at")[:ROWS]:
            moments += _saga_moments(saga)
    if "conflict" in wanted:
        for conflict in (Conflict.objects.filter(label=label, uid=uid).select_related("resolver")
                         .order_by("-created_at")[:ROWS]):
            moments += _conflict_moments(conflict)
    if "reconcile" in wanted:
        moments += _findings(label, uid)
    if "analyst" in wanted:
        target = f"{label}:{uid}"
        entries = AuditEntry.for_target(target) | AuditEntry.for_target(label).filter(action="resync")
        for entry in entries.order_by("-at")[:ROWS]:
            whole_label = entry.target == label
            moments.append(Moment(entry.at, "analyst", f"{entry.action.replace('_', ' ')} by {entry.actor_name}"
                                  + (f" (all of {label})" if whole_label else ""),
                                  entry.note or _summary(shown_values(entry.action, entry.target, entry.after)),
                                  "ok"))
    moments = [m for m in moments if m.kind in wanted]
    moments.sort(key=lambda m: m.at, reverse=True)
    return moments


def _summary(value) -> str:
    if not isinstance(value, dict):
        return ""
    return ", ".join(f"{k}: {v}" for k, v in value.items())[:300]
