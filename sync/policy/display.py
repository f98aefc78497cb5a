"""What the dashboard may show of a graph node, decided by the policy, not by property names.

A label's **display allow-list** is the engine's own keys (`ENGINE_DISPLAY_KEYS`: uid, version,
updated_at, source, confidence) and, for a label the policy syncs, its text fields, its metadata
allow-list and the provenance of each (`<field>_source`, which source set it). Anything else a
node holds — every property of a label that never syncs (Contact, Deal, Account, labels nobody
named), and a synced label's graph-only fields (a prospect's revenue, a KEV's notes) — is
*withheld by policy*: `WITHHELD` stands in its place wherever graph properties reach a person
(entity pages and their timelines, search results, conflicts, the audit log and its CSV export,
the JSON API). What reaches the vector index may be shown, since it already left the graph; the
dashboard shows nothing the index may not hold.

Revealing a withheld value is not a dashboard action: whoever must read one reads the graph
itself (Neo4j Browser, cypher-shell) under Neo4j's own accounts and logs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sync.policy.labels import policy_for

ENGINE_DISPLAY_KEYS = ("uid", "version", "updated_at", "source", "confidence")
PROVENANCE_SUFFIX = "_source"  # sync.conflicts.rules.provenance_key names a field's source so


class Withheld(str):
    """A value the policy does not let the dashboard show. A string, so that it reads (and
    serialises to JSON and CSV) as what it is; `is_withheld` tells it from a value that merely
    says the same."""

    __slots__ = ()


WITHHELD = Withheld("withheld by policy")


@functools.lru_cache(maxsize=512)
def shown_fields(label: str) -> frozenset[str]:
    """The properties of `label`'s nodes the dashboard may show."""
    policy = policy_for(label)
    shown = set(ENGINE_DISPLAY_KEYS)
    if policy.synced:
        allowed = {*policy.text_property_names, *policy.metadata_fields}
        shown |= allowed | {name + PROVENANCE_SUFFIX for name in allowed}
    return frozenset(shown)


def may_show(label: str, name: Any) -> bool:
    return isinstance(name, str) and name in shown_fields(label)


def shown_value(label: str, name: Any, value: Any) -> Any:
    """`value` if the policy lets the dashboard show `label`.`name`, else WITHHELD."""
    return value if may_show(label, name) else WITHHELD


def shown_properties(label: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping with every value the dashboard may not show replaced by WITHHELD (the names
    stay: that a field exists is not withheld)."""
    return {name: shown_value(label, name, value) for name, value in properties.items()}


def is_withheld(value: Any) -> bool:
    return isinstance(value, Withheld)
