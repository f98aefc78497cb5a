"""The JSON API for every dashboard action, under /api/v1/, authenticated by a role-scoped
bearer token (dashboard.tokens): a token acts as its user, with that user's role. Each endpoint
calls the same engine function as the page it mirrors, so it is audited exactly like the UI
action, as the token's user. Bad input is a 4xx with a JSON body that says what is wrong
({"error": …, "field": …}, the ingest API's style) and writes nothing. docs/api.md lists them."""

from __future__ import annotations

import json
from functools import wraps

from django.contrib.auth.decorators import login_not_required
from django.views.decorators.csrf import csrf_exempt

from dashboard import tokens
from dashboard.access import DESCRIPTION, ROLES, Rule, has_role, role_of
from nightingale.http import bearer, json_error
from sync.models import AuditEntry

TYPE_WORDS = {str: "a string", bool: "true or false", int: "an integer", list: "a list", dict: "an object"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.extra = status, extra


def token_role(role: str, methods: tuple[str, ...] = ("POST",)):
    """The view answers `methods` (others: 405) to a bearer token whose user holds `role` or above
    (no token, an unknown or revoked one: 401; too small a role: 403, audited for a mutation)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def decorator(view):
        @login_not_required  # a bearer token, not a session: no login redirect, no CSRF cookie
        @csrf_exempt
        @wraps(view)
        def checked(request, *args, **kwargs):
            if request.method not in methods:
                response = json_error(405, f"use {' or '.join(methods)}")
                response["Allow"] = ", ".join(methods)
                return response
            token = bearer(request)
            if token is None:
                return json_error(401, "send `Authorization: Bearer <token>` (manage.py api_token create USER --name WHAT)")
            row = tokens.authenticate(token)
            if row is None:
                return json_error(401, "unknown or revoked API token")
            request.user, request.api_token = row.user, row
            if not has_role(row.user, role):
                held = role_of(row.user)
                if request.method not in ("GET", "HEAD"):
                    AuditEntry.record(row.user, "access.denied", request.path[:1200],
                                      after={"method": request.method, "needs": role, "has": held,
                                             "token": row.prefix})
                return json_error(403, f"this needs the {role} role ({DESCRIPTION[role]}); "
                                       f"the token's user {row.user.get_username()} is {held or 'without a role'}",
                                  needs=role, has=held)
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return json_error(exc.status, str(exc), **exc.extra)

        checked.api_access = Rule(role, methods)
        return checked

    return decorator


def body(request, fields: dict[str, type | tuple[type, ...]], required: tuple[str, ...] = ()) -> dict:
    """The request's JSON object, checked: no unknown field, each of the right type, the required
    ones present (a string must not be blank). Raises ApiError (400/415)."""
    if request.content_type != "application/json":
        raise ApiError(415, "send a JSON body with Content-Type: application/json")
    try:
        data = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ApiError(400, f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                            f"this endpoint takes {', '.join(fields) or 'no fields'}", field=unknown[0])
    for name, kind in fields.items():
        if name not in data or data[name] is None:
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = data[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ApiError(400, f"{name} must be {' or '.join(TYPE_WORDS[k] for k in kinds)}", field=name)
    for name in required:
        value = data.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ApiError(400, f"{name} is required", field=name)
    return data


def ints(data: dict, name: str) -> list[int]:
    values = data.get(name) or []
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ApiError(400, f"{name} must be a list of integers", field=name)
    return values
