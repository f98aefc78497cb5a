"""Fault injection around a real store, for failures that cannot be produced for real here."""

from __future__ import annotations

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
