"""What the three token-authenticated endpoints share (the ingest API, the dashboard's JSON API,
/metrics): the bearer token a request carries and the JSON error body. Imports Django only, so
the engine and the UI both may use it."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse


def json_error(status: int, message: str, **extra) -> JsonResponse:
    """`{"error": message, **extra}` with `status`: the one shape of an API error."""
    return JsonResponse({"error": message, **extra}, status=status)


def bearer(request: HttpRequest) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case, the token
    without surrounding spaces); None when there is no such header or it carries no token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
