"""The sync policy as people read it (the Policy page, `GET /api/v1/policy`): per label whether
it syncs and how, and what never leaves the graph. Everything here is read from sync.policy and
the settings, so the page cannot drift from what the engine does."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from sync.policy import labels as policy
from sync.policy.document import SNIPPET_MAX_CHARS
from sync.policy.labels import POLICY, LabelPolicy
from sync.policy.redact import phone_regions


@dataclass(frozen=True)
class LabelRow:
    label: str
    synced: bool
    data_type: str
    priority: str  # "high" / "medium" / "low"; "" for a never-synced label
    write_mode: str
    write_mode_words: str
    on_vector_failure: str
    on_vector_failure_words: str
    text_fields: tuple[tuple[str, str], ...]
    metadata_fields: tuple[str, ...]
    freshness_target: float | None  # seconds, for the label's priority
    description: str

    def as_json(self) -> dict:
        return {
            "label": self.label, "synced": self.synced, "data_type": self.data_type,
            "priority": self.priority or None, "write_mode": self.write_mode or None,
            "on_vector_failure": self.on_vector_failure or None,
            "text_fields": [{"property": name, "caption": caption} for name, caption in self.text_fields],
            "metadata_fields": list(self.metadata_fields), "freshness_target_seconds": self.freshness_target,
            "description": self.description,
        }


def _row(rule: LabelPolicy) -> LabelRow:
    if not rule.synced:
        return LabelRow(rule.label, False, rule.data_type, "", "", "", "", "", (), (), None, rule.description)
    # Write-through has no vector write in the call to fail; two-phase always queues (its policy says so).
    fails = rule.write_mode != policy.WriteMode.WRITE_THROUGH
    return LabelRow(
        rule.label, True, rule.data_type, rule.priority.label, rule.write_mode.value, rule.write_mode.label,
        rule.on_vector_failure.value if fails else "", rule.on_vector_failure.label if fails else "",
        rule.text_fields, rule.metadata_fields, settings.FRESHNESS_TARGETS[rule.priority.label], rule.description)


def labels() -> list[LabelRow]:
    """Synced labels first (HIGH priority first, then by name), then the never-synced ones."""
    synced = [_row(POLICY[label]) for label in policy.synced_labels()]
    never = [_row(rule) for rule in sorted(POLICY.values(), key=lambda r: r.label) if not rule.synced]
    return synced + never


@dataclass(frozen=True)
class ModeRow:
    """One write mode: what a write of a label in it does, and which labels the policy puts in it."""

    mode: str
    words: str
    effect: str
    labels: tuple[str, ...]

    def as_json(self) -> dict:
        return {"write_mode": self.mode, "name": self.words, "effect": self.effect, "labels": list(self.labels)}


WRITE_MODE_EFFECTS = {
    policy.WriteMode.WRITE_THROUGH: (
        "The graph write commits and a sync event is queued; the caller waits only for Neo4j, and a "
        "worker writes the vector within the label's freshness target."),
    policy.WriteMode.DUAL_WRITE: (
        "A saga inside the call: the graph write commits, then the vector is embedded and written. "
        "If the vector write fails, the graph write is undone and the call fails (compensate), or it "
        "stands and the vector is queued (queue)."),
    policy.WriteMode.TWO_PHASE: (
        "Both sides are prepared inside the call (the graph write in an open transaction, the vector "
        "embedded and checked against the store's limits), then the graph commits and the vector is "
        "written. A failed prepare commits nothing; a vector store failing after the commit leaves "
        "the graph write standing and the vector queued for retry."),
}


def write_modes() -> list[ModeRow]:
    """Every write mode, in the order of WriteMode, with the synced labels that use it."""
    synced = [POLICY[label] for label in policy.synced_labels()]
    return [ModeRow(mode.value, mode.label, WRITE_MODE_EFFECTS[mode],
                    tuple(rule.label for rule in synced if rule.write_mode == mode))
            for mode in policy.WriteMode]


@dataclass(frozen=True)
class NeverSent:
    sensitive_terms: tuple[str, ...]  # a field whose name holds one of these never leaves the graph
    sensitive_fragments: tuple[str, ...]  # ... or holds one of these inside a longer word
    never_synced_labels: tuple[str, ...]
    engine_keys: tuple[str, ...]  # what every vector carries besides its label's allow-list
    phone_regions: tuple[str, ...]  # national phone formats redacted besides international ones
    snippet_chars: int

    def as_json(self) -> dict:
        return {"sensitive_terms": list(self.sensitive_terms), "sensitive_fragments": list(self.sensitive_fragments),
                "never_synced_labels": list(self.never_synced_labels), "engine_keys": list(self.engine_keys),
                "contact_details_redacted": True, "phone_regions": list(self.phone_regions),
                "snippet_chars": self.snippet_chars}


def never_sent() -> NeverSent:
    return NeverSent(
        tuple(sorted(policy.SENSITIVE_KEY_TERMS)), policy._SENSITIVE_FRAGMENTS,
        tuple(sorted(rule.label for rule in POLICY.values() if not rule.synced)), policy.ENGINE_KEYS,
        phone_regions(), SNIPPET_MAX_CHARS)


def as_json() -> dict:
    return {"labels": [row.as_json() for row in labels()], "never_sent": never_sent().as_json(),
            "write_modes": [row.as_json() for row in write_modes()], "unlisted_labels": "never synced"}
