"""Observation of the sync engine (the Django app "observe"): counters, readings, samples,
alerts and their deliveries, service health and the probes.

- `counters`: the engine's Prometheus counters and lag histogram — the one module the engine
  imports (a leaf: settings and prometheus_client only).
- `readings`: one reading of everything watched, from the database (queue, lag, freshness,
  heartbeats, schedules, the search canary's rounds), the `sync_status` snapshot and the one
  `percentiles`; `queue_summary`: the queue page's view (both take the depth from `sync.queue.lanes`).
- `samples`: periodic samples for the charts, rolled up and pruned; `overview`: the overview
  page's cards and markers; `units`: numbers in words.
- `alerting` (rules, the life of an alert), `delivery` (webhook and e-mail), `observer` (the loop
  that samples, judges and delivers), `context` (the banner of open alerts).
- `health` and `readiness`: are the outside systems answering, is the sync running;
  `metrics`: the /metrics exposition; `views`: /healthz, /readyz, /metrics.

May import: `sync.models`, `sync.queue`, `sync.backfill`, `sync.stores`, `sync.ids`, `sync.policy`. Nothing of
the engine's work (apply, writes, capture, reconcile, search) — they report here, never the
other way round.
"""
