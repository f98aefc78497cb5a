"""Intelligence coming in: the JSON ingest API and the CISA KEV feed.

- `validate`: entities sent to the API checked, every problem named, nothing half-written.
- `api`: `POST /api/v1/entities` with a bearer token.
- `kev`: the KEV feed parsed, validated and imported through the write paths.

May import: `sync.writes`, `sync.policy`, `sync.ids`, `sync.models`, `sync.stores`,
`nightingale.http`.
"""
