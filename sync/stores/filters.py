"""Pinecone metadata filters: validation and evaluation, exactly as Pinecone reads them.

A filter is a dict. Each key is either a field name or `$and`/`$or` (a list of filters); several
keys mean all of them must hold. A field maps to a bare value (short for `$eq`) or to a dict of
operators, all of which must hold: `$eq $ne` (string, number or boolean), `$gt $gte $lt $lte`
(number), `$in $nin` (a list of at most 10,000 strings or numbers), `$exists` (boolean).

Semantics, where they are easy to get wrong:
- Types never mix: `True` does not equal `1`, `"1"` does not equal `1`; `1` equals `1.0`.
- A list-of-strings field "takes on every value it holds": `$eq`/`$in` match when any element
  matches, `$ne`/`$nin` when no element does.
- A record without the field matches neither `$ne` nor `$nin` (only `$exists: false` finds it).
  Pinecone has answered this way since 2024 (reported in deepset-ai/haystack-core-integrations#590),
  unlike MongoDB, whose language it borrows.
- `$gt`/`$gte`/`$lt`/`$lte` match only number fields.
- An empty filter `{}` matches everything; an empty `$and`/`$or` list or operator dict is an error.

`compile_filter` validates once and returns a predicate to run over many records; `matches` and
`validate_filter` are the one-off forms. Pure Python, so the Pinecone test double can use it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]

MAX_IN_VALUES = 10_000
FIELD_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"})
LOGICAL_OPERATORS = frozenset({"$and", "$or"})
OPERATORS = FIELD_OPERATORS | LOGICAL_OPERATORS


def validate_filter(filter: Any) -> None:
    """Raise ValueError, naming the operator or field at fault, unless Pinecone would accept `filter`."""
    compile_filter(filter)


def matches(metadata: Mapping[str, Any], filter: Any) -> bool:
    """Whether a record with this metadata is selected by `filter` (validated first)."""
    return compile_filter(filter)(metadata)


def compile_filter(filter: Any) -> Predicate:
    """A predicate over metadata dicts equivalent to `filter`; raises ValueError if it is invalid."""
    if not isinstance(filter, Mapping):
        raise ValueError(f"a filter must be an object (dict), not {type(filter).__name__}")
    if not filter:
        return _always
    return _compile_condition(filter, "filter")


def _always(metadata: Mapping[str, Any]) -> bool:
    return True


def _compile_condition(condition: Mapping[str, Any], where: str) -> Predicate:
    parts: list[Predicate] = []
    for key, value in condition.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: field names must be non-empty strings, got {key!r}")
        if key in LOGICAL_OPERATORS:
            parts.append(_compile_logical(key, value, where))
        elif key.startswith("$"):
            raise ValueError(f"{where}: unknown operator {key!r} (allowed at this level: $and, $or, "
                             "or a field name)")
        else:
            parts.append(_compile_field(key, value, where))
    return _all_of(parts)


def _compile_logical(operator: str, value: Any, where: str) -> Predicate:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: {operator} needs a non-empty list of filters")
    parts = []
    for index, sub in enumerate(value):
        here = f"{where}.{operator}[{index}]"
        if not isinstance(sub, Mapping) or not sub:
            raise ValueError(f"{here}: each element of {operator} must be a non-empty filter object")
        parts.append(_compile_condition(sub, here))
    return _all_of(parts) if operator == "$and" else _any_of(parts)


def _compile_field(field: str, spec: Any, where: str) -> Predicate:
    here = f"{where}.{field}"
    if isinstance(spec, Mapping):
        if not spec:
            raise ValueError(f"{here}: no operator given")
        return _all_of([_compile_operator(field, operator, operand, here)
                        for operator, operand in spec.items()])
    if isinstance(spec, (list, tuple)):
        raise ValueError(f"{here}: a list is not a value to compare with; use {{'$in': [...]}}")
    return _compile_operator(field, "$eq", spec, here)


def _compile_operator(field: str, operator: Any, operand: Any, where: str) -> Predicate:
    if operator not in FIELD_OPERATORS:
        hint = "" if str(operator).startswith("$") else " (metadata values cannot be objects)"
        raise ValueError(f"{where}: unknown operator {operator!r}{hint}; allowed: "
                         f"{', '.join(sorted(FIELD_OPERATORS))}")
    here = f"{where}.{operator}"
    if operator == "$exists":
        if not isinstance(operand, bool):
            raise ValueError(f"{here}: needs true or false, got {operand!r}")
        return (lambda m: field in m) if operand else (lambda m: field not in m)
    if operator in ("$eq", "$ne"):
        _check_scalar(operand, here)
        equal = _equality(operand)
        if operator == "$eq":
            return lambda m: field in m and equal(m[field])
        return lambda m: field in m and not equal(m[field])
    if operator in ("$in", "$nin"):
        contains = _membership(operand, here)
        if operator == "$in":
            return lambda m: field in m and contains(m[field])
        return lambda m: field in m and not contains(m[field])
    if not _is_number(operand) or not math.isfinite(operand):
        raise ValueError(f"{here}: needs a finite number, got {operand!r}")
    return _comparison(field, operator, operand)


def _comparison(field: str, operator: str, bound: float) -> Predicate:
    if operator == "$gt":
        return lambda m: field in m and _is_number(m[field]) and m[field] > bound
    if operator == "$gte":
        return lambda m: field in m and _is_number(m[field]) and m[field] >= bound
    if operator == "$lt":
        return lambda m: field in m and _is_number(m[field]) and m[field] < bound
    return lambda m: field in m and _is_number(m[field]) and m[field] <= bound


def _equality(wanted: Any) -> Callable[[Any], bool]:
    """Whether a stored value (or, for a list, any of its elements) equals `wanted`, type for type."""
    if isinstance(wanted, bool):
        return lambda value: type(value) is bool and value is wanted
    if isinstance(wanted, str):
        return lambda value: value == wanted if isinstance(value, str) else (
            isinstance(value, list) and wanted in value)
    return lambda value: _is_number(value) and value == wanted


def _membership(operand: Any, where: str) -> Callable[[Any], bool]:
    if not isinstance(operand, (list, tuple)):
        raise ValueError(f"{where}: needs a list of strings or numbers, got {operand!r}")
    if len(operand) > MAX_IN_VALUES:
        raise ValueError(f"{where}: at most {MAX_IN_VALUES} values are allowed, got {len(operand)}")
    strings: set[str] = set()
    numbers: set[int | float] = set()
    for item in operand:
        if isinstance(item, str):
            strings.add(item)
        elif _is_number(item) and math.isfinite(item):
            numbers.add(item)
        else:
            raise ValueError(f"{where}: values must be strings or finite numbers, got {item!r}")

    def contains(value: Any) -> bool:
        if isinstance(value, str):
            return value in strings
        if isinstance(value, list):
            return not strings.isdisjoint(value)
        return _is_number(value) and value in numbers

    return contains


def _check_scalar(operand: Any, where: str) -> None:
    if isinstance(operand, (str, bool)):
        return
    if _is_number(operand) and math.isfinite(operand):
        return
    raise ValueError(f"{where}: needs a string, finite number or boolean, got {operand!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _all_of(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    return lambda m: all(part(m) for part in parts)


def _any_of(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    return lambda m: any(part(m) for part in parts)
