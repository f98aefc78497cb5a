"""Conflicts: disagreements a rule settles, or that go to an analyst, from raising to resolving.

- `rules`: the rule table (conflict kind -> rule) and the rules; which fields are governed.
- `settle`: a write's disputed fields settled by the rules before it reaches the graph
  (called by `sync.writes`).
- `records`: storing conflicts (`open_conflict`, `record_auto_resolved`, `withdraw`).
- `review`: the read side, as an analyst works them (filters, the field-by-field layout, word
  diffs, the snapshot of a bulk action).
- `resolve`: an analyst's decision applied (`resolve`, `dismiss`, `decide`, `bulk`), written
  through `sync.writes` like any other write, and audited.

May import: `sync.models`, `sync.policy`, `sync.ids`, `sync.embedding`, `sync.stores`; `resolve`
alone imports `sync.writes` (which imports `settle`, `records` and `rules`, never `resolve`).
"""
