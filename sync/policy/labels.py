"""The per-label sync policy: which graph labels reach the vector index, how fast, and carrying what.

Selective sync is opt-in: a label is synced only if `POLICY` says so; `policy_for` answers
"never synced" for every other label, including labels nobody has heard of yet.

| label | synced | data type | priority | write mode | on vector failure |
|---|---|---|---|---|---|
| KEV | yes | kev | HIGH | dual_write | compensate |
| Vulnerability | yes | vulnerability | MEDIUM | write_through | queue |
| ThreatActor | yes | threat_actor | MEDIUM | write_through | queue |
| ThreatIntel | yes | threat_intel | MEDIUM | write_through | queue |
| Malware | yes | malware | MEDIUM | write_through | queue |
| Technique | yes | technique | MEDIUM | write_through | queue |
| Report | yes | document | LOW | write_through | queue |
| Artifact | yes | document | LOW | write_through | queue |
| Prospect | yes (strict allow-list) | prospect | LOW | write_through | queue |
| Contact, Deal, Account, _SyncTombstone, any other label | never | — | — | — | — |

Terms:
- *priority* orders queued work: HIGH before MEDIUM before LOW (`sync.models.Priority`, the one
  the queue stores: 0/1/2, which sorts that way; shown and typed as "high"/"medium"/"low").
- *write mode*: `dual_write` embeds and upserts inside the ingest call (the caller waits for both
  stores), as a saga; `write_through` writes Neo4j, enqueues a sync event and returns;
  `two_phase` prepares both sides inside the call (the graph write in an open transaction, the
  vector embedded and checked against the store's limits), commits the graph, then writes the
  vector, handing it to the queue if the store fails (docs/engine-api.md compares the three).
- *on vector failure*: for `dual_write`, `compensate` undoes the graph write and fails the call,
  `queue` keeps the graph write and hands the vector to the queue; `two_phase` always queues (its
  graph write is committed before the vector is written), `write_through` has nothing to fail.
- *text fields* make the embedded text, one labelled line per non-empty field in policy order
  ("Name: APT29\\nAliases: Cozy Bear, The Dukes\\nDescription: ..."); lists are joined with ", "
  and contribute their first 100 non-empty items.
- *metadata fields* are the allow-list of properties that may travel with the vectors. No
  property outside a policy's text fields reaches the text; none outside its allow-list reaches
  metadata.

PII and financial data never leave the graph. Besides the allow-lists, one guard
(`is_sensitive_key`) refuses any field whose name looks like personal or financial data (its words
include one of `SENSITIVE_KEY_TERMS`, e.g. email, phone, address, revenue, deal, budget, credit,
notes), so adding such a field to a text or metadata list fails when the policy is defined.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from django.db import models

from sync import ids
from sync.models import Priority


class WriteMode(models.TextChoices):
    DUAL_WRITE = "dual_write", "Sync dual-write"
    WRITE_THROUGH = "write_through", "Async write-through"
    TWO_PHASE = "two_phase", "Two-phase write"


class VectorFailure(models.TextChoices):
    COMPENSATE = "compensate", "Undo the graph write and fail"
    QUEUE = "queue", "Keep the graph write and queue the vector"


ENGINE_KEYS = ("label", "uid", "version", "content_hash", "model", "chunk", "chunks", "updated_at", "text")

# --- the PII / financial guard ---------------------------------------------------------------
SENSITIVE_KEY_TERMS = frozenset({
    "email", "phone", "address", "revenue", "salary", "deal", "budget", "iban", "credit", "ssn",
    "password", "token", "notes", "note", "contact", "secret", "passport", "bank",
})
# Distinctive enough to refuse inside a longer word too ("workemail", "telephone", "contactname").
_SENSITIVE_FRAGMENTS = ("email", "phone", "address", "revenue", "salary", "budget", "password",
                        "passport", "secret", "contact")


def _key_words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [word for word in re.split(r"[^a-z0-9]+", spaced.lower()) if word]


@functools.lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    """Does this property name look like personal or financial data? Then it never leaves the graph.

    Cached: it runs for every allow-listed field of every document (100k entities in a full
    reconciliation), over a handful of distinct names.
    """
    words = _key_words(key)
    for word in words:
        if word in SENSITIVE_KEY_TERMS:
            return True
        if word.endswith("s") and word[:-1] in SENSITIVE_KEY_TERMS:
            return True
        if word.endswith("es") and word[:-2] in SENSITIVE_KEY_TERMS:
            return True
    squashed = "".join(words)
    return any(fragment in squashed for fragment in _SENSITIVE_FRAGMENTS)


# --- the policy ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelPolicy:
    label: str
    synced: bool
    data_type: str
    priority: Priority = Priority.LOW
    write_mode: WriteMode = WriteMode.WRITE_THROUGH
    text_fields: tuple[tuple[str, str], ...] = ()  # (property, caption), in the order written
    metadata_fields: tuple[str, ...] = ()  # the allow-list
    on_vector_failure: VectorFailure = VectorFailure.QUEUE
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"policy label must be a non-empty str, got {self.label!r}")
        if not isinstance(self.priority, Priority) or not isinstance(self.write_mode, WriteMode) \
                or not isinstance(self.on_vector_failure, VectorFailure):
            raise ValueError(f"{self.label}: priority, write_mode and on_vector_failure take the enums")
        if not self.synced:
            if self.text_fields or self.metadata_fields:
                raise ValueError(f"{self.label} is never synced, so it cannot list text or metadata fields")
            return
        ids.check_label(self.label)
        if not self.text_fields:
            raise ValueError(f"{self.label} is synced but has no text fields to embed")
        for name in (*self.text_property_names, *self.metadata_fields):
            if is_sensitive_key(name):
                raise ValueError(
                    f"{self.label}.{name} looks like personal or financial data: such fields never "
                    "leave the graph (sync.policy.is_sensitive_key)"
                )
        for names, what in ((self.text_property_names, "text"), (self.metadata_fields, "metadata")):
            if len(set(names)) != len(names):
                raise ValueError(f"{self.label} lists a {what} field twice")
        clash = set(self.metadata_fields) & set(ENGINE_KEYS)
        if clash:
            raise ValueError(f"{self.label}: {sorted(clash)} are the engine's own metadata keys")
        if self.on_vector_failure == VectorFailure.COMPENSATE and self.write_mode != WriteMode.DUAL_WRITE:
            raise ValueError(f"{self.label}: only a dual_write can be compensated (a two_phase write "
                             "commits the graph before the vector is written, and queues the vector)")

    @property
    def text_property_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.text_fields)


_THREAT_ACTOR_TEXT = (
    ("name", "Name"), ("aliases", "Aliases"), ("description", "Description"), ("country", "Country"),
    ("motivation", "Motivation"), ("target_sectors", "Target sectors"),
    ("target_countries", "Target countries"),
)
_DOCUMENT_TEXT = (("title", "Title"), ("summary", "Summary"), ("body", "Body"), ("tags", "Tags"))

_POLICIES = (
    LabelPolicy(
        "KEV", True, "kev", Priority.HIGH, WriteMode.DUAL_WRITE,
        text_fields=(
            ("cve_id", "CVE"), ("vulnerability_name", "Vulnerability"), ("vendor_project", "Vendor/project"),
            ("product", "Product"), ("short_description", "Description"),
            ("required_action", "Required action"),
            ("known_ransomware_campaign_use", "Known ransomware campaign use"), ("cwes", "CWEs"),
        ),
        metadata_fields=(
            "cve_id", "vendor_project", "product", "vulnerability_name", "date_added", "due_date",
            "known_ransomware_campaign_use", "cwes", "severity",
        ),
        on_vector_failure=VectorFailure.COMPENSATE,
        description=(
            "CISA Known Exploited Vulnerabilities entry. Must be searchable within seconds: embedded "
            "and upserted in the ingest call; if the vector write fails the graph write is undone. "
            "CISA's free-text notes stay in the graph."
        ),
    ),
    LabelPolicy(
        "Vulnerability", True, "vulnerability", Priority.MEDIUM, WriteMode.WRITE_THROUGH,
        text_fields=(("cve_id", "CVE"), ("title", "Title"), ("description", "Description"), ("cwes", "CWEs")),
        metadata_fields=("cve_id", "title", "cvss_score", "severity", "cwes", "published"),
        description="A CVE record with its score and weaknesses.",
    ),
    LabelPolicy(
        "ThreatActor", True, "threat_actor", Priority.MEDIUM, WriteMode.WRITE_THROUGH,
        text_fields=_THREAT_ACTOR_TEXT,
        metadata_fields=(
            "name", "aliases", "country", "motivation", "target_sectors", "target_countries",
            "severity", "confidence", "first_seen", "mitre_id",
        ),
        description="A threat actor (group or campaign operator) and whom it targets.",
    ),
    LabelPolicy(
        "ThreatIntel", True, "threat_intel", Priority.MEDIUM, WriteMode.WRITE_THROUGH,
        text_fields=(("title", "Title"), ("summary", "Summary"), ("indicators", "Indicators")),
        metadata_fields=("title", "severity", "confidence", "sources", "indicators", "observed_at"),
        description="A threat intelligence item from one of the feeds, with its indicators.",
    ),
    LabelPolicy(
        "Malware", True, "malware", Priority.MEDIUM, WriteMode.WRITE_THROUGH,
        text_fields=(("name", "Name"), ("aliases", "Aliases"), ("malware_type", "Type"),
                     ("description", "Description")),
        metadata_fields=("name", "aliases", "malware_type", "mitre_id"),
        description="A malware family or tool.",
    ),
    LabelPolicy(
        "Technique", True, "technique", Priority.MEDIUM, WriteMode.WRITE_THROUGH,
        text_fields=(("name", "Name"), ("mitre_id", "MITRE ID"), ("tactics", "Tactics"),
                     ("platforms", "Platforms"), ("description", "Description")),
        metadata_fields=("name", "mitre_id", "tactics", "platforms"),
        description="A MITRE ATT&CK technique.",
    ),
    LabelPolicy(
        "Report", True, "document", Priority.LOW, WriteMode.WRITE_THROUGH,
        text_fields=_DOCUMENT_TEXT,
        metadata_fields=("title", "doc_type", "published", "tags"),
        description="A published report; long bodies are embedded in chunks.",
    ),
    LabelPolicy(
        "Artifact", True, "document", Priority.LOW, WriteMode.WRITE_THROUGH,
        text_fields=_DOCUMENT_TEXT,
        metadata_fields=("title", "doc_type", "published", "prospect_uid", "tags"),
        description="A document gathered about a prospect; long bodies are embedded in chunks.",
    ),
    LabelPolicy(
        "Prospect", True, "prospect", Priority.LOW, WriteMode.WRITE_THROUGH,
        text_fields=(("name", "Company"), ("sector", "Sector"), ("country", "Country"),
                     ("size_band", "Size"), ("tier", "Tier"), ("description", "Description"),
                     ("public_profile", "Public profile")),
        metadata_fields=("sector", "country", "size_band", "tier", "name"),
        description=(
            "A company we may sell to: only its public profile is embedded and only sector, "
            "country, size band, tier and name travel as metadata. Contacts, revenue, deal "
            "values, budgets, credit terms and notes never leave the graph."
        ),
    ),
    LabelPolicy("Contact", False, "person",
                description="People: names and contact details are personal data and never leave the graph."),
    LabelPolicy("Deal", False, "financial", description="Deals and their values are financial data."),
    LabelPolicy("Account", False, "account", description="Customer accounts and their terms."),
    LabelPolicy("_SyncTombstone", False, "internal",
                description="Delete markers the graph store writes for change capture."),
)

POLICY: dict[str, LabelPolicy] = {policy.label: policy for policy in _POLICIES}
if len(POLICY) != len(_POLICIES):
    raise ValueError("a label is defined twice in the sync policy")


def policy_for(label: str) -> LabelPolicy:
    """The label's policy; a never-synced one for labels the policy does not name."""
    if not isinstance(label, str):
        raise ValueError(f"label must be a str, got {type(label).__name__} {label!r}")
    policy = POLICY.get(label)
    if policy is None:
        policy = LabelPolicy(label or "(empty)", False, "unknown",
                             description="Not named in the policy: never synced.")
    return policy


def synced_labels() -> tuple[str, ...]:
    """The labels that reach the vector index, HIGH priority first, then by name."""
    return tuple(p.label for p in sorted(
        (p for p in POLICY.values() if p.synced), key=lambda p: (p.priority, p.label)))
