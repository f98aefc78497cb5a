"""Fault injection around the real stores, for failures that cannot be produced for real here
(or not at the moment a case needs them), and the app's clock set apart from Neo4j's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sync.stores.base import RetryableStoreError


class FailingWrites:
    """Wraps a real vector store; writes (upsert, metadata update) fail with a retryable error
    while `failures` > 0."""

    def __init__(self, inner, failures: int = 10**9, before=None):
        self.inner = inner
        self.failures = failures
        self.before = before  # called before failing, e.g. to race a concurrent write
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            if self.before:
                self.before()
            raise RetryableStoreError("vector store answered 503 Service Unavailable")

    def upsert(self, records):
        self._maybe_fail()
        return self.inner.upsert(records)

    def update_metadata(self, metadata):
        self._maybe_fail()
        return self.inner.update_metadata(metadata)


class BeforeFirstWrite:
    """Wraps a real vector store; `hook()` runs once, right before the first write (upsert or
    metadata update) goes through, e.g. to kill a server in the middle of a batch."""

    def __init__(self, inner, hook):
        self.inner = inner
        self.hook = hook
        self.fired = False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.hook()

    def upsert(self, records):
        self._fire()
        return self.inner.upsert(records)

    def update_metadata(self, metadata):
        self._fire()
        return self.inner.update_metadata(metadata)


@contextmanager
def app_clock_skewed(seconds: float) -> Iterator[None]:
    """This process's clock `seconds` ahead of the real one (behind, if negative), as read through
    `django.utils.timezone.now`, the engine's one reading of the app's clock. Neo4j's clock, which
    stamps `updated_at`, is untouched: the two disagree by `seconds`."""
    from django.utils import timezone

    real = timezone.now
    skew = timedelta(seconds=seconds)
    timezone.now = lambda: real() + skew
    try:
        yield
    finally:
        timezone.now = real
