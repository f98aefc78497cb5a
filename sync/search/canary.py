"""The search canary: every few minutes (a django-q2 schedule, `sync.tasks.search_canary`) search
for a few recently synced HIGH entities by their own text — the text the policy builds from the
graph node, embedded by the index's model — and record whether each came back in the top k.

A miss means search is not serving what the sync says it wrote: it opens the `search_canary`
warning alert (sync.observe.alerting) and is a marker on the overview's charts.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from sync import ids
from sync.models import Priority, SyncRecord
from sync.observe.models import CanaryCheck
from sync.policy import build_text, policy_for, synced_labels
from sync.search.query import embed_query
from sync.stores import graph_store, vector_store
from sync.stores.base import StoreError

PROBES = 3  # entities searched for each round
TOP_K = 5
KEEP = timedelta(days=30)


def high_labels() -> list[str]:
    return [label for label in synced_labels() if policy_for(label).priority == Priority.HIGH]


def run(now=None, probes: int = PROBES, top_k: int = TOP_K) -> list[CanaryCheck]:
    """One round: the `probes` most recently synced HIGH entities, each searched for."""
    now = now or timezone.now()
    records = list(SyncRecord.objects.filter(label__in=high_labels(), status=SyncRecord.Status.IN_SYNC)
                   .exclude(synced_at=None).order_by("-synced_at").values_list("label", "uid")[:probes])
    if not records:
        return []
    checks = []
    try:
        entities = graph_store().get_entities(records)
    except StoreError as exc:
        checks = [CanaryCheck(at=now, label=label, uid=uid, top_k=top_k, error=f"Neo4j did not answer: {exc}")
                  for label, uid in records]
        CanaryCheck.objects.bulk_create(checks)
        return checks
    for label, uid in records:
        entity = entities.get((label, uid))
        if entity is None:
            continue  # deleted since it synced: nothing to search for
        check = CanaryCheck(at=now, label=label, uid=uid, version=entity.version, top_k=top_k)
        try:
            matches = vector_store().query(embed_query(build_text(policy_for(label), entity.properties)), top_k=top_k)
        except StoreError as exc:
            check.error = f"The vector store did not answer: {exc}"
        else:
            for rank, match in enumerate(matches, start=1):
                if ids.belongs_to_entity(match.id, label, uid):
                    check.found, check.rank, check.score = True, rank, float(match.score)
                    break
        checks.append(check)
    CanaryCheck.objects.bulk_create(checks)
    CanaryCheck.objects.filter(at__lt=now - KEEP).delete()
    return checks
