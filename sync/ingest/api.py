"""The JSON ingest API: POST /api/v1/entities with an ingest token (sync.ingest.tokens).

A request is checked whole before anything is written: the body (sync.ingest.validate), the
token's right to each item's source and label (403), and each `expected_version` (409); only then
are the items written, in order. What can still stop a batch part-way is the stores themselves
(unreachable, a failed saga): the answer's `written` lists what is stored.
"""

from __future__ import annotations

import logging
from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from nightingale.http import bearer, json_error
from sync.ingest import tokens
from sync.ingest.validate import IngestError, IngestItem, load, parse_items
from sync.stores import graph_store
from sync.stores.base import PermanentStoreError, RetryableStoreError, VersionConflict
from sync.writes import CompensationFailed, SyncWriteError, write_entity

log = logging.getLogger(__name__)


def token_required(view):
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        token = bearer(request)
        if token is None:
            return json_error(401, "send `Authorization: Bearer <token>`")
        request.ingest_token = tokens.authenticate(token)
        if request.ingest_token is None:
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
        raw = request.body
    except RequestDataTooBig:
        return json_error(413, f"the body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes: "
                               "send fewer entities a request", field="body")
    try:
        body = load(raw)
        items = parse_items(body)
        tokens.authorise(request.ingest_token, items)
        _check_versions(items)
    except IngestError as exc:
        return json_error(400, str(exc), field=exc.field)
    except tokens.ClaimRefused as exc:
        return json_error(403, str(exc), field=exc.field)
    except VersionConflict as exc:
        return json_error(409, str(exc), label=exc.label, uid=exc.uid, version=exc.actual, written=[])
    except RetryableStoreError as exc:
        return json_error(503, f"the graph is unavailable: {exc}", written=[])
    written: list[dict] = []
    failed = _write(items, written)
    if failed is not None:
        return failed
    status = 201 if any(r["created"] for r in written) else 200
    batch = isinstance(body, dict) and "entities" in body
    return JsonResponse({"entities": written} if batch else written[0], status=status)


def _write(items: list[IngestItem], written: list[dict]) -> JsonResponse | None:
    """Write the checked items in order, each one's outcome appended to `written`; the error
    answer of a write that stops the batch, or None when all are written."""
    for item in items:
        where = {"label": item.label, "uid": item.uid, "written": written}
        try:
            outcome = write_entity(item.label, item.uid, item.properties, source=item.source,
                                   confidence=item.confidence, expected_version=item.expected_version,
                                   actor=f"api:{item.source}")
        except VersionConflict as exc:
            return json_error(409, str(exc), version=exc.actual, **where)
        except CompensationFailed as exc:
            return json_error(500, str(exc), saga=exc.saga.pk, **where)
        except SyncWriteError as exc:
            return json_error(503 if exc.retryable else 500, str(exc), saga=exc.saga.pk if exc.saga else None,
                              **where)
        except RetryableStoreError as exc:
            return json_error(503, f"the graph is unavailable: {exc}", written=written)
        except (PermanentStoreError, ValueError) as exc:
            return json_error(400, str(exc), **where)
        except Exception as exc:  # noqa: BLE001 — the client gets a body that says what happened
            log.exception("ingest of %s:%s failed unexpectedly", item.label, item.uid)
            return json_error(500, f"the write failed unexpectedly ({type(exc).__name__}: {exc}); the entities "
                                   "in `written` are stored, this one may not be: retry it and those after it",
                              **where)
        written.append({
            "label": item.label, "uid": item.uid, "version": outcome.entity.version,
            "created": outcome.created, "mode": outcome.mode, "vector": outcome.vector_outcome,
            "saga": outcome.saga.pk if outcome.saga else None,
        })
    return None


def _check_versions(items: list[IngestItem]) -> None:
    """VersionConflict for the first item whose `expected_version` the graph already contradicts,
    before any item is written. (An entity named twice is checked at its first mention: the
    later ones expect the versions the batch itself makes. A write racing this check is still
    refused by the write's own guard.)"""
    first: dict[tuple[str, str], int | None] = {}
    for item in items:
        first.setdefault((item.label, item.uid), item.expected_version)
    wanted = {key: version for key, version in first.items() if version is not None}
    if not wanted:
        return
    found = graph_store().get_entities(list(wanted))
    for (label, uid), version in wanted.items():
        actual = found[(label, uid)].version if (label, uid) in found else None
        if (version == 0 and actual is not None) or (version != 0 and actual != version):
            raise VersionConflict(label, uid, version, actual)
