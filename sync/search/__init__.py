"""Semantic search over the vector index, and the canary that checks it keeps working.

- `query`: a text embedded by the index's model, top-k hits joined back to the graph and marked
  by how each stands against the live node.
- `canary`: every few minutes, recently synced HIGH entities searched for by their own text;
  its rounds are stored (`sync.observe.models.CanaryCheck`) and read by `sync.observe.readings`.

May import: `sync.models`, `sync.policy`, `sync.ids`, `sync.embedding`, `sync.stores`,
`sync.queue`, `sync.observe.counters` and `sync.observe.models`. Observation never imports search.
"""
