"""The sync policy: which graph labels reach the vector index, how fast, and carrying what.

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
- *priority* orders queued work: HIGH before MEDIUM before LOW (`Priority` sorts that way; its
  stored value is "high"/"medium"/"low", its `rank` 0/1/2).
- *write mode*: `dual_write` embeds and upserts inside the ingest call (the caller waits for both
  stores); `write_through` writes Neo4j, enqueues a sync event and returns.
- *on vector failure* (dual_write only): `compensate` undoes the graph write and fails the call;
  `queue` keeps the graph write and hands the vector to the queue.
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

Contact details never reach the vector index either, whatever the label: every e-mail address
and phone number in any text or metadata value becomes "[e-mail redacted]" / "[phone redacted]"
(`redact_contacts`), and reconciliation deletes and rebuilds any vector that still holds one
(`has_contact_details`). Every label, because any free text can quote a person (a report's
source, a victim's help desk, a spoofed sender) and the index is a copy held outside the graph;
an address or number that is an indicator stays in the graph, where search hits lead. Phone
numbers are found by Google's libphonenumber (`phonenumbers.PhoneNumberMatcher`): international
numbers, and national formats of the regions in CONTACT_PHONE_REGIONS (default US, GB). A match
counts when it is a valid number, or a possible one written in the groups its region writes it
in ("(555) 123-4567", "07700 900123": the numbers of fiction, which no plan assigns); a possible
number written otherwise ("2024-01-15", "10.0.19041.1", "1700000000") is a date, version or id.
Runs that continue a word or an identifier ("T1059.001", "CVE-2024-12345", hashes) are not
numbers, and texts without a run of 7 digits are not given to the matcher at all.

What `build_document(entity)` makes of an entity:
- None for a never-synced label.
- Cleaning: control characters are removed and the text NFC-normalised, then every string is
  read as HTML and turned into text with the standard library's HTML parser: tags and comments
  dropped, block elements become line breaks, `<script>`, `<style>` and `<template>` content
  removed, entities decoded. Entity-escaped markup (`&lt;script&gt;`, common in feeds) is decoded
  and parsed again, up to 4 rounds, so it is removed too. A `<` that could still open markup (an
  unterminated tag, or one with another `<` before its `>`) becomes `‹`; that also keeps the
  parser linear on hostile input. A `<` followed by a space or digit is plain text ("< 2.4");
  one directly followed by a letter is markup ("a<b and c>d" reads "ad"). Whitespace is collapsed
  (text keeps its line and paragraph breaks; metadata strings are one line).
- `text` and its `content_hash` (see `sync.embedding.content_hash`).
- `chunks`: the text split by the model's token window (`Embedder.split`, tokenizer only). One
  chunk has vector id `Label:uid`, several have `Label:uid#0`, `Label:uid#1`, ... (`sync.ids`).
- Each chunk's metadata: the allow-listed properties in Pinecone's types (string, number, bool,
  list of strings; None, NaN and empty values left out; dates and datetimes as ISO 8601 strings,
  aware datetimes in UTC; dicts as JSON text) plus the engine keys `label`, `uid`, `version`,
  `content_hash`, `model` (the embedding model's identity), `chunk` (0-based), `chunks` (count), `updated_at` (ISO) and `text` (the
  chunk's first 1,000 characters, a display snippet).
- Size: strings are cut to 2,000 characters, lists to 100 items of at most 256 characters; a cut
  value ends with "…". If a chunk's metadata would still exceed 36,000 bytes of ASCII-escaped JSON
  (safely under Pinecone's 40 KB however a store measures it), the largest allow-listed value is
  halved, repeatedly, and a value that cannot shrink further is left out.
- An entity whose text is empty after cleaning gets a Document with no chunks: it has no vector,
  and the engine deletes whatever vectors it had.
- Errors are ValueError naming the entity: a uid that is not a non-empty str or is longer than
  `MAX_UID_CHARS` (it must fit in metadata), a version that is not an int, a missing updated_at,
  or a text/metadata property of a type with no text form (bytes, points).
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as clock_time
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.signals import setting_changed
from django.db import models
from django.dispatch import receiver

from sync import ids
from sync.embedding import content_hash, get_embedder, model_id
from sync.stores.base import Entity, Metadata


class Priority(models.TextChoices):
    HIGH = "high", "High"
    MEDIUM = "medium", "Medium"
    LOW = "low", "Low"

    @property
    def rank(self) -> int:
        """0 for HIGH: a number to order by where the stored string would sort wrongly."""
        return type(self)._member_names_.index(self.name)

    def __lt__(self, other: object) -> bool:
        if isinstance(other, Priority):
            return self.rank < other.rank
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, Priority):
            return self.rank <= other.rank
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, Priority):
            return self.rank > other.rank
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, Priority):
            return self.rank >= other.rank
        return NotImplemented

    # Enum hashes members by name; hash by the stored string instead, so that "high" read back
    # from a database finds the same dict entry as Priority.HIGH (the two already compare equal).
    __hash__ = str.__hash__


class WriteMode(models.TextChoices):
    DUAL_WRITE = "dual_write", "Sync dual-write"
    WRITE_THROUGH = "write_through", "Async write-through"


class VectorFailure(models.TextChoices):
    COMPENSATE = "compensate", "Undo the graph write and fail"
    QUEUE = "queue", "Keep the graph write and queue the vector"


ENGINE_KEYS = ("label", "uid", "version", "content_hash", "model", "chunk", "chunks", "updated_at", "text")
MAX_UID_CHARS = 1024
SNIPPET_MAX_CHARS = 1_000
FIELD_MAX_CHARS = 2_000
LIST_MAX_ITEMS = 100
LIST_ITEM_MAX_CHARS = 256
METADATA_LIMIT_BYTES = 40_960  # Pinecone's per-vector metadata limit
# Measured as ASCII-escaped JSON, the largest form any store could count, with room to spare.
METADATA_BUDGET_BYTES = 36_000
ELLIPSIS = "…"

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
            raise ValueError(f"{self.label}: only a dual_write can be compensated")

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
        (p for p in POLICY.values() if p.synced), key=lambda p: (p.priority.rank, p.label)))


# --- contact details -------------------------------------------------------------------------
# E-mail addresses and phone numbers never reach the vector index, whatever the label: they are
# replaced in every text and metadata value before anything leaves the graph, and
# reconciliation deletes (and rebuilds) any vector that still holds one.
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
REDACTED_EMAIL, REDACTED_PHONE = "[e-mail redacted]", "[phone redacted]"
# Where the phone matcher is worth running: a run of digits and phone punctuation holding at least
# 7 digits (this C-speed search is all most texts cost; it ignores a leading "+" or "(", which
# the matcher finds in the context it is given).
_PHONE_RUN = re.compile(r"\d[\d \u00a0().\-/\u2010-\u2015]{5,}\d")
_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D")
_MIN_PHONE_DIGITS = 7
# The matcher needs a little context: a "+" or "(" before the run, a timestamp's ":ss" after it.
_CONTEXT_CHARS = 3


_regions: tuple[str, ...] | None = None


def phone_regions() -> tuple[str, ...]:
    """CONTACT_PHONE_REGIONS, read once per process (and again when a test changes it)."""
    global _regions
    if _regions is None:
        _regions = tuple(settings.CONTACT_PHONE_REGIONS)
    return _regions


@receiver(setting_changed)
def _forget_regions(setting: str, **kwargs: Any) -> None:
    global _regions
    if setting == "CONTACT_PHONE_REGIONS":
        _regions = None


def _phone_spans(value: str) -> list[tuple[int, int]]:
    """Where `value` holds phone numbers, as (start, end) offsets, left to right."""
    if len(value) < _MIN_PHONE_DIGITS:
        return []
    spans: list[tuple[int, int]] = []
    size = len(value)
    for run in _PHONE_RUN.finditer(value):
        start, end = run.span()
        left, right = max(0, start - _CONTEXT_CHARS), min(size, end + _CONTEXT_CHARS)
        found = _phones_in_window(value[left:right], start - left, end - left, phone_regions())
        spans.extend((left + a, left + b) for a, b in found)
    return spans


def _continues_token(window: str, index: int) -> bool:
    """Does window[index:] continue a word or an identifier ("T1059", "CVE-2024", "KB5034441")?"""
    before = window[index - 1] if index else " "
    return before.isalnum() or (before in "-." and index > 1 and window[index - 2].isalnum())


@functools.lru_cache(maxsize=16384)
def _phones_in_window(window: str, start: int, end: int, regions: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """The phone numbers in window[start:end], a run with a little context around it.

    Cached: the runs that are not phone numbers (dates, above all) recur across entities.
    """
    if _continues_token(window, start):
        # The run's first group belongs to that token; a phone number may still follow it.
        cut = _NON_DIGIT.search(window, start, end)
        if cut is None:
            return ()
        start = cut.start()
    if end < len(window) and window[end].isalnum():
        end = max(start, *(window.rfind(c, start, end) for c in " -./)"))  # likewise the last group
    if len(_DIGIT.findall(window, start, end)) < _MIN_PHONE_DIGITS:
        return ()
    found: list[tuple[int, int]] = []
    for region in regions:
        # VALID: a number some numbering plan holds, however it is written (the library also
        # wants a national prefix where its region writes one, and no letter around it).
        found += [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(
            window, region, leniency=phonenumbers.Leniency.VALID) if m.end > start and m.start < end]
        # POSSIBLE, but only when written as the library writes that number: fictional ones.
        for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.POSSIBLE):
            before = window[match.start - 1] if match.start else " "
            after = window[match.end] if match.end < len(window) else " "
            if match.end > start and match.start < end and not (before.isalnum() or after.isalnum()) \
                    and _written_as_phone_number(match):
                found.append((match.start, match.end))
    return tuple(sorted(set(found)))


def _digit_groups(text: str) -> list[str]:
    return re.findall(r"[0-9]+", phonenumbers.normalize_digits_only(text, keep_non_digits=True))


def _written_as_phone_number(match: phonenumbers.PhoneNumberMatch) -> bool:
    """Is this possible (but not valid) number grouped exactly as the library would write it?

    That catches the numbers of fiction and examples ("(555) 123-4567", "07700 900123"), which
    no numbering plan holds, while runs that merely have a possible length ("2024-01-15",
    "10.0.19041.1", "2024-12345") are grouped otherwise.
    """
    written = _digit_groups(match.raw_string)
    if len(written) < 2:
        return False  # a bare digit run is a phone number only when valid: else an id or a timestamp
    number = match.number
    national = _digit_groups(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    international = _digit_groups(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL))
    return written in (national, international) or (
        written[0] == str(number.country_code) and written[1:] == national)


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _redact_text(value: str) -> str:
    if len(value) <= _CACHED_CLEAN_CHARS:
        return _redact_short(value, phone_regions())
    return _redact(value)


@functools.lru_cache(maxsize=16384)
def _redact_short(value: str, regions: tuple[str, ...]) -> str:  # regions: part of the cache key
    # Metadata values (names, countries, sectors, tactics) recur across entities: redacted once.
    return _redact(value)


def _redact(value: str) -> str:
    if "@" in value:
        value = EMAIL.sub(REDACTED_EMAIL, value)
    spans = _merge(_phone_spans(value))
    if not spans:
        return value
    pieces, copied = [], 0
    for start, end in spans:
        pieces += [value[copied:start], REDACTED_PHONE]
        copied = end
    pieces.append(value[copied:])
    return "".join(pieces)


def has_contact_details(value: Any) -> bool:
    """Does the value (a string or a list of them) hold an e-mail address or a phone number?"""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and (("@" in v and EMAIL.search(v)) or _phone_spans(v)) for v in values)


def redact_contacts(value: Any) -> Any:
    """The value with every e-mail address and phone number replaced by a marker."""
    if isinstance(value, list):
        return [redact_contacts(v) for v in value]
    return _redact_text(value) if isinstance(value, str) else value


# --- cleaning --------------------------------------------------------------------------------
_SKIPPED_ELEMENTS = frozenset({"script", "style", "template"})
_BLOCK_ELEMENTS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tr", "ul",
})
_CELL_ELEMENTS = frozenset({"td", "th"})
_UNESCAPE_ROUNDS = 4
_MARKUP_OPENER = re.compile(r"<(?=[A-Za-z/!?])")
_TAG_START_CHARS = frozenset(string.ascii_letters + "/!?")
INERT_LT = "‹"  # what a '<' that could still open markup becomes


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_ELEMENTS:
            self.skipping += 1
        elif tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")
        elif tag in _CELL_ELEMENTS:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # Browsers ignore the "/" of <script/>: what follows is still script, so skip it too.
        if tag in _SKIPPED_ELEMENTS:
            self.skipping += 1
        else:
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_ELEMENTS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")
        elif tag in _CELL_ELEMENTS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def _defuse(text: str) -> str:
    """The text with every '<' html.parser could stall on made harmless, in one linear pass.

    Python 3.11's html.parser rescans to the end of its input for each construct it cannot close
    (a known CPython issue), so a megabyte of "<a<a<a..." would take hours. Here a '<' that opens markup is
    kept only when a '>' closes it before the next '<'; otherwise it becomes `INERT_LT`. Comments
    are removed here (the parser's own comment search has the same flaw), CDATA sections are made
    inert, and a '<' that opens nothing becomes "&lt;", which the parser turns back into '<'
    without its slow character-by-character path.
    """
    pieces: list[str] = []
    size = len(text)
    copied = 0
    next_gt = next_comment_end = -2  # -2: not looked up yet; -1: none left in the text
    lt = text.find("<")
    while lt != -1:
        following = text.find("<", lt + 1)
        if text.startswith("<!--", lt):
            if next_comment_end != -1 and next_comment_end < lt + 4:
                next_comment_end = text.find("-->", lt + 4)
            if next_comment_end != -1:
                pieces.append(text[copied:lt])
                copied = next_comment_end + 3
                lt = text.find("<", copied)
                continue
            replacement = INERT_LT
        elif text.startswith("<![", lt):
            replacement = INERT_LT
        elif lt + 1 < size and text[lt + 1] in _TAG_START_CHARS:
            if next_gt != -1 and next_gt < lt:
                next_gt = text.find(">", lt)
            if next_gt != -1 and (following == -1 or next_gt < following):
                lt = following
                continue
            replacement = INERT_LT
        else:
            replacement = "&lt;"
        pieces.append(text[copied:lt])
        pieces.append(replacement)
        copied = lt + 1
        lt = following
    pieces.append(text[copied:])
    return "".join(pieces)


def html_to_text(value: str) -> str:
    """The text an HTML reader sees in `value`, without script, style, comments or any markup."""
    text = value
    for _ in range(_UNESCAPE_ROUNDS):
        if "<" not in text and "&" not in text:
            break
        parser = _TextExtractor()
        parser.feed(_defuse(text))
        parser.close()
        parsed = "".join(parser.parts)
        if parsed == text:
            break
        text = parsed
    # What is left can only be a '<' the parser took for text (an unterminated tag at the end, or
    # markup escaped more times than the rounds above): make sure no later reader sees a tag.
    return _MARKUP_OPENER.sub(INERT_LT, text) if "<" in text else text


# Control characters (Cc, except tab and newline) and lone surrogates cannot be embedded or stored
# meaningfully; one C-speed regex pass finds (and removes) them, even over megabytes.
_UNSTORABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(value: str, *, multiline: bool = False) -> str:
    """A property value made safe to embed and store: see "Cleaning" in the module docstring."""
    if len(value) <= _CACHED_CLEAN_CHARS:
        return _clean_short(value, multiline)
    return _clean(value, multiline)


# Names, aliases, countries and sectors recur across entities, and most fields are cleaned twice
# per document (once for the text, once as metadata): short values are cleaned once per process.
_CACHED_CLEAN_CHARS = 256


@functools.lru_cache(maxsize=16384)
def _clean_short(value: str, multiline: bool) -> str:
    return _clean(value, multiline)


def _clean(value: str, multiline: bool) -> str:
    # Characters are removed before the markup pass, never after it: removing the NUL from
    # "<\x00script>" afterwards would assemble the very tag the pass let through as text.
    text = value.replace("\r\n", "\n").replace("\r", "\n") if "\r" in value else value
    if not text.isprintable() and _UNSTORABLE.search(text):  # printable: no control characters or surrogates
        text = _UNSTORABLE.sub("", text)
    text = html_to_text(unicodedata.normalize("NFC", text))
    if not multiline:
        return " ".join(text.split())
    lines = [" ".join(line.split()) for line in text.split("\n")]
    paragraphs: list[str] = []
    blank = False
    for line in lines:
        if line:
            if blank and paragraphs:
                paragraphs.append("")
            paragraphs.append(line)
            blank = False
        else:
            blank = True
    return "\n".join(paragraphs)


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a space near the end when there is one, ending in …."""
    if len(text) <= limit:
        return text
    head = text[:limit - 1]
    space = head.rfind(" ")
    if space >= limit * 0.8:
        head = head[:space]
    return head.rstrip() + ELLIPSIS


def _iso(value: Any) -> str | None:
    """ISO 8601 for Python and Neo4j temporal values; None for anything else."""
    if hasattr(value, "to_native") and not isinstance(value, (date, clock_time)):
        value = value.to_native()  # neo4j.time.DateTime/Date/Time
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    if isinstance(value, (date, clock_time)):
        return value.isoformat()
    if hasattr(value, "iso_format"):  # neo4j.time.Duration
        return value.iso_format()
    return None


def _scalar_text(where: str, value: Any) -> str:
    """One value as single-line text ("" when there is nothing to say)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (float, Decimal)):
        return str(value) if _finite(value) else ""
    iso = _iso(value)
    if iso is not None:
        return iso
    if isinstance(value, Mapping):
        return clean_text(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))
    raise ValueError(f"{where} is a {type(value).__name__}, which has no text form")


_EXACT_FLOAT_INT = 2**53


def _finite(value: float | Decimal) -> bool:
    return value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset))


def _list_items(value: Iterable[Any]) -> list[Any]:
    # Sets have no order: sort them so the same entity always gives the same text and hash.
    return sorted(value, key=repr) if isinstance(value, (set, frozenset)) else list(value)


def build_text(policy: LabelPolicy, properties: Mapping[str, Any]) -> str:
    """The embedded text: a labelled line per non-empty text field, in policy order."""
    lines = []
    for name, caption in policy.text_fields:
        value = properties.get(name)
        where = f"{policy.label}.{name}"
        if _is_list(value):
            # Past a hundred aliases or indicators a list is noise to a sentence model.
            items = (_scalar_text(where, item) for item in _list_items(value))
            text = ", ".join([item for item in items if item][:LIST_MAX_ITEMS])
        elif isinstance(value, str):
            text = clean_text(value, multiline=True)
        else:
            text = _scalar_text(where, value)
        if text:
            lines.append(f"{caption}: {text}")
    text = "\n".join(lines)
    return redact_contacts(text)


# --- metadata --------------------------------------------------------------------------------
def _metadata_value(where: str, value: Any) -> str | int | float | bool | list[str] | None:
    """A value in Pinecone's types, capped in size; None when it should be left out."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Pinecone numbers are float64: a larger integer would come back as a different number.
        return value if abs(value) <= _EXACT_FLOAT_INT else str(value)
    if isinstance(value, (float, Decimal)):
        return float(value) if _finite(value) else None
    if _is_list(value):
        items = [truncate(_scalar_text(where, item), LIST_ITEM_MAX_CHARS) for item in _list_items(value)]
        kept = [item for item in items if item][:LIST_MAX_ITEMS]
        return kept or None
    text = truncate(_scalar_text(where, value), FIELD_MAX_CHARS)
    return text or None


def _json_size(metadata: Mapping[str, Any]) -> int:
    return len(json.dumps(metadata, ensure_ascii=True, separators=(",", ":")))


def _json_bound(metadata: Mapping[str, Any]) -> int:
    """At least `_json_size` of flat metadata, without serialising it: ASCII-escaped JSON spends
    at most 12 bytes on a character (one outside the BMP becomes two \\uXXXX escapes)."""
    total = 2
    for key, value in metadata.items():
        total += 12 * len(key) + 4
        if isinstance(value, str):
            total += 12 * len(value) + 2
        elif isinstance(value, list):
            total += 2 + sum(12 * len(item) + 3 if isinstance(item, str) else 64 for item in value)
        elif value is None or isinstance(value, (bool, int, float)):
            total += 64
        else:
            total += len(json.dumps(value, ensure_ascii=True, separators=(",", ":")))
    return total


def _shrink(value: str | list[str]) -> str | list[str] | None:
    """About half of a value, or None when there is no smaller form."""
    if isinstance(value, list):
        if len(value) > 1:
            return value[:len(value) // 2]
        smaller = _shrink(value[0]) if value else None
        return [smaller] if smaller else None
    if isinstance(value, str) and len(value) > 1:
        return truncate(value, len(value) // 2)
    return None


def _fit(metadata: dict[str, Any], room: int) -> dict[str, Any]:
    """Halve the largest values until the metadata serialises to at most `room` bytes."""
    fitted = dict(metadata)
    while fitted and _json_size(fitted) > room:
        key = max(sorted(fitted), key=lambda k: _json_size({k: fitted[k]}))
        smaller = _shrink(fitted[key])
        if smaller is None:
            del fitted[key]
        else:
            fitted[key] = smaller
    return fitted


def allowed_metadata(policy: LabelPolicy, properties: Mapping[str, Any]) -> dict[str, Any]:
    """The allow-listed properties, coerced and capped. No other property can get in."""
    metadata: dict[str, Any] = {}
    for name in policy.metadata_fields:
        # The policy refuses such names when defined; checked again here because a leak is not
        # something to trust a single check with.
        if is_sensitive_key(name):
            raise ValueError(f"{policy.label}.{name} looks like personal or financial data")
        value = _metadata_value(f"{policy.label}.{name}", properties.get(name))
        if value is not None:
            metadata[name] = redact_contacts(value)
    return metadata


# --- documents -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    index: int
    vector_id: str
    # What is embedded; None for a chunk rebuilt from the snippets already stored for this exact
    # text (see `build_document`), whose stored vector is kept and must not be embedded again.
    text: str | None
    metadata: Metadata  # what travels with the vector


@dataclass(frozen=True)
class Document:
    """What the vector index should hold for one entity. No chunks means no vector at all."""

    label: str
    uid: str
    version: int
    updated_at: str
    policy: LabelPolicy
    text: str
    content_hash: str
    chunks: tuple[Chunk, ...]

    @property
    def vector_ids(self) -> list[str]:
        return [chunk.vector_id for chunk in self.chunks]

    @property
    def has_vectors(self) -> bool:
        return bool(self.chunks)


def build_document(entity: Entity, *,
                   stored_snippets: Callable[[str, str], Sequence[str] | None] | None = None) -> Document | None:
    """The entity as the vector index should see it; None when its label is never synced.

    `stored_snippets(content_hash, text)` may return the `text` snippets of the chunks the vector
    store already holds for this text (same content hash, snippets found in the text), in chunk
    order: the text is then not split again (tokenizing is most of the cost of a metadata-only
    update) and the chunks are rebuilt from the snippets, with `text=None` since their vectors
    are kept as they are.
    """
    policy = policy_for(entity.label)
    if not policy.synced:
        return None
    where = f"{entity.label} {entity.uid!r}"
    uid = ids.check_uid(entity.uid)
    if len(uid) > MAX_UID_CHARS:
        raise ValueError(f"{where}: uid longer than {MAX_UID_CHARS} characters cannot travel as metadata")
    if isinstance(entity.version, bool) or not isinstance(entity.version, int):
        raise ValueError(f"{where}: version must be an int, got {entity.version!r}")
    updated_at = _iso(entity.updated_at)
    if updated_at is None:
        raise ValueError(f"{where}: updated_at must be a datetime, got {entity.updated_at!r}")

    text = build_text(policy, entity.properties)
    digest = content_hash(text)
    snippets = list(stored_snippets(digest, text) or ()) if (text and stored_snippets) else []
    pieces: list[str | None]
    if snippets:
        pieces = [None] * len(snippets)  # the stored vectors are kept: nothing to embed
    else:
        pieces = get_embedder().split(text) if text else []
        snippets = pieces
    common = {"label": policy.label, "uid": uid, "version": entity.version, "content_hash": digest,
              "model": model_id(), "chunks": len(pieces), "updated_at": updated_at}
    engine_parts = [{**common, "chunk": n, "text": truncate(snippet, SNIPPET_MAX_CHARS)}
                    for n, snippet in enumerate(snippets)]
    shared = allowed_metadata(policy, entity.properties)
    # Nearly always far below the budget: then a cheap bound says so and nothing is serialised.
    if max(map(_json_bound, engine_parts), default=0) + _json_bound(shared) > METADATA_BUDGET_BYTES:
        room = METADATA_BUDGET_BYTES - max((_json_size(part) for part in engine_parts), default=0)
        shared = _fit(shared, room)
    single = len(pieces) == 1
    chunks = tuple(
        Chunk(n, ids.vector_id(policy.label, uid, None if single else n), piece, {**shared, **part})
        for n, (piece, part) in enumerate(zip(pieces, engine_parts, strict=True))
    )
    return Document(policy.label, uid, entity.version, updated_at, policy, text, digest, chunks)
