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
MAX_DEPTH = 8  # lists and objects inside each other in a body (an edit of a list field is 3 deep)
MAX_ITEMS = 10_000  # items of one list or object field (dead letters by id: sync.deadletters.MAX_IDS)
MAX_ID = 2**63 - 1  # the largest row number the database holds


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


def _not_a_number(name: str):
    raise ValueError(f"{name} is not a number JSON has")


def _unfit(value, limit: int) -> str:
    """Why `value` cannot be taken ("" when it can): lists and objects nested deeper than `limit`,
    or a string holding a lone surrogate (JSON's "\\ud800" escape: no database stores one).
    Iterative, so no input can make it recurse."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone surrogate (\\ud800-\\udfff): that is not text"
        elif isinstance(item, dict | list):
            if depth > limit:
                return f"the body nests too deeply (at most {limit} levels)"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return ""


def body(request, fields: dict[str, type | tuple[type, ...]], required: tuple[str, ...] = ()) -> dict:
    """The request's JSON object, checked: no unknown field, each of the right type, the required
    ones present (a string must not be blank), a null the same as a field left out, no NaN or
    Infinity, no lone surrogate in a string, nothing nested deeper than MAX_DEPTH, no list or
    object longer than MAX_ITEMS.
    Raises ApiError (400/415); what it returns holds no None at its top level."""
    if request.content_type != "application/json":
        raise ApiError(415, "send a JSON body with Content-Type: application/json")
    try:
        data = json.loads(request.body or b"{}", parse_constant=_not_a_number)
    except RecursionError:
        raise ApiError(400, f"the body nests too deeply (at most {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, NaN, a 5,000-digit number
        raise ApiError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    unfit = _unfit(data, MAX_DEPTH)
    if unfit:
        raise ApiError(400, unfit)
    unknown = [name[:64] for name in sorted(set(data) - set(fields))]
    if unknown:
        raise ApiError(400, f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown[:10])}; "
                            f"this endpoint takes {', '.join(fields) or 'no fields'}", field=unknown[0])
    data = {name: value for name, value in data.items() if value is not None}  # null: not given
    for name, kind in fields.items():
        if name not in data:
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = data[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ApiError(400, f"{name} must be {' or '.join(TYPE_WORDS[k] for k in kinds)}", field=name)
        if isinstance(value, list | dict) and len(value) > MAX_ITEMS:
            raise ApiError(400, f"{name} holds at most {MAX_ITEMS:,} items", field=name)
    for name in required:
        value = data.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ApiError(400, f"{name} is required", field=name)
    return data


def ints(data: dict, name: str) -> list[int]:
    """A list of positive integers (record numbers), each within the database's 64-bit range."""
    values = data.get(name) or []
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_ID for v in values):
        raise ApiError(400, f"{name} must be a list of integers from 1 to {MAX_ID}", field=name)
    return values
