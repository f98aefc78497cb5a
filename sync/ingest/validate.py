"""Validation of entities sent to the ingest API: every problem named, nothing half-written.

The whole request is checked before anything is written (`load`, then `parse_items`): every item
and every value must be one the graph can store — strings with a UTF-8 form, integers within
Neo4j's 64 bits, finite floats, flat lists of one type, within the limits below — so a batch is
refused whole (400, naming the field) or written whole, never cut off by a write-time error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sync import ids
from sync.policy import POLICY, uid_withheld

RESERVED = {"uid", "version", "updated_at", "source", "confidence"}
MAX_UID = 512
MAX_SOURCE = 100
MAX_TEXT = 1_000_000  # characters per property; the embedder chunks long texts
MAX_LIST = 1_000
MAX_PROPERTIES = 500
MAX_BATCH = 500
INT64 = (-(2**63), 2**63 - 1)  # what a Neo4j integer holds
_INT64_DIGITS = 19  # no integer of more digits fits in 64 bits (and none is converted: see load)


class IngestError(ValueError):
    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class IngestItem:
    label: str
    uid: str
    properties: dict[str, Any]
    source: str
    confidence: float | None
    expected_version: int | None
    where: str = ""  # how error fields name this item: "" (the body) or "entities[3]."


class OutOfRange:
    """An integer in the body too long to be a Neo4j integer, kept as its first digits: it is
    never converted (a 5,000-digit int() is slow, and refused past 4,300 digits), and the
    validation below names the field that holds it."""

    def __init__(self, text: str):
        self.text = text[:24]

    def __repr__(self) -> str:
        return f"{self.text}…"


def load(raw: bytes) -> Any:
    """The request body as JSON; IngestError for a body that is not JSON (nor UTF-8) or that
    nests too deeply for the parser. NaN and Infinity (which JSON itself has not) are read as the
    floats they name, so that the validation refuses them with the field they are in."""
    try:
        return json.loads(raw, parse_int=_integer)
    except RecursionError:
        raise IngestError("the body nests too deeply: an entity is an object of flat values", "body") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IngestError(f"the body is not valid JSON: {exc}", "body") from None


def _integer(text: str) -> int | OutOfRange:
    return OutOfRange(text) if len(text.lstrip("-")) > _INT64_DIGITS else int(text)


def parse_items(body: Any) -> list[IngestItem]:
    """One entity object, or {"entities": [...]} with up to MAX_BATCH of them."""
    if isinstance(body, dict) and "entities" in body:
        items = body["entities"]
        if not isinstance(items, list) or not items:
            raise IngestError("`entities` must be a non-empty list", "entities")
        if len(items) > MAX_BATCH:
            raise IngestError(f"at most {MAX_BATCH} entities per request, got {len(items)}", "entities")
        return [_item(item, f"entities[{n}].") for n, item in enumerate(items)]
    return [_item(body, "")]


def _item(raw: Any, where: str) -> IngestItem:
    if not isinstance(raw, dict):
        raise IngestError("an entity must be a JSON object", where.rstrip(".") or "body")
    unknown = set(raw) - {"label", "uid", "properties", "source", "confidence", "expected_version"}
    if unknown:
        names = sorted(_shown(name) for name in unknown)
        raise IngestError(f"unknown fields: {', '.join(names[:10])}", where + names[0])
    label = raw.get("label")
    if not ids.is_label(label):
        raise IngestError("`label` must be a label name like ThreatActor", where + "label")
    if label not in POLICY:
        raise IngestError(f"unknown label {label!r}; known: {', '.join(sorted(POLICY))}", where + "label")
    uid = raw.get("uid")
    if not isinstance(uid, str) or not uid.strip():
        raise IngestError("`uid` must be a non-empty string", where + "uid")
    if len(uid) > MAX_UID or any(ord(c) < 32 for c in uid) or not _has_utf8(uid):
        raise IngestError(f"`uid` must be at most {MAX_UID} characters of text, without control characters",
                          where + "uid")
    if POLICY[label].synced and uid_withheld(uid):  # a uid becomes a vector id: no redaction reaches it
        raise IngestError("`uid` must not hold an e-mail address or phone number", where + "uid")
    source = raw.get("source")
    if (not isinstance(source, str) or not source.strip() or len(source) > MAX_SOURCE
            or any(ord(c) < 32 for c in source) or not _has_utf8(source)):
        raise IngestError(f"`source` must name where the data came from (1-{MAX_SOURCE} characters of text)",
                          where + "source")
    confidence = raw.get("confidence")
    if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, int | float)
                                   or not 0 <= confidence <= 1):
        raise IngestError("`confidence` must be a number from 0 to 1", where + "confidence")
    expected = raw.get("expected_version")
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)
                                 or not 0 <= expected <= INT64[1]):
        raise IngestError("`expected_version` must be a non-negative integer (0: must not exist yet)",
                          where + "expected_version")
    properties = raw.get("properties", {})
    if not isinstance(properties, dict):
        raise IngestError("`properties` must be an object", where + "properties")
    if len(properties) > MAX_PROPERTIES:
        raise IngestError(f"at most {MAX_PROPERTIES} properties per entity, got {len(properties)}",
                          where + "properties")
    return IngestItem(label, uid, {k: _value(k, v, where) for k, v in properties.items()},
                      source.strip(), confidence, expected, where)


def _value(key: Any, value: Any, where: str) -> Any:
    if not ids.is_property_key(key):
        raise IngestError("property names are letters, digits and _ (up to 64)",
                          f"{where}properties.{_shown(key)}")
    field = f"{where}properties.{key}"
    if key in RESERVED or key.endswith("_source"):
        raise IngestError(f"`{key}` is set by the sync engine, not by callers", field)
    if value is None:
        return value  # removes the property (a rule-governed one only as sync.conflicts.rules allows)
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise IngestError(f"lists hold at most {MAX_LIST} items", field)
        kinds = {int if isinstance(item, OutOfRange) else type(item) for item in value}
        if len(kinds) > 1 or not kinds <= {str, int, float, bool}:
            raise IngestError("a list must hold values of one simple type (strings, numbers or booleans)",
                              field)
        for n, item in enumerate(value):
            _scalar(item, f"{field}[{n}]")
        return value
    return _scalar(value, field)


def _scalar(value: Any, field: str) -> Any:
    """`value` itself when Neo4j can store it as a property; IngestError naming the field if not."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | OutOfRange):
        if isinstance(value, OutOfRange) or not INT64[0] <= value <= INT64[1]:
            raise IngestError(f"integers must fit in 64 bits ({INT64[0]} to {INT64[1]}); "
                              "send larger numbers as text", field)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise IngestError("numbers must be finite", field)
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise IngestError(f"text longer than {MAX_TEXT} characters", field)
        if not _has_utf8(value):
            raise IngestError("text must be valid Unicode (a lone surrogate such as \\ud800 is not)", field)
        return value
    raise IngestError("values must be strings, numbers, booleans, null or lists of those", field)


def _has_utf8(text: str) -> bool:
    """False for text holding a lone surrogate (JSON's "\\ud800" escape): it has no UTF-8 form, so
    neither the graph nor the vector store could take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(key: Any) -> str:
    """A refused property name as the error's `field` shows it: printable and short."""
    return ascii(key)[1:-1][:80] if isinstance(key, str) else repr(key)[:80]
