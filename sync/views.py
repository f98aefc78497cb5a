from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from sync.health import check_services


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
