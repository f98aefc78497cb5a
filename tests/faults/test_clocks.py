"""The app's clock and Neo4j's disagree. Neo4j's clock is real; the app's is set 30 s ahead or behind
in this process (`app_clock_skewed`: the engine reads its clock through django.utils.timezone.now)
— more than the capture overlap used here (5 s), so a window taken on the wrong clock would show."""

from __future__ import annotations

import pytest

from sync.apply import apply_events
from sync.models import SyncEvent
from sync.queue import claim_batch
from tests.consistency import assert_index_matches_graph
from tests.faults.inject import app_clock_skewed
from tests.faults.servers import wait_until
from tests.faults.work import create_actors, cypher, poll, settle

pytestmark = [pytest.mark.django_db(transaction=True)]
OVERLAP = 5.0
WAIT = 2.0  # Neo4j seconds between a change and its apply: the lag measured must include them
SLACK = 0.5  # the clock offset is measured over a round trip to Neo4j


@pytest.mark.parametrize("skew", [30, -30], ids=["app ahead", "app behind"])
def test_lag_and_capture_stay_on_neo4js_clock(skew, fault_graph, vectors):
    """Expected, whichever way the app's clock is off:
    - A change applied 2 s (on Neo4j's clock) after it was made has a lag between Neo4j's time
      just before the apply and just after, less the change's `updated_at`: measured on Neo4j's
      clock, neither 30 s too long nor cut to zero.
    - A writer stamping its own `updated_at` whose transaction commits after a poll has moved the
      cursor past that stamp is still captured by the next poll, in the overlap window (which is
      taken on Neo4j's clock, so the 30 s do not move it).
    - The index equals the graph.
    """
    graph = fault_graph
    with app_clock_skewed(skew):
        create_actors(graph, ["a0"])
        assert poll(overlap=OVERLAP).enqueued == 1
        changed = graph.get_entities([("ThreatActor", "a0")])[("ThreatActor", "a0")].updated_at
        wait_until(lambda: (graph.server_time() - changed).total_seconds() >= WAIT, "Neo4j's clock to move on")
        shortest = (graph.server_time() - changed).total_seconds()
        assert apply_events(claim_batch("faults-worker", 10)).upserted == 1
        longest = (graph.server_time() - changed).total_seconds()
        lag = SyncEvent.objects.get(uid="a0").lag_seconds
        assert shortest - SLACK <= lag <= longest + SLACK, (shortest, lag, longest)

        with graph.driver.session(database=graph.database) as session:
            slow = session.begin_transaction()
            slow.run("CREATE (:ThreatActor {uid: 'slow', name: 'Slow', description: 'committed late', "
                     "version: 1, updated_at: datetime()})").consume()
            cypher(graph, "CREATE (:ThreatActor {uid: 'quick', name: 'Quick', description: 'committed first'})")
            first = poll(overlap=OVERLAP)
            slow.commit()
        assert first.enqueued == 1
        assert poll(overlap=OVERLAP).enqueued == 1
        assert set(SyncEvent.objects.values_list("uid", flat=True)) == {"a0", "quick", "slow"}
        settle(poll=False)
    assert_index_matches_graph(graph, vectors)
