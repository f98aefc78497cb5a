"""What the vector index holds for one entity: `build_document(entity)`.

What it makes of an entity:
- None for a never-synced label, and for an entity whose uid holds an e-mail address or phone
  number (`uid_withheld`): a uid becomes the vector id and the `uid` metadata, where no
  redaction can reach it. The ingest API refuses such uids for synced labels (400); one written
  by another tool is never synced (its record says `excluded`, and any vector it has is deleted).
- Cleaning (`sync.policy.text`): control characters are removed and the text NFC-normalised, then every string is
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
  `content_hash`, `model` (the embedding model's identity), `chunk` (0-based), `chunks` (count),
  `updated_at` (ISO) and `text` (the chunk's first 1,000 characters, a display snippet), every
  value with contact details redacted (`sync.policy.redact`) before it is cut, and looked at
  again after: a cut address or number is no longer recognised, and a cut can make a number of
  digits that were none ("202-555-01234567" cut to "202-555-0123…").
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

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as clock_time
from decimal import Decimal
from typing import Any

from sync import ids
from sync.embedding import content_hash, get_embedder, model_id
from sync.ids import MAX_UID_CHARS
from sync.policy.labels import LabelPolicy, is_sensitive_key, policy_for
from sync.policy.memo import TextMemo
from sync.policy.redact import has_contact_details, phone_regions, redact_contacts
from sync.policy.text import clean_text, truncate
from sync.stores.base import Entity, Metadata

SNIPPET_MAX_CHARS = 1_000
FIELD_MAX_CHARS = 2_000
LIST_MAX_ITEMS = 100
LIST_ITEM_MAX_CHARS = 256
METADATA_LIMIT_BYTES = 40_960  # Pinecone's per-vector metadata limit
# Measured as ASCII-escaped JSON, the largest form any store could count, with room to spare.
METADATA_BUDGET_BYTES = 36_000

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


def text_and_hash(policy: LabelPolicy, properties: Mapping[str, Any]) -> tuple[str, str]:
    """`build_text` and its `content_hash`, remembered for the text fields' values: an unchanged
    entity's document is built again on every metadata-only update, resync and reconciliation,
    and cleaning, redacting and hashing its text was over 40% of building it."""
    key = _text_key(policy, properties)
    found = _texts.get(key) if key is not None else None
    if found is None:
        text = build_text(policy, properties)
        found = (text, content_hash(text))
        if key is not None:
            _texts.put(key, found, len(text) + sum(len(part) for part in key[3] if type(part) is str))
    return found


# Texts kept per process; a key holds the raw values too, so about twice this many characters.
_texts: TextMemo[tuple[str, str]] = TextMemo(max_chars=8_000_000)
_KEY_SCALARS = (str, int, bool, type(None))


def _text_key(policy: LabelPolicy, properties: Mapping[str, Any]) -> tuple | None:
    """What the text depends on, or None when a value is of a kind not worth keying (dates,
    maps, numbers other than ints: floats would need care, -0.0 == 0.0 writes "-0.0")."""
    values: list[Any] = []
    for name, _ in policy.text_fields:
        value = properties.get(name)
        kind = type(value)
        if kind in _KEY_SCALARS:
            values += (kind, value)  # 1 and True are equal keys but different texts
        elif kind is list and all(type(item) is str for item in value):
            values += (list, len(value), *value)
        else:
            return None
    return (policy.label, policy.text_fields, phone_regions(), tuple(values))


# --- metadata --------------------------------------------------------------------------------
# Redaction reads this far past a cut, so that what is kept is judged in its context.
_CUT_CONTEXT_CHARS = 1_000


def _redacted(text: str, limit: int) -> str:
    """`text` with its contact details redacted, then cut to at most `limit` characters."""
    head = text if len(text) <= limit + _CUT_CONTEXT_CHARS else text[:limit + _CUT_CONTEXT_CHARS]
    value = redact_contacts(head)
    if head is not text and len(value) <= limit:
        value = redact_contacts(text)  # the head shrank below the cut: what follows is kept too
    while len(value) > limit:
        cut = truncate(value, limit)
        value = redact_contacts(cut)  # the cut may have made a number: "…202-555-0123…"
        if value == cut:
            break
    return value


def _metadata_value(where: str, value: Any) -> str | int | float | bool | list[str] | None:
    """A value in Pinecone's types, redacted, then capped in size; None when it should be left out."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Pinecone numbers are float64: a larger integer would come back as a different number.
        return value if abs(value) <= _EXACT_FLOAT_INT else _redacted(str(value), FIELD_MAX_CHARS)
    if isinstance(value, (float, Decimal)):
        return float(value) if _finite(value) else None
    if _is_list(value):
        texts = [text for text in (_scalar_text(where, item) for item in _list_items(value)) if text]
        return [_redacted(text, LIST_ITEM_MAX_CHARS) for text in texts[:LIST_MAX_ITEMS]] or None
    text = _redacted(_scalar_text(where, value), FIELD_MAX_CHARS)
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
        return _redacted(value, len(value) // 2)
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
            metadata[name] = value
    return metadata


def uid_withheld(uid: str) -> bool:
    """Does the uid hold an e-mail address or phone number? Such an entity is never synced: its
    uid would be its vector id and its `uid` metadata (see the module docstring)."""
    return has_contact_details(uid)


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
    """The entity as the vector index should see it; None when its label is never synced or its
    uid is withheld (`uid_withheld`).

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
    if uid_withheld(uid):
        return None
    if len(uid) > MAX_UID_CHARS:
        raise ValueError(f"{where}: uid longer than {MAX_UID_CHARS} characters cannot travel as metadata")
    if isinstance(entity.version, bool) or not isinstance(entity.version, int):
        raise ValueError(f"{where}: version must be an int, got {entity.version!r}")
    updated_at = _iso(entity.updated_at)
    if updated_at is None:
        raise ValueError(f"{where}: updated_at must be a datetime, got {entity.updated_at!r}")

    text, digest = text_and_hash(policy, entity.properties)
    snippets = list(stored_snippets(digest, text) or ()) if (text and stored_snippets) else []
    pieces: list[str | None]
    if snippets:
        pieces = [None] * len(snippets)  # the stored vectors are kept: nothing to embed
    else:
        pieces = get_embedder().split(text) if text else []
        snippets = pieces
    common = {"label": policy.label, "uid": uid, "version": entity.version, "content_hash": digest,
              "model": model_id(), "chunks": len(pieces), "updated_at": updated_at}
    engine_parts = [{**common, "chunk": n, "text": _redacted(snippet, SNIPPET_MAX_CHARS)}
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
