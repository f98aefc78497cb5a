"""Validation of entities sent to the ingest API: every problem named, nothing half-written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sync import ids
from sync.policy import POLICY

RESERVED = {"uid", "version", "updated_at", "source", "confidence"}
MAX_UID = 512
MAX_TEXT = 1_000_000  # characters per property; the embedder chunks long texts
MAX_LIST = 1_000
MAX_BATCH = 500


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
        raise IngestError(f"unknown fields: {', '.join(sorted(unknown))}", where + sorted(unknown)[0])
    label = raw.get("label")
    if not ids.is_label(label):
        raise IngestError("`label` must be a label name like ThreatActor", where + "label")
    if label not in POLICY:
        raise IngestError(f"unknown label {label!r}; known: {', '.join(sorted(POLICY))}", where + "label")
    uid = raw.get("uid")
    if not isinstance(uid, str) or not uid.strip():
        raise IngestError("`uid` must be a non-empty string", where + "uid")
    if len(uid) > MAX_UID or any(ord(c) < 32 for c in uid):
        raise IngestError(f"`uid` must be at most {MAX_UID} characters, without control characters",
                          where + "uid")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip() or len(source) > 100:
        raise IngestError("`source` must name where the data came from (1-100 characters)", where + "source")
    confidence = raw.get("confidence")
    if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, int | float)
                                   or not 0 <= confidence <= 1):
        raise IngestError("`confidence` must be a number from 0 to 1", where + "confidence")
    expected = raw.get("expected_version")
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int) or expected < 0):
        raise IngestError("`expected_version` must be a non-negative integer (0: must not exist yet)",
                          where + "expected_version")
    properties = raw.get("properties", {})
    if not isinstance(properties, dict):
        raise IngestError("`properties` must be an object", where + "properties")
    return IngestItem(label, uid, {k: _value(k, v, where) for k, v in properties.items()},
                      source.strip(), confidence, expected)


def _value(key: Any, value: Any, where: str) -> Any:
    field = f"{where}properties.{key}"
    if not ids.is_property_key(key):
        raise IngestError("property names are letters, digits and _ (up to 64)", field)
    if key in RESERVED or key.endswith("_source"):
        raise IngestError(f"`{key}` is set by the sync engine, not by callers", field)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise IngestError("numbers must be finite", field)
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise IngestError(f"text longer than {MAX_TEXT} characters", field)
        return value
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise IngestError(f"lists hold at most {MAX_LIST} items", field)
        kinds = {type(item) for item in value}
        if len(kinds) > 1 or not kinds <= {str, int, float, bool}:
            raise IngestError("a list must hold values of one simple type (strings, numbers or booleans)",
                              field)
        if str in kinds and any(len(item) > MAX_TEXT for item in value):
            raise IngestError(f"text longer than {MAX_TEXT} characters", field)
        return value
    raise IngestError("values must be strings, numbers, booleans, null or lists of those", field)
