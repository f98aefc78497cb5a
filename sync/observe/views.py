import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from nightingale.http import bearer
from sync.observe import metrics as observed
from sync.observe import readiness
from sync.observe.health import check_services


@login_not_required  # probes and scrapers have no session
@never_cache
@require_GET
def healthz(request):
    services = check_services()
    body = {
        "status": "ok" if all(s.ok for s in services) else "degraded",
        "services": {
            s.name: {"kind": s.kind, "target": s.target, "reachable": s.ok, "detail": s.detail,
                     "millis": round(s.millis, 1)}
            for s in services
        },
    }
    return JsonResponse(body, status=200 if body["status"] == "ok" else 503)


@login_not_required  # a logged-in user or the bearer token, checked below
@never_cache
@require_GET
def metrics(request):
    """Prometheus exposition, for a logged-in user or a scraper holding METRICS_TOKEN."""
    token = bearer(request)
    token_ok = bool(settings.METRICS_TOKEN) and token is not None and hmac.compare_digest(
        token.encode(), settings.METRICS_TOKEN.encode())
    if not (token_ok or request.user.is_authenticated):
        return HttpResponse("log in or send the metrics bearer token\n", status=401,
                            content_type="text/plain")
    return HttpResponse(observed.exposition(), content_type=CONTENT_TYPE_LATEST)


@login_not_required
@never_cache
@require_GET
def readyz(request):
    """Database, Neo4j, vector store, workers' heartbeats and schedules: 200 when all are fine, else 503."""
    result = readiness.check()
    return JsonResponse(result.as_dict(), status=200 if result.ready else 503)
