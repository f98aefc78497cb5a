"""Ingest tokens: a bearer token for `POST /api/v1/entities`, bound to the sources it may claim and
the labels it may write.

The conflict rules trust an entity's `source` (CISA wins a vulnerability score, a source may
change the values it set itself), so the source cannot be the caller's word: a token names the
exact `source` values it may send and the labels it may write, and a claim outside them is
refused (403) and audited (`ingest_token.denied`). Tokens are made and kept as the dashboard's
API tokens are (nightingale.http: 256 random bits, only a SHA-256 digest stored); the token itself is shown once, by `manage.py ingest_token create`. Making
and revoking a token is audited (`ingest_token.create`, `ingest_token.revoke`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.utils import timezone

from nightingale import tokens
from nightingale.http import new_token, token_digest
from sync.conflicts.rules import AUTHORITATIVE_SOURCES
from sync.ids import is_label
from sync.ingest.validate import MAX_SOURCE, IngestItem
from sync.models import AuditEntry, IngestToken
from sync.policy import POLICY

PREFIX = "ngi_"  # so a leaked token is recognisable, and never mistaken for a dashboard token (ngs_)


class TokenError(ValueError):
    pass


class ClaimRefused(Exception):
    """An item claims a source or a label its token is not bound to (answered 403, audited)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


digest = token_digest


def create(name: str, sources: Iterable[str], labels: Iterable[str], *, by="command") -> tuple[IngestToken, str]:
    """A new token allowed to claim `sources` and write `labels`: (the stored row, the token to
    hand over once)."""
    name = name.strip()
    if not name:
        raise TokenError("give the token a name that says which feed it is for, e.g. --name 'misp-sync'")
    sources, labels = _sources(sources), _labels(labels)
    token = new_token(PREFIX)
    row = IngestToken.objects.create(name=name[:100], prefix=token[:12], digest=digest(token),
                                     sources=sources, labels=labels, created_by=_name(by))
    AuditEntry.record(by, "ingest_token.create", f"ingest_token:{row.pk}", after=describe(row))
    return row, token


def revoke(row: IngestToken, *, by="command") -> bool:
    """Refuse the token from now on; False if it was revoked already."""
    revoked = IngestToken.objects.filter(pk=row.pk, revoked_at=None).update(revoked_at=timezone.now())
    if revoked:
        AuditEntry.record(by, "ingest_token.revoke", f"ingest_token:{row.pk}", before=describe(row))
    return bool(revoked)


def find(selector: str) -> IngestToken:
    """A token by its number or its prefix (as `ingest_token list` shows them)."""
    return tokens.find(IngestToken.objects.all(), selector, "ingest token", "manage.py ingest_token list", TokenError)


def authenticate(token: str) -> IngestToken | None:
    """The active token row for a presented token, or None. Records when it was last used (at
    most once a minute, so that ingest does not write a row per request)."""
    row = tokens.presented(IngestToken.objects.all(), token, PREFIX)
    if row is not None:
        tokens.mark_used(row)
    return row


def authorise(row: IngestToken, items: Sequence[IngestItem]) -> None:
    """Every item's source and label is one the token is bound to; otherwise ClaimRefused for the
    first that is not, audited as `ingest_token.denied` (nothing of the request is written)."""
    for item in items:
        if item.source not in row.sources:
            field, message = item.where + "source", (f"this token may not claim the source {item.source!r}; "
                                                 f"it may claim: {', '.join(row.sources)}")
        elif item.label not in row.labels:
            field, message = item.where + "label", (f"this token may not write {item.label} entities; "
                                                f"it may write: {', '.join(row.labels)}")
        else:
            continue
        AuditEntry.record(f"ingest:{row.name}", "ingest_token.denied", f"{item.label}:{item.uid}"[:1200],
                          after={**describe(row), "claimed": {"source": item.source, "label": item.label},
                                 "field": field, "items": len(items)})
        raise ClaimRefused(message, field)


def describe(row: IngestToken) -> dict:
    return {"token": row.pk, "prefix": row.prefix, "name": row.name, "sources": row.sources, "labels": row.labels}


def authoritative(row: IngestToken) -> list[str]:
    """The token's sources that win disputes by name (sync.conflicts.rules.authoritative_source)."""
    return [source for source in row.sources if source.strip().lower() in AUTHORITATIVE_SOURCES]


def _sources(values: Iterable[str]) -> list[str]:
    sources = sorted({value.strip() for value in values if value.strip()})
    if not sources:
        raise TokenError("name the sources this token may claim, e.g. --sources misp,otx")
    bad = [s for s in sources if len(s) > MAX_SOURCE or any(ord(c) < 32 for c in s)]
    if bad:
        raise TokenError(f"a source is 1-{MAX_SOURCE} characters of text, not {bad[0][:40]!r}")
    return sources


def _labels(values: Iterable[str]) -> list[str]:
    labels = sorted({value.strip() for value in values if value.strip()})
    if not labels:
        raise TokenError("name the labels this token may write, e.g. --labels ThreatActor,Report")
    unknown = [label for label in labels if label not in POLICY or not is_label(label)]
    if unknown:
        known = sorted(label for label in POLICY if is_label(label))
        raise TokenError(f"unknown label {unknown[0]!r}; known: {', '.join(known)}")
    return labels


def _name(by) -> str:
    return by.get_username() if getattr(by, "pk", None) else str(by)[:150]
