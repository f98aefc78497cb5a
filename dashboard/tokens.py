"""API tokens: a bearer token belongs to a user and acts with that user's role, as it is at the
time of each request (a viewer's token reads, an analyst's token also acts; demote the user and
the token follows). Tokens are random (256 bits from `secrets`), so a plain SHA-256 digest is
all that is stored and looked up; the token itself is shown once, by `manage.py api_token create`.
Making and revoking a token is audited; so is every action taken with one, as its user."""

from __future__ import annotations

from django.utils import timezone

from dashboard.models import ApiToken
from nightingale import tokens
from nightingale.http import new_token, token_digest
from sync.models import AuditEntry

PREFIX = "ngs_"  # so a leaked token is recognisable (secret scanners, logs)


class TokenError(ValueError):
    pass


digest = token_digest


def create(user, name: str, *, by: str = "command") -> tuple[ApiToken, str]:
    """A new token for `user`: (the stored row, the token to hand over once)."""
    name = name.strip()
    if not name:
        raise TokenError("give the token a name that says what it is for, e.g. --name 'nightly retry job'")
    if not user.is_active:
        raise TokenError(f"{user.get_username()} is not active")
    token = new_token(PREFIX)
    row = ApiToken.objects.create(user=user, name=name[:100], prefix=token[:12], digest=digest(token), created_by=by)
    AuditEntry.record(by, "api_token.create", f"user:{user.get_username()}",
                      after={"token": row.pk, "prefix": row.prefix, "name": row.name})
    return row, token


def revoke(row: ApiToken, *, by: str = "command") -> bool:
    """Refuse the token from now on; False if it was revoked already."""
    revoked = ApiToken.objects.filter(pk=row.pk, revoked_at=None).update(revoked_at=timezone.now())
    if revoked:
        AuditEntry.record(by, "api_token.revoke", f"user:{row.user.get_username()}",
                          before={"token": row.pk, "prefix": row.prefix, "name": row.name})
    return bool(revoked)


def find(selector: str) -> ApiToken:
    """A token by its number or its prefix (as `api_token list` shows them)."""
    return tokens.find(ApiToken.objects.select_related("user"), selector, "API token",
                       "manage.py api_token list", TokenError)


def authenticate(token: str) -> ApiToken | None:
    """The active token row for a presented token (with its user), or None. Records when it was
    last used (at most once a minute, so reads do not become writes)."""
    row = tokens.presented(ApiToken.objects.select_related("user"), token, PREFIX)
    if row is None or not row.user.is_active:
        return None
    tokens.mark_used(row)
    return row
