"""Conflict resolution rules: a table from conflict kind to rule, and the rules themselves.

A conflict arises when incoming intelligence from one source disagrees with the value another
source put in the graph, on a rule-governed field:

| kind                | fields                                      | default rule          |
|---------------------|---------------------------------------------|-----------------------|
| threat_intel        | ThreatIntel severity, confidence, sources, observed_at | merge      |
| threat_severity     | ThreatActor / KEV severity                  | highest_severity      |
| prospect_metadata   | Prospect name, sector, country, size_band, tier | most_recent       |
| vulnerability_score | Vulnerability cvss_score, severity          | authoritative_source  |

Rules: `last_write_wins` (newer `updated_at` wins), `merge` (highest severity, mean confidence,
union of sources, latest timestamp), `highest_severity`, `most_recent`, `authoritative_source`
(CISA wins; between two non-authoritative sources, the newer write), and `ask_analyst` (propose
last-write-wins but leave the conflict open). Whatever the rule, a proposal that downgrades the
severity of a KEV entry, that adopts a value from a source below CONFLICT_MIN_CONFIDENCE, or that
removes a value another source set, is sent to an analyst with the rule's proposal instead of
being applied.

A `null` (None) for a governed field is a claim like any other ("this field has no value") and is
disputed like one: were it not, a source could wipe a value it does not own and the next write,
from anyone, would meet nothing to dispute. The rules rank None below every value (highest
severity, merge), and where a rule would adopt it (the newer write, an authoritative source) the
removal goes to an analyst. A source may still clear a value it set itself, as it may change it.

The table can be changed without code: CONFLICT_RULES="threat_severity=ask_analyst,...".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from sync.models import Conflict

Kind = Conflict.Kind
SEVERITIES = ("info", "low", "medium", "high", "critical")
AUTHORITATIVE_SOURCES = ("cisa", "cisa-kev")

GOVERNED: dict[str, dict[str, str]] = {
    # label -> field -> conflict kind
    "ThreatIntel": dict.fromkeys(("severity", "confidence", "sources", "observed_at"), Kind.THREAT_INTEL),
    "ThreatActor": {"severity": Kind.THREAT_SEVERITY},
    "KEV": {"severity": Kind.THREAT_SEVERITY},
    "Vulnerability": dict.fromkeys(("cvss_score", "severity"), Kind.VULNERABILITY_SCORE),
    "Prospect": dict.fromkeys(("name", "sector", "country", "size_band", "tier"), Kind.PROSPECT_METADATA),
}

DEFAULT_RULES: dict[str, str] = {
    Kind.THREAT_INTEL: "merge",
    Kind.THREAT_SEVERITY: "highest_severity",
    Kind.PROSPECT_METADATA: "most_recent",
    Kind.VULNERABILITY_SCORE: "authoritative_source",
}


@dataclass(frozen=True)
class Side:
    """One side of a disagreement: the disputed values and where they came from."""

    values: Mapping[str, Any]
    source: str = ""
    confidence: float | None = None
    updated_at: datetime | None = None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "confidence": self.confidence,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


@dataclass(frozen=True)
class Proposal:
    values: dict[str, Any]  # the resolved value of every disputed field
    rule: str
    explanation: str
    ask_analyst: bool = False
    reasons: tuple[str, ...] = field(default_factory=tuple)


def severity_rank(value: Any) -> int:
    try:
        return SEVERITIES.index(str(value).strip().lower())
    except ValueError:
        return -1  # unknown severities lose to any known one


def _newer(graph: Side, incoming: Side) -> Side:
    if graph.updated_at and incoming.updated_at and graph.updated_at > incoming.updated_at:
        return graph
    return incoming  # an incoming write without a timestamp is the newest by definition


def last_write_wins(graph: Side, incoming: Side) -> Proposal:
    winner = _newer(graph, incoming)
    return Proposal(dict(winner.values), "last_write_wins",
                    f"the newer write wins ({winner.source or 'incoming'})")


def most_recent(graph: Side, incoming: Side) -> Proposal:
    proposal = last_write_wins(graph, incoming)
    return Proposal(proposal.values, "most_recent", proposal.explanation)


def highest_severity(graph: Side, incoming: Side) -> Proposal:
    values = dict(_newer(graph, incoming).values)
    if "severity" in graph.values or "severity" in incoming.values:
        values["severity"] = max((graph.values.get("severity"), incoming.values.get("severity")),
                                 key=severity_rank)
    return Proposal(values, "highest_severity", f"the higher severity wins ({values.get('severity')})")


def merge(graph: Side, incoming: Side) -> Proposal:
    """Threat intelligence: keep the worst case, average the confidence, keep every source."""
    values = dict(_newer(graph, incoming).values)
    keys = set(graph.values) | set(incoming.values)
    if "severity" in keys:
        values["severity"] = max((graph.values.get("severity"), incoming.values.get("severity")),
                                 key=severity_rank)
    if "confidence" in keys:
        numbers = [v for v in (graph.values.get("confidence"), incoming.values.get("confidence"))
                   if isinstance(v, int | float) and not isinstance(v, bool)]
        values["confidence"] = round(sum(numbers) / len(numbers), 4) if numbers else None
    if "sources" in keys:
        values["sources"] = sorted({*_as_list(graph.values.get("sources")),
                                    *_as_list(incoming.values.get("sources"))})
    if "observed_at" in keys:
        stamps = [v for v in (graph.values.get("observed_at"), incoming.values.get("observed_at")) if v]
        values["observed_at"] = max(stamps, key=str) if stamps else None
    return Proposal(values, "merge", "merged: highest severity, mean confidence, union of sources, "
                                     "latest timestamp")


def authoritative_source(graph: Side, incoming: Side) -> Proposal:
    graph_auth, incoming_auth = _authoritative(graph.source), _authoritative(incoming.source)
    if graph_auth != incoming_auth:
        winner = graph if graph_auth else incoming
        return Proposal(dict(winner.values), "authoritative_source",
                        f"{winner.source} is the authoritative source")
    proposal = last_write_wins(graph, incoming)
    return Proposal(proposal.values, "authoritative_source",
                    "no single authoritative source: " + proposal.explanation)


def ask_analyst(graph: Side, incoming: Side) -> Proposal:
    proposal = last_write_wins(graph, incoming)
    return Proposal(proposal.values, "ask_analyst", "the policy sends this kind to an analyst; "
                    "proposed: " + proposal.explanation, True, ("the rule table says ask an analyst",))


RULES: dict[str, Callable[[Side, Side], Proposal]] = {
    "last_write_wins": last_write_wins,
    "merge": merge,
    "highest_severity": highest_severity,
    "most_recent": most_recent,
    "authoritative_source": authoritative_source,
    "ask_analyst": ask_analyst,
}


def rule_table() -> dict[str, str]:
    table = dict(DEFAULT_RULES)
    table.update(settings.CONFLICT_RULES)
    return table


def propose(kind: str, label: str, graph: Side, incoming: Side) -> Proposal:
    rule = RULES[rule_table().get(kind, "last_write_wins")]
    proposal = rule(graph, incoming)
    reasons = list(proposal.reasons)
    if label == "KEV" and severity_rank(proposal.values.get("severity")) < severity_rank(
            graph.values.get("severity")) and "severity" in proposal.values:
        reasons.append("it would downgrade the severity of a CISA KEV entry")
    removes = sorted(k for k in proposal.values
                     if proposal.values[k] is None and graph.values.get(k) is not None)
    if removes:
        reasons.append(f"it would remove the {', '.join(removes)} another source set")
    adopts_incoming = any(proposal.values.get(k) == v and graph.values.get(k) != v
                          for k, v in incoming.values.items())
    if (adopts_incoming and incoming.confidence is not None
            and incoming.confidence < settings.CONFLICT_MIN_CONFIDENCE):
        reasons.append(f"the incoming source's confidence {incoming.confidence} is below "
                       f"{settings.CONFLICT_MIN_CONFIDENCE}")
    if reasons:
        return Proposal(proposal.values, proposal.rule, proposal.explanation, True, tuple(reasons))
    return proposal


def provenance_key(name: str) -> str:
    """The graph property recording which source (or rule) set a governed field's value."""
    return f"{name}_source"


def provenance(current: Mapping[str, Any], name: str) -> str:
    return str(current.get(provenance_key(name)) or current.get("source") or "")


def disputes(label: str, current: Mapping[str, Any], incoming: Mapping[str, Any],
             incoming_source: str) -> dict[str, list[str]]:
    """Governed fields where a value set by another source disagrees: kind -> fields.

    Provenance is per field: the node's `source` says who wrote last, not who set each value,
    and a value a rule kept must keep being defended against the source it overruled. An
    incoming None (remove the value) disputes a stored value like any other value does.
    """
    governed = GOVERNED.get(label, {})
    found: dict[str, list[str]] = {}
    for name, value in incoming.items():
        kind = governed.get(name)
        stored = current.get(name)
        if (kind and stored is not None and _differs(stored, value)
                and provenance(current, name) != incoming_source):  # a source may update its own value
            found.setdefault(kind, []).append(name)
    return found


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return sorted(map(str, a)) != sorted(map(str, b))
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() != b.strip().lower()
    return a != b


def _authoritative(source: str) -> bool:
    return (source or "").strip().lower() in AUTHORITATIVE_SOURCES


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple | set):
        return [str(v) for v in value]
    return [str(value)]
