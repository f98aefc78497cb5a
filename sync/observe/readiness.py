"""Is the application ready to serve (/readyz)? The database, Neo4j, the vector store, the
workers' heartbeats and the django-q2 schedules. The database is asked on every call; the stores'
answer is at most HEALTH_CACHE_SECONDS old (`health.recent_services`).

/healthz says whether the outside systems answer; /readyz also says whether the sync is running.
A probe only reads: it never opens an alert or sends a notification (the observer does, and
`sync.tasks.upkeep` when the observer has stopped: `observer.report_if_stopped`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone

from sync.observe import health, readings
from sync.observe.units import duration as seconds


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    millis: float = 0.0


@dataclass(frozen=True)
class Readiness:
    checks: list[Check]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self, details: bool = True) -> dict:
        """The status; with `details`, each check's outcome (hosts, paths, errors: not for anyone)."""
        status = {"status": "ready" if self.ready else "not_ready"}
        if not details:
            return status
        return {**status, "checks": {c.name: {"ok": c.ok, "detail": c.detail, "millis": round(c.millis, 1)}
                                     for c in self.checks}}


def check() -> Readiness:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        database = Check("database", True, f"{connection.vendor} answers", (time.monotonic() - started) * 1000)
    except Exception as exc:  # noqa: BLE001 — readiness reports every failure
        return Readiness([Check("database", False, f"{type(exc).__name__}: {exc}"[:500],
                                (time.monotonic() - started) * 1000)])
    checks = [database]
    checks += [Check(s.name, s.ok, f"{s.kind} at {s.target}: {s.detail}"[:500], s.millis)
               for s in health.recent_services()]
    now = timezone.now()
    checks.append(_workers(readings.heartbeats(now)))
    checks.append(_schedules(now))
    return Readiness(checks)


def _workers(beats: dict[str, float | None]) -> Check:
    limit = settings.HEARTBEAT_MAX_AGE
    parts, ok = [], True
    for name, what in ((readings.OBSERVER, "observer beat"), (readings.CAPTURE, "change capture polled")):
        age = beats.get(name)
        if age is None:
            parts.append(f"{name}: never {what.split()[-1]}")
            ok = False
        else:
            parts.append(f"{what} {seconds(age)} ago")
            ok = ok and age <= limit
    return Check("workers", ok, "; ".join(parts) + f" (limit {seconds(limit)})")


def _schedules(now) -> Check:
    found = readings.schedules(now)
    if not found["schedules"]:
        return Check("schedules", False, "no schedules: run manage.py setup_schedules")
    late = found["late_schedules"]
    if late:
        return Check("schedules", False, "late: " + ", ".join(f"{name} by {seconds(s)}" for name, s in late))
    return Check("schedules", True, f"{found['schedules']} schedules, none late by more than "
                 f"{seconds(settings.SCHEDULE_GRACE)}")
