"""Pinecone's data rules as sync.stores.metadata applies them: ids, values, metadata, limits."""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import uuid
from decimal import Decimal

import neo4j.time
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.stores.base import VectorRecord
from sync.stores.metadata import (
    MAX_IDS_PER_REQUEST,
    MAX_METADATA_BYTES,
    MAX_UPSERT_BYTES,
    MAX_UPSERT_VECTORS,
    check_metadata_size,
    check_record,
    check_values,
    check_vectors,
    coerce_metadata,
    decode_metadata,
    is_valid_vector_id,
    metadata_size,
    validate_vector_id,
)


def test_the_limits_are_pinecones():
    assert MAX_METADATA_BYTES == 40960
    assert MAX_UPSERT_VECTORS == 1000
    assert MAX_UPSERT_BYTES == 2 * 1024 * 1024
    assert MAX_IDS_PER_REQUEST == 1000


# -- ids --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vector_id", [
    "a", "ThreatActor:apt29", "Report:r%2F1#0", "x" * 512, " ", "~", "".join(chr(c) for c in range(32, 127)),
])
def test_it_accepts_printable_ascii_ids_up_to_512_characters(vector_id):
    assert validate_vector_id(vector_id) == vector_id
    assert is_valid_vector_id(vector_id)


@pytest.mark.parametrize(("vector_id", "message"), [
    ("", "empty"),
    ("x" * 513, "at most 512"),
    ("Report:é", "printable ASCII"),
    ("Report:\n", "printable ASCII"),
    ("Report:\t", "printable ASCII"),
    ("Report:\x7f", "printable ASCII"),
    ("Report:\x00", "printable ASCII"),
    (None, "string"),
    (42, "string"),
])
def test_it_refuses_other_ids(vector_id, message):
    with pytest.raises(ValueError, match=message):
        validate_vector_id(vector_id)
    assert not is_valid_vector_id(vector_id)


# -- values -----------------------------------------------------------------------------------------

def test_it_checks_values_into_float32():
    values = check_values([1, 2.5, -3], 3)
    assert values.dtype == np.float32
    assert values.tolist() == [1.0, 2.5, -3.0]
    assert check_values(np.arange(1, 4, dtype=np.float64), 3).tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(("values", "message"), [
    ([1.0, 2.0], "has 2 values, the index has dimension 3"),
    ([1.0, 2.0, 3.0, 4.0], "has 4 values"),
    ([1.0, math.nan, 3.0], "finite"),
    ([1.0, math.inf, 3.0], "finite"),
    ([1.0, -math.inf, 3.0], "finite"),
    ([1.0, 1e39, 3.0], "finite float32"),
    ([0.0, 0.0, 0.0], "non-zero"),
    (["1", "2", "3"], "numbers"),
    ([True, False, True], "numbers"),
    ([[1.0], [2.0], [3.0]], "flat"),
    ([1.0, None, 3.0], "numbers"),
    ("abc", "numbers"),
])
def test_it_refuses_values_pinecone_would_refuse(values, message):
    with pytest.raises(ValueError, match=message):
        check_values(values, 3)


def test_it_checks_a_batch_of_vectors_row_by_row():
    good = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    matrix, errors = check_vectors(good, 3)
    assert errors == [None, None]
    assert matrix.dtype == np.float32 and matrix.tolist() == good

    matrix, errors = check_vectors([[1.0, 0.0, 0.0], [math.nan, 0.0, 0.0], [1.0, 2.0], [0.0, 0.0, 3.0]], 3)
    assert errors[0] is None and errors[3] is None
    assert "finite" in errors[1] and "has 2 values" in errors[2]
    assert matrix[3].tolist() == [0.0, 0.0, 3.0]

    matrix, errors = check_vectors([], 3)
    assert errors == [] and matrix.shape == (0, 3)


# -- metadata coercion ------------------------------------------------------------------------------

class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


COERCIONS = [
    ({"a": "text"}, {"a": "text"}),
    ({"a": None}, {}),
    ({"a": True, "b": False}, {"a": True, "b": False}),
    ({"a": 3}, {"a": 3}),
    ({"a": 2.0}, {"a": 2}),
    ({"a": -0.0}, {"a": 0}),
    ({"a": 2.5}, {"a": 2.5}),
    ({"a": 1e20}, {"a": 1e20}),
    ({"a": 2**53}, {"a": 2**53}),
    ({"a": -(2**53)}, {"a": -(2**53)}),
    ({"a": Decimal("1.25")}, {"a": 1.25}),
    ({"a": Decimal("4")}, {"a": 4}),
    ({"a": np.float32(0.5)}, {"a": 0.5}),
    ({"a": np.int64(7)}, {"a": 7}),
    ({"a": np.bool_(True)}, {"a": True}),
    ({"a": ["x", "y"]}, {"a": ["x", "y"]}),
    ({"a": []}, {"a": []}),
    ({"a": ("b", "a")}, {"a": ["b", "a"]}),
    ({"a": {"b", "c", "a"}}, {"a": ["a", "b", "c"]}),
    ({"a": frozenset({"z", "y"})}, {"a": ["y", "z"]}),
    ({"a": ["x", None, 3, 2.0, 1.5, True, False]}, {"a": ["x", "3", "2", "1.5", "true", "false"]}),
    ({"a": [dt.date(2024, 1, 2)]}, {"a": ["2024-01-02"]}),
    ({"a": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)}, {"a": "2024-01-02T03:04:05+00:00"}),
    ({"a": dt.datetime(2024, 1, 2, 3, 4, 5)}, {"a": "2024-01-02T03:04:05"}),
    ({"a": dt.date(2024, 1, 2)}, {"a": "2024-01-02"}),
    ({"a": dt.time(3, 4)}, {"a": "03:04:00"}),
    ({"a": neo4j.time.DateTime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)}, {"a": "2024-01-02T03:04:05.000000000+00:00"}),
    ({"a": neo4j.time.Date(2024, 1, 2)}, {"a": "2024-01-02"}),
    ({"a": uuid.UUID(int=1)}, {"a": "00000000-0000-0000-0000-000000000001"}),
    ({"a": Colour.RED}, {"a": "red"}),
    ({"a": Level.HIGH}, {"a": 3}),
    ({"é": "ü"}, {"é": "ü"}),
]


@pytest.mark.parametrize(("given", "expected"), COERCIONS, ids=[repr(g)[:50] for g, _ in COERCIONS])
def test_it_coerces_metadata_to_pinecone_types(given, expected):
    coerced = coerce_metadata(given)
    assert coerced == expected
    assert [type(v) for v in coerced.values()] == [type(v) for v in expected.values()]
    # What goes in is what comes back out of JSON, so every store can return it unchanged.
    assert json.loads(json.dumps(coerced)) == coerced
    assert coerce_metadata(coerced) == coerced


def test_it_coerces_plain_strings_out_of_enums():
    coerced = coerce_metadata({"a": Colour.RED, "b": [Colour.RED]})
    assert type(coerced["a"]) is str and type(coerced["b"][0]) is str
    assert type(coerce_metadata({"a": Level.HIGH})["a"]) is int


def test_none_metadata_is_empty():
    assert coerce_metadata(None) == {}
    assert coerce_metadata({}) == {}


@pytest.mark.parametrize(("given", "message"), [
    ({"$label": "x"}, r"'\$label' starts with '\$'"),
    ({"": "x"}, "must not be empty"),
    ({1: "x"}, "keys must be strings"),
    ({"a": {"b": 1}}, "'a': nested objects"),
    ({"a": [["x"]]}, "'a': a list may hold only strings"),
    ({"a": [{"x": 1}]}, "'a': a list may hold only strings"),
    ({"a": math.nan}, "'a': nan is not a finite number"),
    ({"a": math.inf}, "'a'"),
    ({"a": Decimal("NaN")}, "'a'"),
    ({"a": [math.nan]}, "'a'"),
    ({"a": 2**53 + 1}, "'a': .* store it as a string"),
    ({"a": -(2**53) - 1}, "'a'"),
    ({"a": b"bytes"}, "'a': bytes is not"),
    ({"a": object()}, "'a': object is not"),
    ("not a dict", "mapping"),
])
def test_it_refuses_metadata_pinecone_cannot_hold(given, message):
    with pytest.raises(ValueError, match=message):
        coerce_metadata(given)


def test_decoding_turns_integral_numbers_back_into_ints():
    # Pinecone answers 3.0 for a stored 3; every adapter decodes to what coerce_metadata wrote.
    decoded = decode_metadata({"version": 3.0, "ratio": 2.5, "flag": True, "n": 7, "tags": ["1.0"],
                               "big": 1e20, "label": "x"})
    assert decoded == {"version": 3, "ratio": 2.5, "flag": True, "n": 7, "tags": ["1.0"], "big": 1e20,
                       "label": "x"}
    assert type(decoded["version"]) is int and type(decoded["flag"]) is bool
    assert type(decoded["big"]) is float
    assert decode_metadata(None) == {}


# -- size -------------------------------------------------------------------------------------------

def test_size_is_bytes_of_compact_utf8_json():
    assert metadata_size({}) == 2
    assert metadata_size({"a": 1}) == len('{"a":1}')
    assert metadata_size({"a": ["x", "y"], "b": True}) == len('{"a":["x","y"],"b":true}')
    assert metadata_size({"a": "é"}) == len('{"a":""}') + 2
    assert metadata_size({"a": "✓"}) == len('{"a":""}') + 3


def test_the_size_limit_is_inclusive():
    filler = "x" * (MAX_METADATA_BYTES - len('{"t":""}'))
    assert check_metadata_size({"t": filler}) == json.dumps({"t": filler}, separators=(",", ":"))
    with pytest.raises(ValueError, match="40961 bytes"):
        check_metadata_size({"t": filler + "x"})
    # Multi-byte characters count as their UTF-8 bytes, not as one character each.
    with pytest.raises(ValueError, match="over the limit"):
        check_metadata_size({"t": "é" * (MAX_METADATA_BYTES // 2)})


def test_text_no_store_can_encode_is_refused():
    with pytest.raises(ValueError, match="encoded"):
        metadata_size({"a": "\ud800"})
    with pytest.raises(ValueError, match="encoded"):
        metadata_size({"a": ["x", "\udfff"]})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_numbers_json_cannot_hold_are_refused_not_written_as_null(value):
    with pytest.raises(ValueError, match="not.*finite"):
        check_metadata_size({"a": value})
    with pytest.raises(ValueError, match="not finite"):
        check_metadata_size({"a": ["x", value]})


_text = st.text(st.characters(exclude_categories=["Cs"]))
_keys = _text.filter(bool)
_exact_values = st.one_of(_text, st.booleans(), st.integers(-(2**53), 2**53), st.lists(_text, max_size=5))


@given(st.dictionaries(_keys, _exact_values, max_size=8))
def test_metadata_is_encoded_exactly_as_json_dumps_writes_it(metadata):
    # The local store's prefilter looks for json.dumps' tokens in this text (sql_prefilter).
    expected = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
    assert check_metadata_size(metadata) == expected
    assert metadata_size(metadata) == len(expected.encode("utf-8"))


@given(st.dictionaries(_keys, st.floats(allow_nan=False, allow_infinity=False), max_size=8))
def test_floats_read_back_as_written(metadata):
    # Only the exponent may be spelled differently from json.dumps ("1e-8", not "1e-08").
    assert json.loads(check_metadata_size(metadata)) == metadata


# -- whole records ----------------------------------------------------------------------------------

def test_check_record_returns_the_record_as_stored():
    record = check_record(VectorRecord("Report:r1", [0.1, 2, -3.5], {"n": 2.0, "gone": None, "t": ("b",)}), 3)
    assert record.id == "Report:r1"
    assert record.values == [float(np.float32(0.1)), 2.0, -3.5]
    assert record.metadata == {"n": 2, "t": ["b"]}


@pytest.mark.parametrize(("record", "message"), [
    (VectorRecord("Report:é", [1.0, 0.0, 0.0]), "printable ASCII"),
    (VectorRecord("Report:r1", [1.0, 0.0]), "dimension 3"),
    (VectorRecord("Report:r1", [1.0, math.nan, 0.0]), "finite"),
    (VectorRecord("Report:r1", [0.0, 0.0, 0.0]), "non-zero"),
    (VectorRecord("Report:r1", [1.0, 0.0, 0.0], {"$x": 1}), r"\$"),
    (VectorRecord("Report:r1", [1.0, 0.0, 0.0], {"t": "x" * MAX_METADATA_BYTES}), "over the limit"),
])
def test_check_record_says_what_is_wrong(record, message):
    with pytest.raises(ValueError, match=message):
        check_record(record, 3)
