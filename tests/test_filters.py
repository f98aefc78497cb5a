"""Pinecone's filter language as sync.stores.filters reads it: one case per row."""

from __future__ import annotations

import math

import pytest

from sync.stores.filters import MAX_IN_VALUES, compile_filter, matches, validate_filter

RECORD = {
    "label": "ThreatActor",
    "severity": "high",
    "score": 7.5,
    "count": 3,
    "active": True,
    "dormant": False,
    "tags": ["apt", "russia"],
    "empty": [],
    "numeric_text": "3",
}

# (filter, expected) against RECORD.
MATCH_CASES = [
    # bare values are $eq; several keys are all required
    ({}, True),
    ({"label": "ThreatActor"}, True),
    ({"label": "threatactor"}, False),
    ({"label": "ThreatActor", "severity": "high"}, True),
    ({"label": "ThreatActor", "severity": "low"}, False),
    # $eq keeps types apart: True is not 1, "3" is not 3, 3 is 3.0
    ({"count": {"$eq": 3}}, True),
    ({"count": {"$eq": 3.0}}, True),
    ({"count": {"$eq": "3"}}, False),
    ({"numeric_text": {"$eq": 3}}, False),
    ({"numeric_text": "3"}, True),
    ({"active": True}, True),
    ({"active": 1}, False),
    ({"count": True}, False),
    ({"dormant": False}, True),
    ({"dormant": 0}, False),
    # a list field takes on every value it holds
    ({"tags": "apt"}, True),
    ({"tags": "russia"}, True),
    ({"tags": "crime"}, False),
    ({"tags": {"$ne": "apt"}}, False),
    ({"tags": {"$ne": "crime"}}, True),
    ({"tags": {"$in": ["crime", "russia"]}}, True),
    ({"tags": {"$in": ["crime"]}}, False),
    ({"tags": {"$nin": ["crime", "russia"]}}, False),
    ({"tags": {"$nin": ["crime"]}}, True),
    ({"$and": [{"tags": "apt"}, {"tags": "russia"}]}, True),
    ({"$and": [{"tags": "apt"}, {"tags": "crime"}]}, False),
    ({"empty": "x"}, False),
    ({"empty": {"$ne": "x"}}, True),
    ({"empty": {"$nin": ["x"]}}, True),
    ({"empty": {"$exists": True}}, True),
    # $ne and $nin
    ({"severity": {"$ne": "low"}}, True),
    ({"severity": {"$ne": "high"}}, False),
    ({"count": {"$ne": 3.0}}, False),
    ({"active": {"$ne": 1}}, True),
    ({"severity": {"$nin": ["low", "medium"]}}, True),
    ({"severity": {"$nin": ["low", "high"]}}, False),
    # a missing field matches nothing but $exists: false, not even $ne/$nin
    ({"missing": "x"}, False),
    ({"missing": {"$ne": "x"}}, False),
    ({"missing": {"$nin": ["x"]}}, False),
    ({"missing": {"$in": ["x"]}}, False),
    ({"missing": {"$gt": 0}}, False),
    ({"missing": {"$exists": False}}, True),
    ({"missing": {"$exists": True}}, False),
    ({"label": {"$exists": True}}, True),
    ({"label": {"$exists": False}}, False),
    # comparisons only between numbers
    ({"score": {"$gt": 7}}, True),
    ({"score": {"$gt": 7.5}}, False),
    ({"score": {"$gte": 7.5}}, True),
    ({"score": {"$lt": 8}}, True),
    ({"score": {"$lt": 7.5}}, False),
    ({"score": {"$lte": 7.5}}, True),
    ({"count": {"$gt": -1.5}}, True),
    ({"numeric_text": {"$gt": 1}}, False),
    ({"active": {"$gt": 0}}, False),
    ({"tags": {"$gt": 0}}, False),
    ({"score": {"$gt": 5, "$lt": 8}}, True),
    ({"score": {"$gt": 5, "$lt": 7}}, False),
    # $in / $nin with strings and numbers
    ({"label": {"$in": ["Report", "ThreatActor"]}}, True),
    ({"label": {"$in": ["Report"]}}, False),
    ({"count": {"$in": [1, 3]}}, True),
    ({"count": {"$in": [3.0]}}, True),
    ({"count": {"$in": ["3"]}}, False),
    ({"numeric_text": {"$in": [3]}}, False),
    ({"active": {"$in": [1]}}, False),
    ({"label": {"$in": []}}, False),
    ({"label": {"$nin": []}}, True),
    ({"count": {"$nin": [1, 2]}}, True),
    ({"count": {"$nin": [3]}}, False),
    ({"label": {"$in": [1, "ThreatActor"]}}, True),
    # $and / $or, nested
    ({"$and": [{"label": "ThreatActor"}, {"score": {"$gt": 7}}]}, True),
    ({"$and": [{"label": "ThreatActor"}, {"score": {"$gt": 8}}]}, False),
    ({"$or": [{"label": "Report"}, {"score": {"$gt": 7}}]}, True),
    ({"$or": [{"label": "Report"}, {"score": {"$gt": 8}}]}, False),
    ({"$or": [{"missing": "x"}, {"missing": {"$exists": False}}]}, True),
    ({"$and": [{"$or": [{"label": "Report"}, {"tags": "apt"}]},
               {"$or": [{"count": {"$lt": 0}}, {"active": True}]}]}, True),
    ({"$or": [{"$and": [{"label": "Report"}, {"tags": "apt"}]},
              {"$and": [{"label": "ThreatActor"}, {"active": False}]}]}, False),
    ({"label": "ThreatActor", "$or": [{"count": 4}, {"count": 3}]}, True),
    ({"label": "Report", "$or": [{"count": 4}, {"count": 3}]}, False),
]


@pytest.mark.parametrize(("condition", "expected"), MATCH_CASES, ids=[str(c) for c, _ in MATCH_CASES])
def test_it_matches_like_pinecone(condition, expected):
    assert matches(RECORD, condition) is expected


def test_it_matches_an_empty_record_only_by_absence():
    assert matches({}, {"a": {"$exists": False}})
    assert not matches({}, {"a": {"$ne": 1}})
    assert not matches({}, {"a": {"$nin": [1]}})
    assert matches({}, {})


def test_a_compiled_filter_is_reusable():
    predicate = compile_filter({"$or": [{"n": {"$lt": 2}}, {"tags": "x"}]})
    records = [{"n": 0}, {"n": 5}, {"n": 9, "tags": ["x"]}, {}]
    assert [predicate(r) for r in records] == [True, False, True, False]
    assert [predicate(r) for r in records] == [True, False, True, False]


# (filter, a piece of the message that must name what is wrong)
INVALID_CASES = [
    ("label = 'x'", "must be an object"),
    (["label"], "must be an object"),
    ({"$not": {"a": 1}}, r"\$not"),
    ({"$nor": [{"a": 1}]}, r"\$nor"),
    ({"$eq": 1}, r"\$eq"),
    ({"a": {"$regex": "x"}}, r"\$regex"),
    ({"a": {"$all": ["x"]}}, r"\$all"),
    ({"a": {"$elemMatch": {"$eq": "x"}}}, r"\$elemMatch"),
    ({"a": {"b": 1}}, "cannot be objects"),
    ({"a": {}}, "no operator"),
    ({"a": None}, r"filter\.a\.\$eq: needs a string"),
    ({"a": ["x", "y"]}, r"\$in"),
    ({"a": {"$eq": ["x"]}}, r"\$eq"),
    ({"a": {"$eq": None}}, r"\$eq"),
    ({"a": {"$eq": {"x": 1}}}, r"\$eq"),
    ({"a": {"$ne": [1]}}, r"\$ne"),
    ({"a": math.nan}, r"\$eq"),
    ({"a": {"$gt": "5"}}, r"\$gt"),
    ({"a": {"$gte": True}}, r"\$gte"),
    ({"a": {"$lt": None}}, r"\$lt"),
    ({"a": {"$lte": math.inf}}, r"\$lte"),
    ({"a": {"$in": "x"}}, r"\$in"),
    ({"a": {"$in": [True]}}, r"\$in"),
    ({"a": {"$in": [None]}}, r"\$in"),
    ({"a": {"$in": [["x"]]}}, r"\$in"),
    ({"a": {"$nin": [{"x": 1}]}}, r"\$nin"),
    ({"a": {"$in": list(range(MAX_IN_VALUES + 1))}}, "10000"),
    ({"a": {"$exists": 1}}, r"\$exists"),
    ({"a": {"$exists": "true"}}, r"\$exists"),
    ({"$and": {"a": 1}}, r"\$and"),
    ({"$and": []}, r"\$and"),
    ({"$or": []}, r"\$or"),
    ({"$or": [{}]}, r"\$or"),
    ({"$or": ["a"]}, r"\$or"),
    ({"$and": [{"a": {"$foo": 1}}]}, r"\$foo"),
    ({"": 1}, "non-empty"),
    ({1: "x"}, "non-empty strings"),
]


@pytest.mark.parametrize(("condition", "message"), INVALID_CASES, ids=[repr(c)[:60] for c, _ in INVALID_CASES])
def test_it_refuses_an_invalid_filter_naming_the_problem(condition, message):
    with pytest.raises(ValueError, match=message):
        validate_filter(condition)
    with pytest.raises(ValueError):
        matches(RECORD, condition)


def test_it_accepts_the_largest_in_list():
    values = [f"v{n}" for n in range(MAX_IN_VALUES - 1)] + ["ThreatActor"]
    validate_filter({"label": {"$in": values}})
    assert matches(RECORD, {"label": {"$in": values}})
    assert not matches(RECORD, {"label": {"$nin": values}})


def test_it_validates_before_looking_at_any_record():
    # A bad operator deep in an $or branch that a record would never reach is still an error.
    with pytest.raises(ValueError, match=r"\$bad"):
        compile_filter({"$or": [{"label": "ThreatActor"}, {"x": {"$bad": 1}}]})
