"""The shared check run in a process of its own, on the database, graph and vector store its
environment names (DATABASE_URL, NEO4J_URI, LANCEDB_DIR): for a case whose workers use another
database than the test's (the PostgreSQL restart). Prints `{"equal": true}` last when it passes.

    python -m tests.faults.elsewhere '{"errors_before": 3}'
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    import django

    django.setup()
    from sync.stores import graph_store, vector_store
    from tests.consistency import ErrorCounted, assert_index_matches_graph

    options = json.loads(argv[1])
    assert_index_matches_graph(graph_store(), vector_store(),
                               visible=[ErrorCounted("database", options["errors_before"])])
    print(json.dumps({"equal": True}))


if __name__ == "__main__":
    main(sys.argv)
