"""How changes travel from the graph to the workers that apply them (SYNC_TRANSPORT).

- `outbox` (the default): `sync.queue` stores each change as a sync event row; django-q2's drains
  claim and apply them (`sync.worker`).
- `kafka`: `sync.queue.enqueue_many` — the one seam every producer of work goes through (change
  capture, the write paths, resync, reconciliation, fencing repairs) — publishes the work to Apache
  Kafka instead (`sync.transport.kafka`), and a consumer group applies it
  (`sync.transport.consumer`, `manage.py consume`) through the same apply path.

May import: the leaves (`sync.models`, `sync.ids`), `sync.stores.base`, `sync.observe.counters`;
`consumer` also the pipeline (`sync.queue`, `sync.apply`, `sync.embedding`). `kafka` never imports `sync.queue`,
which imports it.
"""
