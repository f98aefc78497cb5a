"""CISA Known Exploited Vulnerabilities (KEV) feed: validation and import into the graph.

The feed (https://www.cisa.gov/known-exploited-vulnerabilities-catalog, JSON flavour) is one object:
`title`, `catalogVersion`, `dateReleased`, `count` and `vulnerabilities`, a list of entries with
`cveID`, `vendorProject`, `product`, `vulnerabilityName`, `dateAdded`, `shortDescription`,
`requiredAction`, `dueDate`, `knownRansomwareCampaignUse`, `notes` and `cwes`.

CISA republishes the whole catalogue (well over a thousand entries) for every 20-50 daily additions,
so an import must be cheap when almost nothing changed: entries whose graph nodes already hold the
same content are counted as unchanged and not written, which keeps their version — and therefore
the sync queue — untouched. A bad entry never sinks the file: it is reported with its position and
the reason, and the others are imported. Only a file that is not a feed at all is one error.

Each valid entry becomes a `KEV` node and a `Vulnerability` node, both with uid = cveID, linked
`(KEV)-[:LISTS]->(Vulnerability)`. A Vulnerability node that another source already wrote is
left as it is (the catalogue is authoritative for KEV nodes only). Entity writes go through an injectable `write` callable with the
signature of `GraphStore.write_entity`, so the KEV import can be routed through the sync write path
(dual-write for KEV) without changing this module — or through a batched `write_many`
(`write_through_sync_many`, what `manage.py import_kev` uses): KEV_BATCH entries at a time share
one graph transaction per label, one embedding call and one vector write, while each entry's saga
is still committed or compensated on its own and each failure is reported against its entry.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sync import writes
from sync.stores import graph_store
from sync.stores.base import Entity, Metadata, PermanentStoreError, RetryableStoreError, StoreError

KEV_SOURCE = "cisa-kev"
# The catalogue is CISA's own curated statement of exploitation: nothing in it is a guess.
KEV_CONFIDENCE = 1.0
LISTS = "LISTS"

# A real feed is ~1.5 MB; anything far beyond that is not a KEV feed and would only exhaust memory.
MAX_FEED_BYTES = 64 * 1024 * 1024

CVE_ID = re.compile(r"CVE-\d{4}-\d{4,}")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Tab, newline and carriage return are ordinary in prose; other control characters are corruption.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
RANSOMWARE_USE = ("Known", "Unknown")

# Upper bounds well above anything CISA has published, so that only corrupt or hostile entries
# (megabyte descriptions, thousands of CWEs) are refused before they bloat nodes and embeddings.
TEXT_LIMITS: dict[str, int] = {
    "cveID": 32,
    "vendorProject": 200,
    "product": 300,
    "vulnerabilityName": 500,
    "shortDescription": 5000,
    "requiredAction": 2000,
    "notes": 8000,
}
MAX_CWES = 50
MAX_CWE_LENGTH = 64

REQUIRED_TEXT = ("cveID", "vendorProject", "product", "vulnerabilityName", "dateAdded",
                 "shortDescription", "requiredAction", "dueDate", "knownRansomwareCampaignUse")

WriteEntity = Callable[..., tuple[Entity | None, Entity]]
"""`write(label, uid, properties, *, source=..., confidence=...) -> (previous, current)`, i.e.
`GraphStore.write_entity` or anything that honours its contract (the sync write path)."""

WriteMany = Callable[..., list[tuple[Entity | None, Entity] | Exception]]
"""`write_many(label, [(uid, properties), ...], *, source=..., confidence=...)` -> for each item, in
order, (previous, current) or the exception that refused that item alone: the batched `write`
(`write_through_sync_many`, the sync engine's batched write path)."""

KEV_BATCH = 500
"""Entries a batched import writes together: one graph transaction per label, one embedding call
and one vector write per batch (about 13 s of embedding on two CPU cores), each entry still
committed or compensated on its own. The model sorts a call's texts by length to pad them least,
so a larger call embeds faster: a whole 1,400-entry catalogue embedded at 1.01x the raw rate in
calls of 500 and at 0.78x in calls of 100, for an import at 0.885x and 0.674x of it in all
(`bench/kev_import.py`). A day's delta (20-50 entries) is one call either way."""


class KevGraph(Protocol):
    """What the import needs from the graph store (sync.stores.neo4j_graph.Neo4jGraphStore)."""

    def get_entities(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Entity]: ...

    def write_entity(self, label: str, uid: str, properties: Metadata, *,
                     expected_version: int | None = None, source: str | None = None,
                     confidence: float | None = None) -> tuple[Entity | None, Entity]: ...

    def import_relationships(self, rel_type: str,
                             rows: Sequence[tuple[str, str, str, str, Metadata]]) -> int: ...


class KevFeedError(ValueError):
    """The file as a whole is unusable: not JSON, not an object, no `vulnerabilities` list."""


@dataclass(frozen=True)
class EntryError:
    """Why one entry was not imported; `index` is its position in `vulnerabilities` (0-based)."""

    index: int
    cve_id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"vulnerabilities[{self.index}]"
        if self.cve_id:
            where += f" ({self.cve_id})"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class KevEntry:
    """One validated catalogue entry, whitespace-trimmed, in the feed's own vocabulary."""

    index: int
    cve_id: str
    vendor_project: str
    product: str
    vulnerability_name: str
    date_added: str
    short_description: str
    required_action: str
    due_date: str
    known_ransomware_campaign_use: str
    notes: str
    cwes: tuple[str, ...]

    @property
    def severity(self) -> str:
        # Every KEV entry is exploited in the wild; ransomware use is what makes it an emergency.
        return "critical" if self.known_ransomware_campaign_use == "Known" else "high"

    def kev_properties(self) -> Metadata:
        return {
            "cve_id": self.cve_id,
            "vendor_project": self.vendor_project,
            "product": self.product,
            "vulnerability_name": self.vulnerability_name,
            "date_added": self.date_added,
            "short_description": self.short_description,
            "required_action": self.required_action,
            "due_date": self.due_date,
            "known_ransomware_campaign_use": self.known_ransomware_campaign_use,
            "notes": self.notes,
            "cwes": list(self.cwes),
            "severity": self.severity,
        }

    def vulnerability_properties(self) -> Metadata:
        # The feed carries no CVSS score or publication date; those are left to a CVE source
        # (NVD) rather than invented here. Severity is the KEV-derived one: exploited in the wild.
        return {
            "cve_id": self.cve_id,
            "title": self.vulnerability_name,
            "description": self.short_description,
            "cwes": list(self.cwes),
            "severity": self.severity,
        }


@dataclass
class KevFeed:
    """A parsed feed: its header, the valid entries, and the entries refused with reasons."""

    title: str | None
    catalog_version: str | None
    date_released: str | None
    total: int
    entries: list[KevEntry]
    errors: list[EntryError]
    warnings: list[str]


@dataclass
class KevImportReport:
    """What one import did. `skipped` counts malformed entries, `failed` valid ones the store refused."""

    catalog_version: str | None = None
    date_released: str | None = None
    total: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    linked: int = 0
    unlinked: int = 0  # LISTS links not written: an end node vanished (deleted meanwhile)
    errors: list[EntryError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.unlinked

    def summary(self) -> str:
        head = f"KEV catalog {self.catalog_version or '(no version)'}"
        if self.date_released:
            head += f" released {self.date_released}"
        return (f"{head}: {self.total} entries — {self.imported} imported, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.skipped} skipped, {self.failed} failed; "
                f"{self.linked} KEV→Vulnerability links" + (f", {self.unlinked} missing" if self.unlinked else ""))


# --- parsing and validation -------------------------------------------------------------------


def parse_kev_feed(data: str | bytes | Mapping[str, Any]) -> KevFeed:
    """Validate a feed given as JSON text or as an already decoded object.

    Raises KevFeedError when the file is unusable; per-entry problems land in `KevFeed.errors`.
    """
    if isinstance(data, str | bytes):
        if len(data) > MAX_FEED_BYTES:
            raise KevFeedError(f"the file is {len(data)} bytes, more than the {MAX_FEED_BYTES} a KEV feed can be")
        if isinstance(data, bytes):
            # CISA publishes UTF-8; json.loads would guess UTF-16/32 from the first bytes and turn
            # a corrupt file into a misleading syntax error.
            try:
                data = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise KevFeedError(f"the file is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise KevFeedError(f"the file is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(data, Mapping):
        raise KevFeedError(f"the feed must be a JSON object, got {_type_name(data)}")
    if "vulnerabilities" not in data:
        raise KevFeedError("the feed has no 'vulnerabilities' list")
    raw_entries = data["vulnerabilities"]
    if not isinstance(raw_entries, list):
        raise KevFeedError(f"'vulnerabilities' must be a list, got {_type_name(raw_entries)}")

    warnings: list[str] = []
    header: dict[str, str | None] = {}
    for key in ("title", "catalogVersion", "dateReleased"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            warnings.append(f"header field {key!r} should be a string, got {_type_name(value)}; ignored")
            value = None
        header[key] = value
    count = data.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count != len(raw_entries)):
        warnings.append(f"header says count={count!r} but the feed lists {len(raw_entries)} entries")

    entries: list[KevEntry] = []
    errors: list[EntryError] = []
    first_seen: dict[str, int] = {}
    for index, raw in enumerate(raw_entries):
        entry, reasons = validate_entry(index, raw)
        if entry is not None and entry.cve_id in first_seen:
            reasons = [f"duplicate of vulnerabilities[{first_seen[entry.cve_id]}]"]
            entry = None
        if entry is None:
            errors.append(EntryError(index, _cve_hint(raw), "; ".join(reasons)))
            continue
        first_seen[entry.cve_id] = index
        entries.append(entry)
    return KevFeed(
        title=header["title"], catalog_version=header["catalogVersion"],
        date_released=header["dateReleased"], total=len(raw_entries),
        entries=entries, errors=errors, warnings=warnings,
    )


def validate_entry(index: int, raw: object) -> tuple[KevEntry | None, list[str]]:
    """Check one entry; returns the entry or None with every reason it was refused."""
    if not isinstance(raw, Mapping):
        return None, [f"entry must be an object, got {_type_name(raw)}"]
    reasons: list[str] = []
    text: dict[str, str] = {}
    for key in (*REQUIRED_TEXT, "notes"):
        value = raw.get(key)
        if value is None:
            # Older catalogue snapshots omit `notes`; every other field has always been present.
            if key == "notes":
                text[key] = ""
            else:
                reasons.append(f"{key} is missing")
            continue
        if not isinstance(value, str):
            reasons.append(f"{key} must be a string, got {_type_name(value)}")
            continue
        value = value.strip()
        if not value and key != "notes":
            reasons.append(f"{key} is empty")
            continue
        limit = TEXT_LIMITS.get(key)
        if limit is not None and len(value) > limit:
            reasons.append(f"{key} is {len(value)} characters, more than {limit}")
            continue
        if CONTROL_CHARS.search(value):
            reasons.append(f"{key} contains control characters")
            continue
        text[key] = value

    cve_id = text.get("cveID")
    if cve_id is not None and not CVE_ID.fullmatch(cve_id):
        reasons.append(f"cveID {_clip(cve_id)!r} does not look like CVE-YYYY-NNNN")
    for key in ("dateAdded", "dueDate"):
        value = text.get(key)
        if value is not None and not _is_iso_date(value):
            reasons.append(f"{key} {_clip(value)!r} is not a date (YYYY-MM-DD)")
    ransomware = text.get("knownRansomwareCampaignUse")
    if ransomware is not None and ransomware not in RANSOMWARE_USE:
        reasons.append(f"knownRansomwareCampaignUse {_clip(ransomware)!r} is not 'Known' or 'Unknown'")
    cwes, cwe_reason = _validate_cwes(raw.get("cwes"))
    if cwe_reason:
        reasons.append(cwe_reason)

    if reasons:
        return None, reasons
    return KevEntry(
        index=index,
        cve_id=text["cveID"],
        vendor_project=text["vendorProject"],
        product=text["product"],
        vulnerability_name=text["vulnerabilityName"],
        date_added=text["dateAdded"],
        short_description=text["shortDescription"],
        required_action=text["requiredAction"],
        due_date=text["dueDate"],
        known_ransomware_campaign_use=text["knownRansomwareCampaignUse"],
        notes=text["notes"],
        cwes=cwes,
    ), []


def _validate_cwes(value: object) -> tuple[tuple[str, ...], str | None]:
    # `cwes` was added to the feed in 2024; snapshots from before it are still valid entries.
    if value is None:
        return (), None
    if not isinstance(value, list):
        return (), f"cwes must be a list of strings, got {_type_name(value)}"
    if len(value) > MAX_CWES:
        return (), f"cwes lists {len(value)} items, more than {MAX_CWES}"
    cwes: list[str] = []
    for item in value:
        if not isinstance(item, str):
            return (), f"cwes must be a list of non-empty strings, found {_type_name(item)}"
        if not item.strip():
            return (), "cwes must be a list of non-empty strings, found an empty string"
        item = item.strip()
        if len(item) > MAX_CWE_LENGTH or CONTROL_CHARS.search(item):
            return (), f"cwes item {_clip(item)!r} is not a CWE identifier"
        if item not in cwes:
            cwes.append(item)
    return tuple(cwes), None


def _is_iso_date(value: str) -> bool:
    if not ISO_DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _cve_hint(raw: object) -> str | None:
    """The entry's cveID for error messages, even when the entry is otherwise broken."""
    if isinstance(raw, Mapping):
        value = raw.get("cveID")
        if isinstance(value, str) and value.strip():
            return _clip(value.strip())
    return None


def _clip(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


# --- import -----------------------------------------------------------------------------------


def import_kev_feed(data: str | bytes | Mapping[str, Any], *, graph: KevGraph | None = None,
                    write: WriteEntity | None = None, write_many: WriteMany | None = None,
                    batch: int = KEV_BATCH) -> KevImportReport:
    """Validate a feed and bring its entries into the graph; returns what was done.

    `graph` reads current state and links nodes (default: the process's graph store); `write`
    writes one entity (default: `graph.write_entity`), or `write_many` writes up to `batch`
    entries' entities of one label at once (all KEV nodes of a batch, then their Vulnerability
    nodes). Raises KevFeedError for an unusable file. A write refused for one entry (a
    non-retryable StoreError; with `write_many`, any error of that entry alone) is recorded against
    that entry; a retryable StoreError propagates — with `write_many`, when every entry of a batch
    failed with one — since an unreachable store fails every remaining entry too and a re-run is
    cheap (unchanged entries are not rewritten).
    """
    feed = parse_kev_feed(data)
    if graph is None:
        graph = graph_store()
    if write is None:
        write = graph.write_entity
    report = KevImportReport(
        catalog_version=feed.catalog_version, date_released=feed.date_released, total=feed.total,
        skipped=len(feed.errors), errors=list(feed.errors), warnings=list(feed.warnings),
    )
    current = _current_entities(graph, feed.entries)
    present: list[KevEntry] = []
    changed: list[tuple[KevEntry, dict[str, Metadata]]] = []
    for entry in feed.entries:
        wanted = {"KEV": entry.kev_properties(), "Vulnerability": entry.vulnerability_properties()}
        stale = {label: props for label, props in wanted.items()
                 if _needs_write(label, current.get((label, entry.cve_id)), props)}
        if not stale:
            report.unchanged += 1
            present.append(entry)
            continue
        changed.append((entry, stale))
    if write_many is not None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        for start in range(0, len(changed), batch):
            present += _write_batch(changed[start:start + batch], write_many, report)
    else:
        for entry, wanted in changed:
            stale = list(wanted)
            created = False
            try:
                for label in stale:
                    previous, _ = write(label, entry.cve_id, wanted[label],
                                        source=KEV_SOURCE, confidence=KEV_CONFIDENCE)
                    created = created or (label == "KEV" and previous is None)
            except StoreError as exc:
                if exc.retryable:
                    raise
                report.failed += 1
                report.errors.append(EntryError(entry.index, entry.cve_id, f"the graph refused the write: {exc}"))
                continue
            if created:
                report.imported += 1
            else:
                report.updated += 1
            present.append(entry)
    if present:
        report.linked = graph.import_relationships(LISTS, list(lists_relationships(present)))
        report.unlinked = len(present) - report.linked
        if report.unlinked:
            report.warnings.append(
                f"{report.unlinked} of {len(present)} KEV→Vulnerability links were not written because a "
                "node was deleted during the import; run the import again to restore them")
    return report


def _write_batch(batch: list[tuple[KevEntry, dict[str, Metadata]]], write_many: WriteMany,
                 report: KevImportReport) -> list[KevEntry]:
    """Write one batch's stale nodes, KEV first and then the Vulnerability of each entry whose KEV
    stands; record each entry's outcome in `report`. Returns the entries now in the graph."""
    created: set[str] = set()
    failed: dict[str, Exception] = {}
    for label in ("KEV", "Vulnerability"):
        todo = [(entry, stale[label]) for entry, stale in batch if label in stale and entry.cve_id not in failed]
        if not todo:
            continue
        results = write_many(label, [(entry.cve_id, props) for entry, props in todo],
                             source=KEV_SOURCE, confidence=KEV_CONFIDENCE)
        errors = [result for result in results if isinstance(result, Exception)]
        if errors and len(errors) == len(todo) and all(getattr(e, "retryable", False) for e in errors):
            raise errors[0]  # the store is unreachable: the rest would fail alike, and a re-run is cheap
        for (entry, _), result in zip(todo, results, strict=True):
            if isinstance(result, Exception):
                failed[entry.cve_id] = result
            elif label == "KEV" and result[0] is None:
                created.add(entry.cve_id)
    present = []
    for entry, _ in batch:
        error = failed.get(entry.cve_id)
        if error is not None:
            report.failed += 1
            report.errors.append(EntryError(entry.index, entry.cve_id, f"not imported: {error}"))
        else:
            present.append(entry)
            if entry.cve_id in created:
                report.imported += 1
            else:
                report.updated += 1
    return present


def write_through_sync(label: str, uid: str, properties: Metadata, *, source: str,
                       confidence: float | None = None, defer_vectors: bool = False) -> tuple[Entity | None, Entity]:
    """A `write` for `import_kev_feed` that goes through the sync engine (sync.writes).

    The conflict rules apply as to any write (a KEV severity another source raised stays raised,
    CISA's score wins on a Vulnerability, an analyst is asked where the table says so). KEV
    entries are then dual-written (embedded and upserted in the call, undone if the vector
    write fails) — or queued with `defer_vectors` — and Vulnerability nodes queued, per
    sync.policy. A saga that failed for one entry
    becomes that entry's error; one that failed because the vector store is unreachable aborts the
    run like any retryable store error, rather than failing every remaining entry the same way.
    """
    try:
        outcome = writes.write_entity(label, uid, properties, source=source, confidence=confidence,
                                      actor="import_kev", defer_vectors=defer_vectors)
    except writes.SyncWriteError as exc:
        if isinstance(exc.__cause__, RetryableStoreError):
            raise RetryableStoreError(str(exc)) from exc
        raise PermanentStoreError(str(exc)) from exc
    return outcome.previous, outcome.entity


def write_through_sync_many(label: str, items: Sequence[tuple[str, Metadata]], *, source: str,
                            confidence: float | None = None,
                            defer_vectors: bool = False) -> list[tuple[Entity | None, Entity] | Exception]:
    """A `write_many` for `import_kev_feed` through the sync engine's batched write path
    (`sync.writes.write_entities`): what `write_through_sync` does for each entity, with one graph
    transaction, one embedding call and one vector write per batch. Each entry's saga ends on its
    own: a compensated entry comes back as a RetryableStoreError (the vector store failed
    transiently) or a PermanentStoreError (it refused the entry), the others as written."""
    results: list[tuple[Entity | None, Entity] | Exception] = []
    for outcome in writes.write_entities(label, list(items), source=source, confidence=confidence,
                                         actor="import_kev", defer_vectors=defer_vectors):
        if isinstance(outcome, writes.SyncWriteError):
            kind = RetryableStoreError if isinstance(outcome.__cause__, RetryableStoreError) else PermanentStoreError
            error = kind(str(outcome))
            error.__cause__ = outcome
            results.append(error)
        elif isinstance(outcome, Exception):
            results.append(outcome)
        else:
            results.append((outcome.previous, outcome.entity))
    return results


def lists_relationships(entries: Iterable[KevEntry]) -> Iterable[tuple[str, str, str, str, Metadata]]:
    """`(KEV)-[:LISTS]->(Vulnerability)` rows in the shape `import_relationships` takes."""
    for entry in entries:
        yield ("KEV", entry.cve_id, "Vulnerability", entry.cve_id, {})


def _current_entities(graph: KevGraph, entries: Sequence[KevEntry],
                      batch: int = 1000) -> dict[tuple[str, str], Entity]:
    keys = [(label, entry.cve_id) for entry in entries for label in ("KEV", "Vulnerability")]
    found: dict[tuple[str, str], Entity] = {}
    for start in range(0, len(keys), batch):
        found.update(graph.get_entities(keys[start:start + batch]))
    return found


def _needs_write(label: str, entity: Entity | None, wanted: Metadata) -> bool:
    if entity is None:
        return True
    if label == "Vulnerability" and entity.properties.get("source") != KEV_SOURCE:
        # The catalogue owns its KEV nodes but not the CVE record: once a CVE source (NVD, an
        # analyst) has written the Vulnerability, its richer content stays, instead of the two
        # imports overwriting each other every day.
        return False
    return not _holds(entity, wanted)


def _holds(entity: Entity | None, wanted: Metadata) -> bool:
    """True when the node already carries exactly this content from this source."""
    if entity is None:
        return False
    props = entity.properties
    if props.get("source") != KEV_SOURCE or props.get("confidence") != KEV_CONFIDENCE:
        return False
    return all(_same(props.get(key), value) for key, value in wanted.items())


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(wanted, list):
        return isinstance(stored, list | tuple) and list(stored) == wanted
    return stored == wanted
