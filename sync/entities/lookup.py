"""Entities as analysts look them up: the list of sync records (search, filters, sort, bounded
pages) and one entity as each store holds it — the Neo4j node beside its vector copy, chunk by
chunk, with what differs named — plus its sync record and graph neighbours.

Both live stores are read here (through sync.stores), never trusted from the record alone; a store
that does not answer is reported on the view, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from django.db.models import Q

from sync import ids
from sync.models import Priority, SyncRecord
from sync.policy import (
    ENGINE_KEYS,
    WITHHELD,
    LabelPolicy,
    allowed_metadata,
    may_show,
    policy_for,
    shown_properties,
    shown_value,
    synced_labels,
    text_and_hash,
)
from sync.stores import graph_store, vector_store
from sync.stores.base import Entity, Metadata, StoreError

PAGE_SIZE = 50
MAX_PAGE = 200  # bounded offsets: 10,000 rows deep at most; narrow the filter to go further
NAME_MATCHES = 200  # graph nodes whose name matches the search, at most
NAME_MIN_CHARS = 3  # shorter searches match uids only (a name scan reads every node of the labels)
NEIGHBOURS = 50
SORTS = {  # what the list sorts by; each leads with an indexed column or the (label, uid) key
    # No tie-break column after synced_at: its index already orders ties (by row id in SQLite's,
    # by heap position in PostgreSQL's), and one more column made the database sort every row.
    "synced": ("synced_at",),
    "entity": ("label", "uid"),
    "status": ("status", "label", "uid"),
    "uid": ("uid", "label"),
    "version": ("graph_version", "id"),
}
DEFAULT_SORT = "-synced"
LIST_FIELDS = ("id", "label", "uid", "graph_version", "vector_version", "status", "chunk_count", "changed_at",
               "synced_at", "last_error")


class BadEntityFilter(ValueError):
    """A filter the entities list cannot apply; the message says which and why."""


@dataclass(frozen=True)
class EntityFilter:
    text: str = ""  # uid or name contains
    label: str = ""
    status: str = ""
    priority: str = ""  # the policy's lane: high, medium, low
    sort: str = DEFAULT_SORT
    page: int = 1

    @property
    def filtered(self) -> bool:
        return bool(self.text or self.label or self.status or self.priority)


def parse_filter(data) -> EntityFilter:
    """An EntityFilter from a query string; BadEntityFilter for a value the list cannot take."""
    label = data.get("label", "").strip()
    if label and not ids.is_label(label):
        raise BadEntityFilter(f"label must be a graph label such as ThreatActor, got {label[:40]!r}")
    status = data.get("status", "").strip()
    if status and status not in SyncRecord.Status.values:
        raise BadEntityFilter(f"status must be one of {', '.join(SyncRecord.Status.values)}, got {status[:40]!r}")
    priority = data.get("priority", "").strip()
    if priority and priority not in Priority.labels:
        raise BadEntityFilter(f"priority must be one of {', '.join(Priority.labels)}, got {priority[:40]!r}")
    sort = data.get("sort", "").strip() or DEFAULT_SORT
    if sort.lstrip("-") not in SORTS:
        raise BadEntityFilter(f"sort must be one of {', '.join(SORTS)} (with - for descending), got {sort[:40]!r}")
    raw_page = data.get("page", "").strip() or "1"
    if not raw_page.isdigit() or not 1 <= int(raw_page) <= MAX_PAGE:
        raise BadEntityFilter(f"page must be a number from 1 to {MAX_PAGE}; narrow the filter to see further")
    return EntityFilter(text=data.get("q", "").strip()[:200], label=label, status=status, priority=priority,
                        sort=sort, page=int(raw_page))


@dataclass
class EntityPage:
    records: list[SyncRecord]
    total: int
    page: int
    pages: int
    name_matches: int = 0  # graph nodes found by name
    name_error: str = ""  # why names were not searched (Neo4j did not answer)


def labels_of(priority: str) -> list[str]:
    return [label for label in synced_labels() if policy_for(label).priority.label == priority]


def list_entities(selection: EntityFilter) -> EntityPage:
    """One page of sync records matching the filter: counted, sorted, at most PAGE_SIZE rows."""
    rows = SyncRecord.objects.only(*LIST_FIELDS)
    if selection.label:
        rows = rows.filter(label=selection.label)
    if selection.status:
        rows = rows.filter(status=selection.status)
    if selection.priority:
        rows = rows.filter(label__in=labels_of(selection.priority))
    name_matches, name_error = 0, ""
    if selection.text:
        wanted = Q(uid__icontains=selection.text)
        labels = [selection.label] if selection.label else list(synced_labels())
        try:
            keys = (graph_store().find_by_name(labels, selection.text, NAME_MATCHES)
                    if len(selection.text) >= NAME_MIN_CHARS else None)
        except StoreError as exc:
            keys, name_error = None, f"names were not searched, only uids: {exc}"
        if keys is None and not name_error:
            name_error = f"names are searched from {NAME_MIN_CHARS} characters on; these are uid matches"
        if keys is not None:
            name_matches = len(keys)
            by_label: dict[str, list[str]] = {}
            for label, uid in keys:
                by_label.setdefault(label, []).append(uid)
            for label, uids in by_label.items():
                wanted |= Q(label=label, uid__in=uids)
        rows = rows.filter(wanted)
    descending = selection.sort.startswith("-")
    order = [f"-{name}" if descending else name for name in SORTS[selection.sort.lstrip("-")]]
    total = rows.count()
    pages = max(1, min(-(-total // PAGE_SIZE), MAX_PAGE))
    page = min(selection.page, pages)
    start = (page - 1) * PAGE_SIZE
    return EntityPage(list(rows.order_by(*order)[start:start + PAGE_SIZE]), total, page, pages,
                      name_matches, name_error)


# --- one entity, both sides ------------------------------------------------------------------

MISSING = object()  # a field the vector copy does not carry


@dataclass(frozen=True)
class FieldComparison:
    """One property of an entity as the graph holds it beside what its vector copy carries."""

    name: str
    role: str  # identity, embedded, metadata, embedded+metadata, graph_only
    graph: Any  # the graph's value (None when the node lacks it)
    vector: Any = MISSING  # the value the vector copy carries (metadata), MISSING when none
    expected: Any = MISSING  # what the vector copy should carry, built from the graph by the policy
    withheld: bool = False  # outside the label's display allow-list: `graph` is WITHHELD
    differs: bool = False

    @property
    def in_vector(self) -> bool:
        return self.vector is not MISSING


@dataclass(frozen=True)
class ChunkView:
    vector_id: str
    chunk: int | None
    version: Any
    content_hash: str
    model: str
    text: str  # WITHHELD for a label the policy never syncs (its vectors should not exist)
    metadata: Metadata  # the fields it carries, those outside the display allow-list WITHHELD
    differences: tuple[str, ...] = ()  # what disagrees with the graph: version, content_hash, field names


@dataclass
class EntityView:
    label: str
    uid: str
    policy: LabelPolicy
    record: SyncRecord | None
    entity: Entity | None = None
    graph_error: str = ""
    chunks: list[ChunkView] = field(default_factory=list)
    vector_error: str = ""
    fields: list[FieldComparison] = field(default_factory=list)
    expected_hash: str = ""
    neighbours: list[Metadata] = field(default_factory=list)
    neighbours_error: str = ""
    findings: list[str] = field(default_factory=list)  # the differences, in words
    state: str = ""  # in_sync, stale, missing_vector, orphan_vector, policy_violation, excluded, unknown

    @property
    def differing(self) -> int:
        return sum(1 for row in self.fields if row.differs)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _vector_ids(label: str, uid: str, record: SyncRecord | None) -> list[str]:
    count = max(record.chunk_count if record else 0, 1)
    return [ids.vector_id(label, uid), *(ids.vector_id(label, uid, n) for n in range(count))]


def read_vectors(label: str, uid: str, record: SyncRecord | None) -> dict[str, Metadata]:
    """The entity's stored vectors' metadata: the ids its record knows, then the further chunks a
    stored chunk declares (the record is a hint, the store is the answer)."""
    store = vector_store()
    wanted = _vector_ids(label, uid, record)
    found = store.fetch_metadata(wanted)
    declared = max((m.get("chunks") for m in found.values() if isinstance(m.get("chunks"), int)), default=0)
    more = [ids.vector_id(label, uid, n) for n in range(declared)]
    more = [vid for vid in more if vid not in wanted]
    if more:
        found.update(store.fetch_metadata(more))
    return {vid: meta for vid, meta in found.items() if ids.belongs_to_entity(vid, label, uid)}


def _chunk_views(label: str, found: dict[str, Metadata], entity: Entity | None, expected: Metadata,
                 expected_hash: str, policy: LabelPolicy) -> list[ChunkView]:
    views = []
    for vid, meta in sorted(found.items(), key=lambda item: (item[1].get("chunk") or 0, item[0])):
        carried = {k: v for k, v in meta.items() if k not in ENGINE_KEYS}
        differences = []
        if entity is not None:
            if meta.get("version") != entity.version:
                differences.append("version")
            if meta.get("content_hash") != expected_hash:
                differences.append("content_hash")
            differences += [name for name in policy.metadata_fields
                            if not _same(expected.get(name), carried.get(name))]
        text = str(meta.get("text", "")) if policy.synced else WITHHELD
        views.append(ChunkView(vid, meta.get("chunk"), meta.get("version"), str(meta.get("content_hash", "")),
                               str(meta.get("model", "")), text, shown_properties(label, carried),
                               tuple(differences)))
    return views


def _field_rows(label: str, entity: Entity | None, policy: LabelPolicy, expected: Metadata,
                first: ChunkView | None) -> list[FieldComparison]:
    properties = dict(entity.properties) if entity else {}
    text_names = set(policy.text_property_names)
    rows = [FieldComparison(name, "identity", properties.get(name),
                     vector=first.version if first and name == "version" else MISSING,
                     differs=bool(first and name == "version" and "version" in first.differences))
            for name in ("uid", "version", "updated_at") if entity]
    names = [n for n in properties if n not in ("uid", "version", "updated_at")]
    names += [n for n in policy.metadata_fields if n not in properties]
    for name in sorted(set(names), key=lambda n: (n not in text_names and n not in policy.metadata_fields, n)):
        in_metadata = name in policy.metadata_fields
        role = ("embedded+metadata" if name in text_names and in_metadata else "embedded" if name in text_names
                else "metadata" if in_metadata else "graph_only")
        vector = first.metadata.get(name, MISSING) if first and in_metadata else MISSING
        withheld = not may_show(label, name)
        rows.append(FieldComparison(
            name, role, WITHHELD if withheld else properties.get(name), vector=vector,
            expected=expected.get(name, MISSING) if in_metadata else MISSING,
            withheld=withheld, differs=bool(first and in_metadata and name in first.differences),
        ))
    return rows


def _findings(view: EntityView) -> tuple[str, list[str]]:
    entity, chunks, policy = view.entity, view.chunks, view.policy
    if view.graph_error or view.vector_error:
        return "unknown", ["A store did not answer, so the two sides cannot be compared."]
    if not policy.synced:
        if chunks:
            return "policy_violation", [f"The policy says {view.label} is never synced, yet the vector index "
                                        f"holds {len(chunks)} vector(s) of it: a policy violation."]
        return "excluded", [f"{view.label} is never synced: it is kept in the graph only."]
    if entity is None:
        if chunks:
            return "orphan_vector", [f"The node is not in the graph, but {len(chunks)} vector(s) of it remain."]
        return "missing", ["Neither the graph nor the vector index holds this entity."]
    if not chunks:
        return "missing_vector", [f"The graph holds v{entity.version}, the vector index holds no copy."]
    words = []
    versions = sorted({c.version for c in chunks if isinstance(c.version, int)})
    if any("version" in c.differences for c in chunks):
        seen = ", ".join(f"v{v}" for v in versions) or "no version"
        behind = versions and max(versions) < entity.version
        words.append(f"The vector copy is {seen}, the graph is at v{entity.version}"
                     + (f": {entity.version - max(versions)} version(s) behind." if behind else "."))
    if any("content_hash" in c.differences for c in chunks):
        words.append("The embedded text differs from the text the graph's node makes now (content hash).")
    fields = sorted({d for c in chunks for d in c.differences if d not in ("version", "content_hash")})
    if fields:
        words.append(f"{len(fields)} metadata field(s) differ: {', '.join(fields)}.")
    if words:
        return "stale", words
    return "in_sync", [f"Version v{entity.version}, content hash and all {len(policy.metadata_fields)} "
                       f"metadata fields agree across {len(chunks)} chunk(s)."]


def entity_view(label: str, uid: str, *, neighbours: int = NEIGHBOURS) -> EntityView:
    """(label, uid) as the graph, the vector index and our record hold it, compared."""
    ids.check_key(label, uid)
    policy = policy_for(label)
    view = EntityView(label, uid, policy, SyncRecord.objects.filter(label=label, uid=uid).first())
    graph = graph_store()
    try:
        view.entity = graph.get_entities([(label, uid)]).get((label, uid))
    except StoreError as exc:
        view.graph_error = f"Neo4j did not answer: {exc}"
    expected: Metadata = {}
    if view.entity is not None and policy.synced:
        view.expected_hash = text_and_hash(policy, view.entity.properties)[1]
        expected = allowed_metadata(policy, view.entity.properties)
    try:
        found = read_vectors(label, uid, view.record)
    except StoreError as exc:
        view.vector_error = f"The vector store did not answer: {exc}"
        found = {}
    view.chunks = _chunk_views(label, found, view.entity, expected, view.expected_hash, policy)
    view.fields = _field_rows(label, view.entity, policy, expected, view.chunks[0] if view.chunks else None)
    if not view.graph_error and view.entity is not None:
        try:
            view.neighbours = [_shown_neighbour(n) for n in graph.neighbours(label, uid, neighbours)]
        except StoreError as exc:
            view.neighbours_error = f"Neo4j did not answer: {exc}"
    view.state, view.findings = _findings(view)
    if view.entity is not None:  # what a page reads of the node: the display allow-list only
        view.entity = replace(view.entity, properties=shown_properties(label, view.entity.properties))
    return view


def _shown_neighbour(neighbour: Metadata) -> Metadata:
    """A neighbour's name (or title, or CVE id) only where its own label's policy shows that field."""
    name = neighbour.get("name")
    if name is not None:
        name = shown_value(str(neighbour.get("label") or ""), neighbour.get("name_key"), name)
    return {**neighbour, "name": name}
