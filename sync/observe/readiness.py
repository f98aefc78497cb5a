"""Is the application ready to serve (/readyz)? The database, Neo4j, the vector store, the
workers' heartbeats and the django-q2 schedules, each checked live on every call.

/healthz says whether the outside systems answer; /readyz also says whether the sync is running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone

from sync.observe import alerting, delivery, health, readings
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

    def as_dict(self) -> dict:
        return {"status": "ready" if self.ready else "not_ready",
                "checks": {c.name: {"ok": c.ok, "detail": c.detail, "millis": round(c.millis, 1)}
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
               for s in health.check_services()]
    now = timezone.now()
    beats = readings.heartbeats(now)
    checks.append(_workers(beats))
    checks.append(_schedules(now))
    if not checks[-2].ok:
        # The observer judges the heartbeat rule while it runs; when it has stopped, we do.
        changes = alerting.watch_the_watcher(readings.read(now))
        if changes and (changes.opened or changes.resolved):
            delivery.deliver_due()
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
