"""Semantic search over the vector index, each hit joined back to the graph: the query embedded
with the model that embedded the index (sync.embedding), top-k by score, optionally one label,
and every hit marked by how it stands against the live graph node:

- **in_sync** — the vector was built from the node's current version;
- **stale** — the graph has moved on (both versions shown);
- **vector_ahead** — the vector carries a newer version than the graph (a divergence reconciliation
  sends to a human);
- **missing_from_graph** — the node is gone (reconciliation deletes such orphans);
- **excluded** — the policy says the label must never be in the index: also raised as drift
  (`consistency_violations_total{kind="policy_violation"}` and a repair queued, as reconciliation
  would).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sync import ids, queue
from sync.embedding import get_embedder
from sync.models import Priority
from sync.observe.counters import CONSISTENCY_VIOLATIONS
from sync.policy import WITHHELD, policy_for, shown_value
from sync.stores import graph_store, vector_store
from sync.stores.base import Entity, QueryMatch, StoreError

log = logging.getLogger(__name__)
MAX_TOP_K = 50
MAX_QUERY_CHARS = 1_000


class BadQuery(ValueError):
    """A query the search cannot run; the message says why."""


@dataclass(frozen=True)
class Hit:
    vector_id: str
    label: str
    uid: str
    chunk: int | None
    score: float
    vector_version: int | None
    graph_version: int | None
    snippet: str
    state: str  # in_sync, stale, vector_ahead, missing_from_graph, excluded, unknown
    name: str = ""


@dataclass
class Results:
    query: str
    label: str
    top_k: int
    hits: list[Hit] = field(default_factory=list)
    embed_seconds: float = 0.0
    query_seconds: float = 0.0
    error: str = ""  # the vector store did not answer
    graph_error: str = ""  # Neo4j did not answer: hits shown, not joined

    @property
    def states(self) -> dict[str, int]:
        """How many hits stand in each state."""
        found: dict[str, int] = {}
        for hit in self.hits:
            found[hit.state] = found.get(hit.state, 0) + 1
        return found


def embed_query(text: str) -> list[float]:
    """One text, embedded on one thread (sync.embedding.Embedder.encode)."""
    return get_embedder().encode([text], threads=1)[0].tolist()


def _key(match: QueryMatch) -> tuple[str, str, int | None]:
    meta = match.metadata or {}
    label, uid = meta.get("label"), meta.get("uid")
    # A one-chunk text's vector id has no "#n": no chunk number worth showing.
    chunk = meta.get("chunk") if isinstance(meta.get("chunk"), int) and "#" in match.id else None
    if isinstance(label, str) and isinstance(uid, str):
        return label, uid, chunk
    try:
        label, uid, chunk = ids.parse_vector_id(match.id)
    except ValueError:
        return "", "", None
    return label or "", uid or "", chunk


def _state(label: str, vector_version, entity: Entity | None) -> str:
    if not policy_for(label).synced:
        return "excluded"
    if entity is None:
        return "missing_from_graph"
    if not isinstance(vector_version, int) or vector_version < entity.version:
        return "stale"
    return "vector_ahead" if vector_version > entity.version else "in_sync"


def _name(label: str, properties: dict) -> str:
    """The hit's name (or title), where the label's policy lets a person read it."""
    key = "name" if properties.get("name") else "title"
    name = properties.get(key)
    return shown_value(label, key, name) if isinstance(name, str) else ""


def _raise_excluded(hits: list[Hit]) -> None:
    """A never-synced entity found in the index is drift: counted and repaired as reconciliation would."""
    excluded = {(h.label, h.uid) for h in hits if h.state == "excluded" and h.uid}
    for label, uid in sorted(excluded):
        CONSISTENCY_VIOLATIONS.labels("policy_violation").inc()
        log.error("consistency error: %s:%s is in the vector index, which the policy never syncs (found by search)",
                  label, uid)
    if excluded:
        # The worker reads the node, finds the label never synced and deletes its vectors.
        queue.enqueue_many([queue.Work(label=label, uid=uid, priority=Priority.HIGH, source="search")
                            for label, uid in sorted(excluded)])


def search(text: str, *, label: str = "", top_k: int = 10) -> Results:
    """The top_k entities nearest to `text` (best chunk each), joined to the graph."""
    text = text.strip()
    if not text:
        raise BadQuery("type something to search for")
    if len(text) > MAX_QUERY_CHARS:
        raise BadQuery(f"a query is at most {MAX_QUERY_CHARS} characters")
    if not 1 <= top_k <= MAX_TOP_K:
        raise BadQuery(f"top-k must be between 1 and {MAX_TOP_K}")
    results = Results(text, label, top_k)
    started = time.perf_counter()
    vector = embed_query(text)
    results.embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    try:
        # Long texts have several chunks: ask for more, keep the best chunk of each entity.
        matches = vector_store().query(vector, top_k=min(top_k * 3, 150), filter={"label": label} if label else None)
    except StoreError as exc:
        results.error = f"The vector store did not answer: {exc}"
        return results
    results.query_seconds = time.perf_counter() - started
    best: dict[tuple[str, str], tuple[QueryMatch, int | None]] = {}
    for match in matches:
        hit_label, uid, chunk = _key(match)
        if (hit_label, uid) not in best:
            best[(hit_label, uid)] = (match, chunk)
    chosen = list(best.items())[:top_k]
    entities: dict[tuple[str, str], Entity] = {}
    keys = [key for key, _ in chosen if key[1] and ids.is_label(key[0])]
    try:
        entities = graph_store().get_entities(keys) if keys else {}
    except StoreError as exc:
        results.graph_error = f"Neo4j did not answer, so hits are not joined to the graph: {exc}"
    for (hit_label, uid), (match, chunk) in chosen:
        meta = match.metadata or {}
        entity = entities.get((hit_label, uid))
        version = meta.get("version") if isinstance(meta.get("version"), int) else None
        state = "unknown" if results.graph_error and policy_for(hit_label).synced else _state(hit_label, version, entity)
        # What a person may read of a hit: its label's display allow-list (a never-synced label's
        # vectors are drift; their text and names are withheld, as on the entity page).
        snippet = str(meta.get("text", ""))[:400] if policy_for(hit_label).synced else WITHHELD
        results.hits.append(Hit(match.id, hit_label, uid, chunk, float(match.score), version,
                                entity.version if entity else None, snippet, state,
                                _name(hit_label, entity.properties if entity else meta)))
    _raise_excluded(results.hits)
    return results
