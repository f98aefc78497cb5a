"""The fault suite (issue 20): the services the sync depends on fail for real, and each case ends
with the one shared check, `tests.consistency.assert_index_matches_graph` (the vector index equals
the graph, no change without a finished event, records at the graph's versions, every failure
visible where people look).

- `servers`: what the suite stops and starts itself — a Neo4j and a PostgreSQL of its own (never
  the shared ones) and a tiny filesystem for LanceDB (full, read-only).
- `inject`: fault injection for what cannot be broken for real, or not at the moment a case needs
  it (a vector write that fails on cue, a hook before the first write), and the app's clock set
  apart from Neo4j's.
- `work`: what a case does around its fault (foreign writes, polls, drains until settled, observer
  ticks); `elsewhere`: the shared check run in a process on another database.
- `conftest`: the suite's own Neo4j (one per session), a clean graph on it per case.
- `test_neo4j`, `test_vector_store`, `test_database`, `test_disk`, `test_clocks`: the cases, each
  stating its expected outcome in its docstring.
"""
