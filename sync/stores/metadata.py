"""Pinecone's data rules, applied by every vector adapter so that all of them behave alike.

Pinecone refuses a whole request when one record breaks a rule; the adapters check each record
here first, so that a bad record is reported in `WriteResult.failed` and the rest are written.

Metadata values become one of Pinecone's types: string, number, boolean, list of strings.
The choices made where Pinecone leaves room (every adapter relies on them):

- `None` values are dropped (Pinecone has no null; absence is the null).
- Numbers are 64-bit floats in Pinecone, so a number reads back as `5.0` whatever was written.
  Here every number whose value is integral (and exact in a float, |n| <= 2**53) is an `int`, on
  the way in (`coerce_metadata`) and on the way out (`decode_metadata`): `{"version": 3}` reads
  back as `3` from every store, and `2.0` reads back as `2`. Integers beyond 2**53 are refused,
  since Pinecone would silently round them: store them as strings.
- `datetime`, `date` and `time` (and Neo4j's temporal types) become ISO 8601 strings, as
  `isoformat()` writes them (an aware datetime keeps its offset). `Decimal` becomes a float,
  `UUID` a string.
- Lists and tuples keep their order, sets are sorted. Their elements become strings: strings as
  they are, numbers as written by `decode_metadata` rules (`2` -> "2", `2.5` -> "2.5"), booleans
  as "true"/"false", dates as ISO strings; `None` elements are dropped.
- Nested objects (dicts, lists inside lists) are refused: Pinecone cannot filter inside them, and
  a JSON string would hide that.
- NaN and infinities are refused. Keys must be non-empty strings not starting with `$`.

This module needs numpy but not Django, so a test double of Pinecone can use it as well.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
import uuid
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import orjson

from sync.stores.base import Metadata, VectorRecord

MAX_ID_LENGTH = 512
MAX_METADATA_BYTES = 40 * 1024
MAX_UPSERT_VECTORS = 1000
MAX_UPSERT_BYTES = 2 * 1024 * 1024
MAX_IDS_PER_REQUEST = 1000
MAX_TOP_K = 10_000
# The largest integer a 64-bit float holds exactly: Pinecone would round anything beyond it.
MAX_EXACT_INTEGER = 2**53
# Pinecone stores dense values as float32; a finite float64 beyond this would become infinite.
MAX_FLOAT32 = 3.4028234663852886e38


def validate_vector_id(vector_id: Any) -> str:
    """Return the id if Pinecone accepts it (1-512 printable ASCII characters), else raise ValueError."""
    if not isinstance(vector_id, str):
        raise ValueError(f"a vector id must be a string, not {type(vector_id).__name__}")
    if not vector_id:
        raise ValueError("a vector id must not be empty")
    if len(vector_id) > MAX_ID_LENGTH:
        raise ValueError(f"a vector id must be at most {MAX_ID_LENGTH} characters, "
                         f"this one has {len(vector_id)}: {vector_id[:40]!r}...")
    if not (vector_id.isascii() and vector_id.isprintable()):
        raise ValueError(f"a vector id must be printable ASCII: {vector_id!r}")
    return vector_id


def is_valid_vector_id(vector_id: Any) -> bool:
    try:
        validate_vector_id(vector_id)
    except ValueError:
        return False
    return True


def check_values(values: Any, dimension: int) -> np.ndarray:
    """The values as a float32 array if Pinecone would accept them as a dense vector, else ValueError."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"vector values must be a flat sequence of numbers: {exc}") from None
    # Kinds i/u/f only: numpy would otherwise turn "1.5" or True into a number without a word.
    if array.dtype.kind not in "iuf" or array.ndim != 1:
        raise ValueError("vector values must be a flat sequence of numbers")
    if len(array) != dimension:
        raise ValueError(f"the vector has {len(array)} values, the index has dimension {dimension}")
    wide = array.astype(np.float64, copy=False)
    if not (np.isfinite(wide).all() and (np.abs(wide) <= MAX_FLOAT32).all()):
        raise ValueError("vector values must be finite float32 numbers (no NaN or infinity)")
    # Pinecone refuses an all-zero dense vector: its cosine similarity is undefined.
    if not wide.any():
        raise ValueError("a vector must contain at least one non-zero value")
    return wide.astype(np.float32)


def check_vectors(vectors: Sequence[Any], dimension: int) -> tuple[np.ndarray, list[str | None]]:
    """`check_values` over many vectors at once: a float32 matrix and, per row, None or the error.

    Rows with an error are zeros in the matrix. One numpy conversion of the whole batch costs a
    third of converting vector by vector, which dominates a large upsert.
    """
    try:
        matrix = np.asarray(vectors)
    except (TypeError, ValueError):  # ragged rows: numpy will not make a matrix of them
        matrix = None
    if matrix is None or matrix.dtype.kind not in "iuf" or matrix.shape != (len(vectors), dimension):
        return _check_one_by_one(vectors, dimension)
    wide = matrix.astype(np.float64, copy=False)
    good = np.isfinite(wide).all(axis=1) & (np.abs(wide) <= MAX_FLOAT32).all(axis=1) & wide.any(axis=1)
    if good.all():
        return wide.astype(np.float32), [None] * len(vectors)
    return _check_one_by_one(vectors, dimension)


def _check_one_by_one(vectors: Sequence[Any], dimension: int) -> tuple[np.ndarray, list[str | None]]:
    matrix = np.zeros((len(vectors), dimension), dtype=np.float32)
    errors: list[str | None] = []
    for row, values in enumerate(vectors):
        try:
            matrix[row] = check_values(values, dimension)
        except ValueError as exc:
            errors.append(str(exc))
        else:
            errors.append(None)
    return matrix, errors


def coerce_metadata(metadata: Mapping[str, Any] | None) -> Metadata:
    """Metadata in Pinecone's types (see the module docstring); raises ValueError naming the key."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a mapping, not {type(metadata).__name__}")
    clean: Metadata = {}
    for key, value in metadata.items():
        if type(key) is not str or not key or key[0] == "$":
            _check_key(key)  # raises, saying why
        if value is None:
            continue
        try:
            clean[key] = _coerce_value(value)
        except ValueError as exc:
            raise ValueError(f"metadata {key!r}: {exc}") from None
    return clean


def decode_metadata(metadata: Mapping[str, Any] | None) -> Metadata:
    """Metadata as read back from a store: integral numbers as ints, like `coerce_metadata` writes them.

    Adapters apply this to every metadata they return, because Pinecone answers `3.0` for `3`.
    """
    if not metadata:
        return {}
    return {key: _integral(value) if type(value) is float else value for key, value in metadata.items()}


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    """Compact JSON, the form whose size Pinecone limits. Raises ValueError for unencodable text."""
    return _encoded(metadata).decode()


def _encoded(metadata: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON. orjson writes exactly what `json.dumps(separators=(",", ":"),
    ensure_ascii=False)` does for strings, integers, booleans and lists of strings (tests hold
    it to that: the local store's filters look for such tokens in this text; a float may spell
    its exponent differently, "1e-8"), at a tenth of the cost, which was a third of writing a
    metadata-only update. Unlike json.dumps it writes NaN as null, so non-finite floats are
    refused here first."""
    for value in metadata.values():
        if type(value) is float and not math.isfinite(value):
            raise ValueError(f"metadata cannot be encoded as JSON: {value} is not a finite number")
        if type(value) is list and any(type(item) is float and not math.isfinite(item) for item in value):
            raise ValueError("metadata cannot be encoded as JSON: a list holds a number that is not finite")
    try:
        # A lone surrogate is refused too: no store could keep it.
        return orjson.dumps(metadata)
    except TypeError as exc:  # orjson.JSONEncodeError
        raise ValueError(f"metadata cannot be encoded as JSON: {exc}") from None


def metadata_size(metadata: Mapping[str, Any]) -> int:
    """Bytes of the metadata as compact UTF-8 JSON."""
    return len(_encoded(metadata))


def check_metadata_size(metadata: Mapping[str, Any]) -> str:
    """The encoded metadata, or ValueError when it is over Pinecone's 40 KB per vector."""
    encoded = _encoded(metadata)
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {len(encoded)} bytes as JSON, over the limit of {MAX_METADATA_BYTES}")
    return encoded.decode()


def check_record(record: VectorRecord, dimension: int) -> VectorRecord:
    """The record as a store keeps it (float32 values as floats, coerced metadata), or ValueError."""
    validate_vector_id(record.id)
    values = check_values(record.values, dimension)
    metadata = coerce_metadata(record.metadata)
    check_metadata_size(metadata)
    return VectorRecord(record.id, values.tolist(), metadata)


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise ValueError(f"metadata keys must be strings, not {type(key).__name__}: {key!r}")
    if not key:
        raise ValueError("metadata keys must not be empty")
    if key.startswith("$"):
        raise ValueError(f"metadata key {key!r} starts with '$', which Pinecone reserves for operators")


def _coerce_value(value: Any) -> Any:
    kind = type(value)
    # Exact built-in types first: metadata the engine builds is already in Pinecone's types, and
    # the isinstance checks against numbers.Real below are slow (abstract base classes).
    if kind is str or kind is bool:
        return value
    if kind is int:
        if -MAX_EXACT_INTEGER <= value <= MAX_EXACT_INTEGER:
            return value
        return _number(value)  # refused, with the reason
    if kind is float:
        return _number(value)
    if kind is list and all(type(item) is str for item in value):
        return list(value)
    if isinstance(value, str):
        return _plain_str(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (numbers.Real, Decimal)):
        return _number(value)
    if isinstance(value, (list, tuple)):
        return _string_list(value)
    if isinstance(value, (set, frozenset)):
        return sorted(_string_list(value))
    text = _temporal_or_uuid(value)
    if text is not None:
        return text
    if isinstance(value, Mapping):
        raise ValueError("nested objects are not allowed (Pinecone metadata is flat)")
    raise ValueError(f"{type(value).__name__} is not a string, number, boolean or list of strings")


def _string_list(values: Iterable[Any]) -> list[str]:
    strings: list[str] = []
    for item in values:
        if item is None:
            continue
        if isinstance(item, str):
            strings.append(_plain_str(item))
        elif isinstance(item, (bool, np.bool_)):
            strings.append("true" if item else "false")
        elif isinstance(item, (numbers.Real, Decimal)):
            strings.append(str(_number(item)))
        elif (text := _temporal_or_uuid(item)) is not None:
            strings.append(text)
        else:
            raise ValueError(f"a list may hold only strings (and values that read as strings), "
                             f"not {type(item).__name__}")
    return strings


def _number(value: numbers.Real | Decimal) -> int | float:
    if isinstance(value, numbers.Integral):
        integer = int(value)  # also turns an IntEnum or numpy integer into a plain int
        if abs(integer) > MAX_EXACT_INTEGER:
            raise ValueError(f"{integer} is beyond 2**53, which Pinecone's 64-bit floats cannot hold "
                             "exactly; store it as a string")
        return integer
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value} is not a finite number")
    return _integral(number)


def _integral(number: float) -> int | float:
    if number.is_integer() and abs(number) <= MAX_EXACT_INTEGER:
        return int(number)
    return number


def _plain_str(value: str) -> str:
    # A str subclass (an Enum member, say) would not compare or serialise like its text.
    return value if type(value) is str else str.__str__(value)


def _temporal_or_uuid(value: Any) -> str | None:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    # Neo4j's DateTime/Date/Time/Duration (neo4j.time) have iso_format(); importing the driver
    # here would tie this module, and the Pinecone test double using it, to Neo4j.
    iso_format = getattr(value, "iso_format", None)
    if callable(iso_format):
        return str(iso_format())
    return None
