"""What the dashboard's API tokens (dashboard.tokens) and the ingest tokens (sync.ingest.tokens)
share: the stored row (`BearerToken`: a name, the first characters to tell tokens apart, the
SHA-256 digest of the token made by `nightingale.http.new_token`, who made it and when, when it
was last used, when it was revoked), finding an active row by the token presented, and the
last-used time, written at most once a minute so that reads do not become writes."""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.db.models import QuerySet
from django.utils import timezone

from nightingale.http import token_digest

LAST_USED_EVERY = timedelta(seconds=60)  # last-used time is written at most this often per token


class BearerToken(models.Model):
    """A stored bearer token. Only a SHA-256 digest of the token is kept: the token itself is
    shown once, when it is made."""

    name = models.CharField(max_length=100)  # what it is for: "nightly retry job", "misp-sync"
    prefix = models.CharField(max_length=12)  # the token's first characters, to tell tokens apart
    digest = models.CharField(max_length=64, unique=True)  # sha256 hex of the whole token
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]
        default_permissions = ("view",)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def presented(rows: QuerySet, token: str, prefix: str):
    """The active row of `rows` for a presented token, or None (a token of another kind, by its
    prefix, is not even looked up)."""
    if not token.startswith(prefix):
        return None
    return rows.filter(digest=token_digest(token), revoked_at=None).first()


def mark_used(row: BearerToken) -> None:
    """Record that `row` was used now, unless that was recorded less than LAST_USED_EVERY ago."""
    now = timezone.now()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
        type(row).objects.filter(pk=row.pk).update(last_used_at=now)
        row.last_used_at = now


def find(rows: QuerySet, selector: str, kind: str, listing: str, error: type[Exception]):
    """A token of `rows` by its number or its prefix (as `listing` shows them); `error` says
    which is missing or ambiguous."""
    found = list(rows.filter(pk=int(selector))) if selector.isdigit() else list(rows.filter(prefix=selector))
    if not found:
        raise error(f"there is no {kind} {selector!r} (see: {listing})")
    if len(found) > 1:
        raise error(f"{len(found)} tokens start with {selector!r}: give the token's number instead")
    return found[0]
