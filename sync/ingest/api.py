"""The JSON ingest API: POST /api/v1/entities with a bearer token."""

from __future__ import annotations

import hmac
import json
import logging
from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from nightingale.http import bearer, json_error
from sync.ingest.validate import IngestError, parse_items
from sync.stores.base import PermanentStoreError, RetryableStoreError, VersionConflict
from sync.writes import CompensationFailed, SyncWriteError, write_entity

log = logging.getLogger(__name__)


def token_required(view):
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        token = bearer(request)
        if token is None:
            return json_error(401, "send `Authorization: Bearer <token>`")
        if not any(hmac.compare_digest(token.encode(), known.encode())
                   for known in settings.INGEST_API_TOKENS):
            return json_error(401, "unknown API token")
        return view(request, *args, **kwargs)

    return wrapped


@login_not_required  # a bearer token, not a session
@csrf_exempt
@require_POST
@token_required
def ingest_entities(request):
    if request.content_type != "application/json":
        return json_error(415, "send a JSON body with Content-Type: application/json")
    try:
        body = json.loads(request.body)
        items = parse_items(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return json_error(400, f"the body is not valid JSON: {exc}")
    except IngestError as exc:
        return json_error(400, str(exc), field=exc.field)
    results = []
    for item in items:
        try:
            outcome = write_entity(item.label, item.uid, item.properties, source=item.source,
                                   confidence=item.confidence, expected_version=item.expected_version,
                                   actor=f"api:{item.source}")
        except VersionConflict as exc:
            return json_error(409, str(exc), label=item.label, uid=item.uid, version=exc.actual, written=results)
        except CompensationFailed as exc:
            return json_error(500, str(exc), label=item.label, uid=item.uid, saga=exc.saga.pk, written=results)
        except SyncWriteError as exc:
            return json_error(503 if exc.retryable else 500, str(exc), label=item.label, uid=item.uid,
                              saga=exc.saga.pk if exc.saga else None, written=results)
        except RetryableStoreError as exc:
            return json_error(503, f"the graph is unavailable: {exc}", written=results)
        except (PermanentStoreError, ValueError) as exc:
            return json_error(400, str(exc), label=item.label, uid=item.uid, written=results)
        except Exception as exc:  # noqa: BLE001 — the client gets a body that says what happened
            log.exception("ingest of %s:%s failed unexpectedly", item.label, item.uid)
            return json_error(500, f"the write failed unexpectedly ({type(exc).__name__}: {exc}); the entities "
                                   "in `written` are stored, this one may not be: retry it and those after it",
                              label=item.label, uid=item.uid, written=results)
        results.append({
            "label": item.label, "uid": item.uid, "version": outcome.entity.version,
            "created": outcome.created, "mode": outcome.mode, "vector": outcome.vector_outcome,
            "saga": outcome.saga.pk if outcome.saga else None,
        })
    status = 201 if any(r["created"] for r in results) else 200
    batch = isinstance(body, dict) and "entities" in body
    return JsonResponse({"entities": results} if batch else results[0], status=status)
