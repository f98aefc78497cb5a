"""Each resolution rule gives its documented outcome (table-driven)."""

from datetime import UTC, datetime

import pytest

from sync.conflicts import rules
from sync.conflicts.rules import Side

OLD = datetime(2026, 1, 1, tzinfo=UTC)
NEW = datetime(2026, 6, 1, tzinfo=UTC)


def side(values, source="misp", confidence=0.9, at=OLD):
    return Side(values, source, confidence, at)


CASES = [
    # (kind, label, graph side, incoming side, expected values, rule, asks an analyst)
    ("threat_severity", "ThreatActor", side({"severity": "medium"}), side({"severity": "high"}, "otx", at=NEW),
     {"severity": "high"}, "highest_severity", False),
    ("threat_severity", "ThreatActor", side({"severity": "critical"}), side({"severity": "low"}, "otx", at=NEW),
     {"severity": "critical"}, "highest_severity", False),
    ("threat_intel", "ThreatIntel",
     side({"severity": "high", "confidence": 0.6, "sources": ["misp"], "observed_at": "2026-01-01"}),
     side({"severity": "medium", "confidence": 0.8, "sources": ["otx", "misp"], "observed_at": "2026-02-01"},
          "otx", at=NEW),
     {"severity": "high", "confidence": 0.7, "sources": ["misp", "otx"], "observed_at": "2026-02-01"}, "merge", False),
    ("prospect_metadata", "Prospect", side({"sector": "energy"}, at=NEW), side({"sector": "utilities"}, "crm", at=OLD),
     {"sector": "energy"}, "most_recent", False),
    ("prospect_metadata", "Prospect", side({"tier": "2"}, at=OLD), side({"tier": "1"}, "crm", at=NEW),
     {"tier": "1"}, "most_recent", False),
    ("vulnerability_score", "Vulnerability", side({"cvss_score": 9.8}, "cisa-kev"),
     side({"cvss_score": 7.5}, "vendor-feed", at=NEW), {"cvss_score": 9.8}, "authoritative_source", False),
    ("vulnerability_score", "Vulnerability", side({"cvss_score": 5.0}, "vendor-feed", at=NEW),
     side({"cvss_score": 8.1}, "cisa", at=OLD), {"cvss_score": 8.1}, "authoritative_source", False),
    ("vulnerability_score", "Vulnerability", side({"cvss_score": 5.0}, "nvd-mirror", at=OLD),
     side({"cvss_score": 6.1}, "vendor-feed", at=NEW), {"cvss_score": 6.1}, "authoritative_source", False),
    # Ask an analyst: a KEV severity downgrade, whatever the rule says.
    ("threat_severity", "KEV", side({"severity": "critical"}, "cisa-kev"), side({"severity": "low"}, "blog", at=NEW),
     {"severity": "critical"}, "highest_severity", False),
    # Ask an analyst: adopting a value from a low-confidence source.
    ("prospect_metadata", "Prospect", side({"sector": "energy"}), side({"sector": "retail"}, "scraper", 0.2, NEW),
     {"sector": "retail"}, "most_recent", True),
]


@pytest.mark.parametrize(("kind", "label", "graph", "incoming", "values", "rule", "asks"), CASES)
def test_each_rule_gives_its_documented_outcome(kind, label, graph, incoming, values, rule, asks):
    proposal = rules.propose(kind, label, graph, incoming)
    assert proposal.values == values
    assert proposal.rule == rule
    assert proposal.ask_analyst is asks


def test_last_write_wins_takes_the_newer_side():
    assert rules.last_write_wins(side({"x": 1}, at=NEW), side({"x": 2}, at=OLD)).values == {"x": 1}
    assert rules.last_write_wins(side({"x": 1}, at=OLD), side({"x": 2}, at=NEW)).values == {"x": 2}


def test_a_kev_downgrade_under_last_write_wins_asks_an_analyst(settings):
    settings.CONFLICT_RULES = {"threat_severity": "last_write_wins"}
    proposal = rules.propose("threat_severity", "KEV", side({"severity": "critical"}, "cisa-kev"),
                             side({"severity": "medium"}, "blog", at=NEW))
    assert proposal.ask_analyst and proposal.values == {"severity": "medium"}
    assert "downgrade the severity of a CISA KEV entry" in proposal.reasons[0]


def test_the_table_can_send_a_kind_to_an_analyst(settings):
    settings.CONFLICT_RULES = {"threat_severity": "ask_analyst"}
    proposal = rules.propose("threat_severity", "ThreatActor", side({"severity": "low"}),
                             side({"severity": "high"}, "otx", at=NEW))
    assert proposal.ask_analyst and proposal.rule == "ask_analyst" and proposal.values == {"severity": "high"}


@pytest.mark.parametrize(("label", "current", "incoming", "source", "expected"), [
    ("ThreatActor", {"severity": "high", "source": "misp"}, {"severity": "low"}, "otx", {"threat_severity": ["severity"]}),
    ("ThreatActor", {"severity": "high", "source": "misp"}, {"severity": "HIGH"}, "otx", {}),
    ("ThreatActor", {"severity": "high", "source": "misp"}, {"severity": "low"}, "misp", {}),  # own update
    ("ThreatActor", {"source": "misp"}, {"severity": "low"}, "otx", {}),  # nothing stored yet
    ("ThreatActor", {"description": "a", "source": "misp"}, {"description": "b"}, "otx", {}),  # not governed
    ("Malware", {"severity": "high", "source": "misp"}, {"severity": "low"}, "otx", {}),
    ("Vulnerability", {"cvss_score": 9.8, "severity": "critical", "source": "cisa-kev"},
     {"cvss_score": 7.0, "severity": "critical"}, "vendor", {"vulnerability_score": ["cvss_score"]}),
    ("ThreatIntel", {"sources": ["a", "b"], "source": "x"}, {"sources": ["b", "a"]}, "y", {}),
])
def test_disputes_are_found_on_governed_fields_only(label, current, incoming, source, expected):
    assert rules.disputes(label, current, incoming, source) == expected
