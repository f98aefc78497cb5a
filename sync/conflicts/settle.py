"""Settling a write's disputed fields by the rule table, before the write reaches the graph.

A write path (sync.writes) hands over the node as it stands and the values it brings; for each
kind of dispute (sync.conflicts.rules) the rule either decides — the values to write, and an
auto-resolved conflict recorded once the write has its version — or asks an analyst, and the
graph keeps its value until one decides (the conflict is opened before the graph changes).
"""

from __future__ import annotations

from typing import Any

from sync.conflicts import records as conflicts
from sync.conflicts import rules
from sync.stores.base import Entity


def settle(current: Entity, incoming: dict[str, Any], source: str, confidence: float | None):
    """Apply the rule table to each disputed kind; returns the values to write, the conflicts to
    open for an analyst (before the write: `() -> (conflict, created)`), and the auto-resolved
    conflicts to record once the write has its version (`entity -> conflict`)."""
    held_back, auto = [], []
    props = current.properties
    governed = rules.GOVERNED.get(current.label, {})
    # Who sets each governed value this write carries: the caller, unless a rule decides below.
    origin = {name: source for name in incoming if name in governed}
    for kind, fields in rules.disputes(current.label, props, incoming, source).items():
        graph_side = rules.Side({f: props.get(f) for f in fields}, rules.provenance(props, fields[0]),
                                props.get("confidence"), current.updated_at)
        other = rules.Side({f: incoming[f] for f in fields}, source, confidence, None)
        proposal = rules.propose(kind, current.label, graph_side, other)
        if proposal.ask_analyst:
            for name in fields:
                incoming.pop(name)  # the graph keeps its value until an analyst decides
                origin.pop(name)
            held_back.append(lambda k=kind, g=graph_side, o=other, p=proposal: conflicts.open_conflict(
                k, current.label, current.uid, graph_version=current.version, graph_side=dict(g.values),
                other_side=dict(o.values), graph_meta=g, other_meta=o, proposal=p, with_created=True))
            continue
        for name in fields:
            value = proposal.values.get(name)
            if value == props.get(name):
                incoming.pop(name)  # the graph's value stands, and so does its provenance
                origin.pop(name)
            else:
                incoming[name] = value
                origin[name] = source if value == other.values[name] else f"rule:{proposal.rule}"
        auto.append(lambda entity, k=kind, g=graph_side, o=other, p=proposal:
                    conflicts.record_auto_resolved(k, entity, g, o, p))
    incoming.update({rules.provenance_key(name): who for name, who in origin.items()})
    return incoming, held_back, auto
