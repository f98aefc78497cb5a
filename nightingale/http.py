"""What the three token-authenticated endpoints share (the ingest API, the dashboard's JSON API,
/metrics): the bearer token a request carries, how a stored token is made and kept, and the JSON
error body. Imports Django only, so the engine and the UI both may use it."""

from __future__ import annotations

import hashlib
import secrets

from django.http import HttpRequest, JsonResponse


def new_token(prefix: str) -> str:
    """A bearer token to hand over once: `prefix` (so a leaked one is recognisable) and 256 random
    bits, which is why a plain SHA-256 digest is all that needs storing (`token_digest`)."""
    return prefix + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What is stored of a token made by `new_token`, and looked up: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def json_error(status: int, message: str, **extra) -> JsonResponse:
    """`{"error": message, **extra}` with `status`: the one shape of an API error."""
    return JsonResponse({"error": message, **extra}, status=status)


def bearer(request: HttpRequest) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case, the token
    without surrounding spaces); None when there is no such header or it carries no token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
