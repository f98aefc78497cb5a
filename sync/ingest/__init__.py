"""Intelligence coming in: the JSON ingest API and the CISA KEV feed.

- `validate`: entities sent to the API checked whole (every item, every value one the graph can
  store), every problem named, nothing half-written.
- `tokens`: ingest tokens, bound to the sources they may claim and the labels they may write.
- `api`: `POST /api/v1/entities` with an ingest token.
- `kev`: the KEV feed parsed, validated and imported through the write paths.

May import: `sync.writes`, `sync.policy`, `sync.ids`, `sync.models`, `sync.stores`,
`sync.conflicts.rules` (which sources are authoritative), `nightingale.http`.
"""
