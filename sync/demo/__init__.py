"""The demo: a realistic graph to start from, and a steady trickle of changes on it.

- `graph`: the demo graph, real public threat intelligence (MISP galaxies, the KEV sample in
  `data/`) around generated prospects (`manage.py load_demo`).
- `activity`: the changes a live deployment sees (`manage.py simulate`).

May import: anything of the engine a user of it may (`sync.writes`, `sync.ingest`,
`sync.conflicts`, `sync.stores`, `sync.models`); nothing imports the demo but its commands.
"""
