"""Reconciliation: compare the graph, the vector store and the sync records; repair what is safe.

- `reconciler`: the runs themselves (full and incremental, in bounded pages), drift found and
  repaired, conflicts opened for the rest.
- `runs`: runs as people start and follow them (rate-limited per user, audited, progress).

May import: `sync.models`, `sync.policy`, `sync.ids`, `sync.embedding`, `sync.stores`,
`sync.queue`, `sync.backfill`, `sync.capture` (what it has still to queue), `sync.resync`, `sync.conflicts`,
`sync.shutdown`, `sync.observe.counters`.
"""
