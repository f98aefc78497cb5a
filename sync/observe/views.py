"""The probes (/healthz, /readyz) and the Prometheus scrape (/metrics).

The probes answer anyone, minimally — the status and its HTTP code, from a check of the stores at
most HEALTH_CACHE_SECONDS old — and only read: no alert is opened and no notification sent from
a request. Their details (hosts, paths, errors, timings) and /metrics are for a user holding a
role (viewer or above) or a caller sending METRICS_TOKEN.
"""

import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from nightingale.http import bearer
from nightingale.permissions import VIEW_DASHBOARD, holds
from sync.observe import health, readiness
from sync.observe import metrics as observed


def _metrics_token(request) -> bool:
    token = bearer(request)
    return bool(settings.METRICS_TOKEN) and token is not None and hmac.compare_digest(
        token.encode(), settings.METRICS_TOKEN.encode())


def trusted(request) -> bool:
    """May this caller see the system's insides: a viewer or above, or the metrics token?"""
    return _metrics_token(request) or holds(request.user, VIEW_DASHBOARD)


@login_not_required  # probes and scrapers have no session
@never_cache
@require_GET
def healthz(request):
    """Do Neo4j and the vector store answer? 200 `ok` or 503 `degraded`; each service's detail for
    a trusted caller."""
    services = health.recent_services()
    body = {"status": "ok" if all(s.ok for s in services) else "degraded"}
    if trusted(request):
        body["services"] = {
            s.name: {"kind": s.kind, "target": s.target, "reachable": s.ok, "detail": s.detail,
                     "millis": round(s.millis, 1)}
            for s in services
        }
    return JsonResponse(body, status=200 if body["status"] == "ok" else 503)


@login_not_required  # a user with a role or the bearer token, checked below
@never_cache
@require_GET
def metrics(request):
    """Prometheus exposition, for a user holding a role or a scraper holding METRICS_TOKEN."""
    if _metrics_token(request) or holds(request.user, VIEW_DASHBOARD):
        return HttpResponse(observed.exposition(), content_type=CONTENT_TYPE_LATEST)
    if request.user.is_authenticated:
        return HttpResponse("/metrics needs the viewer role or above, or the metrics bearer token\n", status=403,
                            content_type="text/plain")
    return HttpResponse("log in or send the metrics bearer token\n", status=401, content_type="text/plain")


@login_not_required
@never_cache
@require_GET
def readyz(request):
    """Database, Neo4j, vector store, workers' heartbeats and schedules: 200 when all are fine, else
    503; each check's detail for a trusted caller."""
    result = readiness.check()
    return JsonResponse(result.as_dict(details=trusted(request)), status=200 if result.ready else 503)
