"""A realistic demo graph for Nightingale: real threat intelligence around generated prospects.

Everything about the threat landscape is real public data shipped in the `pymispgalaxies` package
(MISP galaxy clusters): threat actors with their descriptions, aliases, origin, targeted sectors and
countries; MITRE ATT&CK intrusion sets, software and techniques with the relations between them.
The customer side is generated — company names, contacts, deals — with obviously fake private values
(`*.example` e-mail domains, fictional-range phone numbers, "Example Street" addresses) so that a
leak of a private field into the vector store is both harmful-looking and easy to detect.

What gets built, with the counts for pymispgalaxies 1.1.1 (bounded, so a load takes seconds):

| label | count | from |
|---|---|---|
| ThreatActor | 864 | every cluster of the MISP threat-actor galaxy; the 165 that match a MITRE intrusion set (by G-number alias, `similar` relation or exact name) inherit its ATT&CK id, techniques and software |
| Malware | 300 (`MALWARE_CAP`) | MITRE ATT&CK malware (`mitre-malware`), the families the loaded actors use first. Chosen over malpedia or the ransomware galaxy because it is the one source whose relations reach the actors and techniques loaded here; without them malware would be islands |
| Technique | 691 | current enterprise ATT&CK techniques and sub-techniques (revoked and PRE-ATT&CK-only dropped) |
| KEV, Vulnerability | 42 + 42 | sync/data/kev_sample.json, real catalogue entries |
| Prospect, Contact, Deal | 67 each | generated (`PROSPECT_COUNT`), seeded |
| Artifact | 670 | 10 per prospect (`ARTIFACTS_PER_PROSPECT`): 4 actor profiles, 4 threat briefs, 2 exposure summaries, written from the real actors matched to the prospect |
| ThreatIntel | 60 (`THREAT_INTEL_COUNT`) | observed-activity items for the actors that target prospects; indicators from documentation ranges |
| Report | 5 (`REPORT_COUNT`) | a KEV digest, a ransomware report, three sector landscapes |

Relationships (~17,000): USES (actor→malware, actor→technique, malware→technique), SUBTECHNIQUE_OF,
SIMILAR_TO / LINKED_TO / PART_OF / OVERLAPS_WITH (actor→actor, as the galaxy states them), EXPLOITS
(actor→vulnerability, public attributions in `KNOWN_EXPLOITATION`), LISTS (KEV→vulnerability),
TARGETS (actor→prospect, `TARGETS_PER_PROSPECT` best sector/country matches, with their `basis`),
EXPOSED_TO (prospect→vulnerability, from a generated technology estate), HAS_CONTACT, HAS_DEAL,
ABOUT and MENTIONS (artifact→prospect/actor/vulnerability), ATTRIBUTED_TO and INVOLVES
(intel→actor/technique/malware), COVERS (report→actor/vulnerability).

Building is a pure function of the galaxy data and the seed; `load_demo` writes it in bulk through
`GraphStore.import_entities` / `import_relationships`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from sync.ingest.kev import (
    KEV_CONFIDENCE,
    KEV_SOURCE,
    LISTS,
    KevEntry,
    lists_relationships,
    parse_kev_feed,
)

DEMO_SEED = 20250601
PROSPECT_COUNT = 67
ARTIFACTS_PER_PROSPECT = 10
TARGETS_PER_PROSPECT = 6
MALWARE_CAP = 300
THREAT_INTEL_COUNT = 60
REPORT_COUNT = 5

# Labels written by the demo, in the order they are loaded (nodes before the edges between them).
DEMO_LABELS = ("ThreatActor", "Malware", "Technique", "KEV", "Vulnerability", "Prospect", "Contact",
               "Deal", "Artifact", "ThreatIntel", "Report")

SOURCES = {
    "ThreatActor": "misp-galaxy:threat-actor",
    "Malware": "misp-galaxy:mitre-malware",
    "Technique": "misp-galaxy:mitre-attack-pattern",
    "KEV": KEV_SOURCE,
    "Vulnerability": KEV_SOURCE,
    "Prospect": "demo-crm",
    "Contact": "demo-crm",
    "Deal": "demo-crm",
    "Artifact": "demo-analyst",
    "ThreatIntel": "demo-analyst",
    "Report": "demo-analyst",
}

Row = dict[str, Any]
RelRow = tuple[str, str, str, str, dict[str, Any]]


# ~40 real catalogue entries in the official format, for the demo graph and tests. Assembled by hand
# from the public catalogue; dates and CWEs are as published to the best of our knowledge.
KEV_SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "kev_sample.json"


@dataclass
class DemoGraph:
    """Rows per label and relationship rows per type, ready for the graph store's bulk import."""

    nodes: dict[str, list[Row]] = field(default_factory=lambda: defaultdict(list))
    relationships: dict[str, list[RelRow]] = field(default_factory=lambda: defaultdict(list))
    _seen: set[tuple[str, str, str, str, str]] = field(default_factory=set, repr=False)

    def add_rel(self, rel_type: str, from_label: str, from_uid: str, to_label: str, to_uid: str,
                **props: Any) -> None:
        # The galaxies repeat some relations; a MERGE would fold duplicates and the written count
        # would no longer match what was asked for.
        key = (rel_type, from_label, from_uid, to_label, to_uid)
        if key not in self._seen:
            self._seen.add(key)
            self.relationships[rel_type].append((from_label, from_uid, to_label, to_uid, props))

    def counts(self) -> dict[str, int]:
        counts = {label: len(self.nodes.get(label, ())) for label in DEMO_LABELS}
        counts.update({rel: len(rows) for rel, rows in sorted(self.relationships.items())})
        return counts


# --- galaxy data ------------------------------------------------------------------------------


@cache
def galaxy(name: str) -> tuple[dict[str, Any], ...]:
    """The cluster values of one MISP galaxy shipped in pymispgalaxies.

    Read as the package's own JSON rather than through `pymispgalaxies.Cluster`, which builds an
    object per value and re-serialises the whole cluster to hash it: several seconds for nothing
    the demo uses.
    """
    import pymispgalaxies

    path = Path(pymispgalaxies.__file__).resolve().parent / "data" / "misp-galaxy" / "clusters" / f"{name}.json"
    with path.open(encoding="utf-8") as handle:
        return tuple(json.load(handle)["values"])


_CITATION = re.compile(r"\s*\(Citation:[^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\((?:https?://|/)[^)]*\)")
_CODE_TAG = re.compile(r"</?code>")
_SPACES = re.compile(r"[ \t]+")


def strip_mitre_markup(text: str | None) -> str:
    """MITRE prose without citation markers and markdown links, which only add noise to embeddings
    (the demo data's own cleaning; the engine's is `sync.policy.clean_text`)."""
    if not text:
        return ""
    text = _CITATION.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _CODE_TAG.sub("", text)
    return _SPACES.sub(" ", text).strip()


def first_sentences(text: str, count: int = 2, limit: int = 600) -> str:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    out = " ".join(parts[:count]).strip()
    return out if len(out) <= limit else out[: limit - 1].rstrip() + "…"


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _mitre_name(value: str) -> tuple[str, str | None]:
    """'Lotus Blossom - G0030' -> ('Lotus Blossom', 'G0030')."""
    name, sep, ext = value.rpartition(" - ")
    if sep and re.fullmatch(r"[GSTM]\d{4}(?:\.\d{3})?", ext):
        return name, ext
    return value, None


def _aliases(name: str, synonyms: Iterable[str]) -> list[str]:
    """Synonyms without the name itself, blanks or repeats, in the galaxy's order."""
    return [a for a in dict.fromkeys(s.strip() for s in synonyms) if a and a != name]


def _revoked(value: dict[str, Any]) -> bool:
    return any(rel.get("type") == "revoked-by" for rel in value.get("related", ()))


def _unique_slugs(items: Sequence[tuple[str, str]]) -> dict[str, str]:
    """{uuid: uid} from (uuid, name): the name's slug, or slug + uuid prefix where slugs collide.

    Colliding entries all get the suffix, so a uid does not depend on which one was seen first.
    """
    by_slug: dict[str, list[str]] = defaultdict(list)
    for uuid, name in items:
        by_slug[slugify(name) or uuid].append(uuid)
    uids: dict[str, str] = {}
    for slug, uuids in by_slug.items():
        for uuid in uuids:
            uids[uuid] = slug if len(uuids) == 1 else f"{slug}-{uuid[:8]}"
    return uids


# --- vocabulary normalisation -------------------------------------------------------------------

# The galaxies name sectors in a dozen spellings; prospects and matching use these canonical ones.
SECTOR_ALIASES: dict[str, str] = {}
for _canonical, _spellings in {
    "Financial Services": ["finance", "financial", "financial services", "bank", "banking", "payment",
                           "investment", "cryptocurrency", "insurance"],
    "Healthcare": ["healthcare", "health", "medical", "biomedical", "hospitals"],
    "Pharmaceuticals": ["pharmaceuticals", "pharmaceutical", "pharmacy", "covid-19 research organizations"],
    "Energy": ["energy", "electric", "gas", "oil", "petroleum", "energy company", "mining", "oil and gas",
               "petrochemical", "electric utilities", "electric utility sector", "utilities"],
    "Telecommunications": ["telecommunications", "telecoms", "telecomms", "telecom"],
    "Technology": ["technology", "high-tech", "high tech", "information technology", "it - security",
                   "electronics manufacturers", "electronic", "semiconductor industry"],
    "Manufacturing": ["manufacturing", "critical manufacturing", "industrial", "automotive", "chemical",
                      "engineering", "civil engineering", "construction"],
    "Government": ["government", "government, administration", "government administration",
                   "government agencies and services", "government institutions", "intergovernmental",
                   "diplomacy", "justice"],
    "Defense": ["defense", "defence", "military", "defense industrial base", "defense contractor",
                "security service", "intelligence"],
    "Aerospace": ["aerospace", "aviation", "space", "civil aviation"],
    "Education": ["education", "universities", "academia - university", "research - innovation",
                  "scientific research"],
    "Transportation": ["transportation", "transportation systems", "rail", "logistics", "maritime"],
    "Media": ["media", "news - media", "media and entertainment", "entertainment", "journalists",
              "journalist", "gaming"],
    "Legal": ["legal"],
    "Retail": ["retail", "trade", "food and agriculture"],
    "Hospitality": ["hospitality", "travel", "gambling companies", "gambling websites"],
    "Civil Society": ["civil society", "ngos", "non-profit organisation", "activists", "dissidents",
                      "dissident", "religious organization", "religious organizations", "political party",
                      "opposition", "pro-democracy and human rights political organizations",
                      "separatists", "think tanks"],
}.items():
    for _alias in _spellings:
        SECTOR_ALIASES[_alias] = _canonical

COUNTRY_FIXES = {
    "United States of America": "United States",
    "US": "United States",
    "USA": "United States",
    "Iran (Islamic Republic of)": "Iran",
    "Russian Federation": "Russia",
    "Korea (Republic of)": "South Korea",
    "Korea (Democratic People's Republic of)": "North Korea",
    "People's Republic of China": "China",
    "Palestinian Territory": "Palestine",
}


def canonical_sector(raw: str) -> str | None:
    return SECTOR_ALIASES.get(raw.strip().lower())


def canonical_country(raw: str) -> str:
    raw = raw.strip()
    return COUNTRY_FIXES.get(raw, raw)


@cache
def _countries() -> tuple[dict[str, str], dict[str, str]]:
    """({ISO code: name}, {cluster uuid: name}) from the country galaxy."""
    by_iso: dict[str, str] = {}
    by_uuid: dict[str, str] = {}
    for value in galaxy("country"):
        name = canonical_country(value.get("description") or value["value"].title())
        iso = value.get("meta", {}).get("ISO")
        if iso:
            by_iso[iso] = name
        by_uuid[value["uuid"]] = name
    return by_iso, by_uuid


# --- threat landscape ------------------------------------------------------------------------


@dataclass
class Actor:
    uid: str
    uuid: str
    row: Row
    sectors: frozenset[str]
    countries: frozenset[str]
    refs: tuple[str, ...]
    techniques: list[str] = field(default_factory=list)   # Technique uids
    malware: list[str] = field(default_factory=list)      # Malware uids

    @property
    def name(self) -> str:
        return self.row["name"]


SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}

# Checked in this order, first hit wins. Financial wording is specific on purpose: "financial
# sector" describes a victim, not a motive.
_MOTIVES = (
    ("sabotage", ("sabotage", "destructive", "wiper")),
    ("financial", ("financially motivated", "financial gain", "financial theft", "cybercrim", "ransomware",
                   "extortion", "fraud", "business email compromise", "monetary")),
    ("hacktivism", ("hacktivis", "denial of service", "ddos", "defacement", "nationalist")),
    ("influence", ("information operation", "influence operation", "disinformation")),
    ("espionage", ("espionage", "intelligence gathering", "intelligence collection", "steal sensitive",
                   "exfiltrat")),
)


def actor_motivation(meta: dict[str, Any], description: str) -> str:
    """The galaxy's own motive fields first, then the description's wording; else unknown."""
    stated = meta.get("motive") or meta.get("cfr-type-of-incident") or ""
    if isinstance(stated, list):
        stated = " ".join(stated)
    for text in (stated.lower(), description.lower()):
        for motive, words in _MOTIVES:
            if any(word in text for word in words):
                return motive
    return "unknown"


def actor_severity(motivation: str, description: str, state_sponsored: bool, sectors: int,
                   countries: int, techniques: int, malware: int) -> str:
    """A triage rating from what the galaxy says an actor does, how widely, and how capably.

    Base by motive (sabotage 3, financial/espionage 2, other 1), +1 for destructive or ransomware
    activity, +1 for a suspected state sponsor, +1 for broad targeting (≥3 sectors or ≥5
    countries), +1 for documented capability (≥20 ATT&CK techniques or ≥3 malware families).
    6+ critical, 5 high, 3-4 medium, less low: an actor we know little about stays low.
    """
    score = {"sabotage": 3, "financial": 2, "espionage": 2}.get(motivation, 1)
    text = description.lower()
    if any(word in text for word in ("ransomware", "wiper", "destructi", "extortion")):
        score += 1
    if state_sponsored:
        score += 1
    if sectors >= 3 or countries >= 5:
        score += 1
    if techniques >= 20 or malware >= 3:
        score += 1
    if score >= 6:
        return "critical"
    if score == 5:
        return "high"
    if score >= 3:
        return "medium"
    return "low"


def actor_confidence(meta: dict[str, Any]) -> float:
    """The galaxy's attribution confidence where stated; else grows with the number of references."""
    stated = meta.get("attribution-confidence")
    try:
        if stated is not None:
            return max(0.05, min(1.0, float(stated) / 100))
    except (TypeError, ValueError):
        pass
    return round(min(0.8, 0.3 + 0.1 * len(meta.get("refs", ()))), 2)


def _intrusion_set_matches(actors: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{threat-actor uuid: MITRE intrusion set}, by G-number alias, then `similar`, then exact name."""
    sets = [s for s in galaxy("mitre-intrusion-set") if not _revoked(s)]
    by_gid = {s["meta"]["external_id"]: s for s in sets}
    by_uuid = {s["uuid"]: s for s in sets}
    by_name: dict[str, dict[str, Any]] = {}
    for s in sets:
        name, _ = _mitre_name(s["value"])
        for alias in [name, *s.get("meta", {}).get("synonyms", ())]:
            by_name.setdefault(alias.lower(), s)
    similar: dict[str, dict[str, Any]] = {}
    for s in sets:
        for rel in s.get("related", ()):
            if rel.get("type") == "similar":
                similar.setdefault(rel["dest-uuid"], s)
    matches: dict[str, dict[str, Any]] = {}
    for actor in actors:
        meta = actor.get("meta", {})
        found = next((by_gid[a] for a in meta.get("synonyms", ()) if a in by_gid), None)
        if found is None:
            found = next((by_uuid[r["dest-uuid"]] for r in actor.get("related", ())
                          if r.get("type") == "similar" and r["dest-uuid"] in by_uuid), None)
        found = found or similar.get(actor["uuid"]) or by_name.get(actor["value"].lower())
        if found is not None:
            matches[actor["uuid"]] = found
    return matches


def build_techniques() -> tuple[list[Row], dict[str, str], list[tuple[str, str]]]:
    """Technique rows, {cluster uuid: uid}, and (sub-technique, parent) uid pairs."""
    rows: list[Row] = []
    uids: dict[str, str] = {}
    for value in galaxy("mitre-attack-pattern"):
        meta = value.get("meta", {})
        kill_chain = meta.get("kill_chain", ())
        enterprise = [k for k in kill_chain if k.startswith("attack-")]
        description = strip_mitre_markup(value.get("description"))
        if _revoked(value) or not enterprise or description.lower().startswith("this technique has been deprecated"):
            continue
        name, _ = _mitre_name(value["value"])
        mitre_id = meta["external_id"]
        uids[value["uuid"]] = mitre_id
        rows.append({
            "uid": mitre_id,
            "name": name,
            "mitre_id": mitre_id,
            "description": description,
            "tactics": sorted({k.split(":", 1)[1] for k in enterprise}),
            "platforms": sorted(meta.get("mitre_platforms", ())),
            "confidence": 1.0,
        })
    subs: set[tuple[str, str]] = set()
    for value in galaxy("mitre-attack-pattern"):
        child = uids.get(value["uuid"])
        for rel in value.get("related", ()):
            parent = uids.get(rel["dest-uuid"])
            if child and parent and rel.get("type") == "subtechnique-of":
                subs.add((child, parent))
    rows.sort(key=lambda r: r["uid"])
    return rows, uids, sorted(subs)


_MALWARE_TYPES = (
    ("ransomware", ("ransomware",)),
    ("wiper", ("wiper", "destroy data")),
    ("banking trojan", ("banking trojan", "banker")),
    ("infostealer", ("information stealer", "infostealer", "credential stealer", "stealer", "spyware")),
    ("rat", ("remote access tool", "remote access trojan", " rat ", "(rat)")),
    ("rootkit", ("rootkit", "bootkit")),
    ("loader", ("loader", "downloader", "dropper")),
    ("botnet", ("botnet",)),
    ("backdoor", ("backdoor", "implant")),
    ("webshell", ("web shell", "webshell")),
    ("ics malware", ("industrial control system",)),
)
_TYPE_BY_GALAXY = {"ransomware": "ransomware", "rat": "rat", "banker": "banking trojan",
                   "stealer": "infostealer", "backdoor": "backdoor", "android": "mobile malware"}


def malware_type(description: str, similar_galaxies: Iterable[str]) -> str:
    """The family's type from the galaxies it is cross-listed in, else from its description.

    In the description the earliest type word wins: MITRE opens with what a family is ("QakBot is
    a modular banking trojan") and only later mentions what it delivered ("... and ransomware").
    """
    for name in similar_galaxies:
        if name in _TYPE_BY_GALAXY:
            return _TYPE_BY_GALAXY[name]
    text = f" {description.lower()} "
    best: tuple[int, str] | None = None
    for kind, words in _MALWARE_TYPES:
        positions = [text.find(word) for word in words if word in text]
        if positions and (best is None or min(positions) < best[0]):
            best = (min(positions), kind)
    return best[1] if best else "malware"


def _galaxy_of_uuid() -> dict[str, str]:
    names = ("ransomware", "rat", "banker", "stealer", "backdoor", "android")
    return {v["uuid"]: name for name in names for v in galaxy(name)}


def build_landscape() -> tuple[dict[str, Actor], list[Row], list[Row], DemoGraph]:
    """Actors, malware and techniques with the relations among them, from the galaxies."""
    out = DemoGraph()
    technique_rows, technique_uids, subtechniques = build_techniques()
    by_iso, country_by_uuid = _countries()
    sector_by_uuid = {v["uuid"]: v["value"] for v in galaxy("sector")}

    raw_actors = sorted(galaxy("threat-actor"), key=lambda v: (v["value"].strip().lower(), v["uuid"]))
    actor_uids = _unique_slugs([(v["uuid"], v["value"]) for v in raw_actors])
    matches = _intrusion_set_matches(raw_actors)

    # Malware: MITRE software the matched intrusion sets use (directly or through the actor's own
    # `uses` relations into malpedia, mapped back through MITRE's `similar` links), ranked by how
    # many actors use it, then by how much ATT&CK behaviour is documented for it.
    raw_malware = [m for m in galaxy("mitre-malware") if not _revoked(m)]
    malware_by_uuid = {m["uuid"]: m for m in raw_malware}
    mitre_of_alias: dict[str, str] = {}
    for m in raw_malware:
        for rel in m.get("related", ()):
            if rel.get("type") == "similar":
                mitre_of_alias.setdefault(rel["dest-uuid"], m["uuid"])
    used_by: dict[str, set[str]] = defaultdict(set)  # malware uuid -> actor uuids
    for actor in raw_actors:
        related = list(actor.get("related", ()))
        if actor["uuid"] in matches:
            related += matches[actor["uuid"]].get("related", ())
        for rel in related:
            if rel.get("type") not in ("uses", "deploys", "delivers"):
                continue
            dest = rel["dest-uuid"]
            dest = dest if dest in malware_by_uuid else mitre_of_alias.get(dest, "")
            if dest in malware_by_uuid:
                used_by[dest].add(actor["uuid"])
    technique_count = {m["uuid"]: sum(1 for r in m.get("related", ()) if r["dest-uuid"] in technique_uids)
                       for m in raw_malware}
    chosen = sorted(raw_malware, key=lambda m: (-len(used_by[m["uuid"]]), -technique_count[m["uuid"]],
                                                m["value"].lower()))[:MALWARE_CAP]
    chosen.sort(key=lambda m: (m["value"].lower(), m["uuid"]))
    malware_uids = _unique_slugs([(m["uuid"], _mitre_name(m["value"])[0]) for m in chosen])
    galaxy_of = _galaxy_of_uuid()
    malware_rows: list[Row] = []
    for m in chosen:
        name, mitre_id = _mitre_name(m["value"])
        description = strip_mitre_markup(m.get("description"))
        similar_galaxies = sorted({galaxy_of[r["dest-uuid"]] for r in m.get("related", ())
                                   if r.get("type") == "similar" and r["dest-uuid"] in galaxy_of})
        uid = malware_uids[m["uuid"]]
        malware_rows.append({
            "uid": uid,
            "name": name,
            "aliases": _aliases(name, m.get("meta", {}).get("synonyms", ())),
            "description": description,
            "malware_type": malware_type(description, similar_galaxies),
            "mitre_id": mitre_id or m.get("meta", {}).get("external_id", ""),
            "confidence": 0.9,
        })
        for rel in m.get("related", ()):
            if rel.get("type") == "uses" and rel["dest-uuid"] in technique_uids:
                out.add_rel("USES", "Malware", uid, "Technique", technique_uids[rel["dest-uuid"]])

    actors: dict[str, Actor] = {}
    for value in raw_actors:
        meta = value.get("meta", {})
        uid = actor_uids[value["uuid"]]
        name = value["value"].strip()  # a few galaxy names carry stray spaces
        intrusion_set = matches.get(value["uuid"])
        description = (strip_mitre_markup(value.get("description"))
                       or strip_mitre_markup((intrusion_set or {}).get("description")))
        raw_sectors = [*meta.get("targeted-sector", ()), *meta.get("cfr-target-category", ())]
        countries = {canonical_country(c) for c in meta.get("cfr-suspected-victims", ())}
        for rel in value.get("related", ()):
            if rel.get("type") == "targets":
                if rel["dest-uuid"] in sector_by_uuid:
                    raw_sectors.append(sector_by_uuid[rel["dest-uuid"]])
                elif rel["dest-uuid"] in country_by_uuid:
                    countries.add(country_by_uuid[rel["dest-uuid"]])
        sectors = {s for s in map(canonical_sector, raw_sectors) if s}
        sponsor = meta.get("cfr-suspected-state-sponsor")
        sponsor = canonical_country(sponsor) if isinstance(sponsor, str) and sponsor != "Unknown" else None
        origin = by_iso.get(meta.get("country") or "") or sponsor
        techniques = sorted({technique_uids[r["dest-uuid"]] for r in (intrusion_set or {}).get("related", ())
                             if r.get("type") == "uses" and r["dest-uuid"] in technique_uids})
        families = sorted(malware_uids[m] for m, users in used_by.items()
                          if value["uuid"] in users and m in malware_uids)
        motivation = actor_motivation(meta, description)
        row: Row = {
            "uid": uid,
            "name": name,
            "aliases": _aliases(name, meta.get("synonyms", ())),
            "description": description,
            "motivation": motivation,
            "target_sectors": sorted(sectors),
            "target_countries": sorted(countries),
            "severity": actor_severity(motivation, description, sponsor is not None, len(sectors),
                                       len(countries), len(techniques), len(families)),
            "confidence": actor_confidence(meta),
        }
        if origin:
            row["country"] = origin
        if intrusion_set is not None:
            row["mitre_id"] = intrusion_set["meta"]["external_id"]
        since = meta.get("since")
        if isinstance(since, str) and since.strip():
            row["first_seen"] = since.strip()
        actor = Actor(uid=uid, uuid=value["uuid"], row=row, sectors=frozenset(sectors),
                      countries=frozenset(countries), refs=tuple(meta.get("refs", ())),
                      techniques=techniques, malware=families)
        actors[uid] = actor
        for technique in techniques:
            out.add_rel("USES", "ThreatActor", uid, "Technique", technique)
        for malware in actor.malware:
            out.add_rel("USES", "ThreatActor", uid, "Malware", malware)

    # Relations between actors, as the threat-actor galaxy states them.
    actor_rel_types = {"similar": "SIMILAR_TO", "linked-to": "LINKED_TO", "part-of": "PART_OF",
                       "overlaps": "OVERLAPS_WITH"}
    seen: set[tuple[str, str, str]] = set()
    for value in raw_actors:
        for rel in value.get("related", ()):
            rel_type = actor_rel_types.get(rel.get("type", ""))
            other = actor_uids.get(rel["dest-uuid"])
            source = actor_uids[value["uuid"]]
            if rel_type and other and other != source and (rel_type, source, other) not in seen:
                seen.add((rel_type, source, other))
                out.add_rel(rel_type, "ThreatActor", source, "ThreatActor", other)
    for child, parent in subtechniques:
        out.add_rel("SUBTECHNIQUE_OF", "Technique", child, "Technique", parent)
    return actors, malware_rows, technique_rows, out


# Public, well-documented exploitation of the sample's CVEs by actors present in the galaxy.
KNOWN_EXPLOITATION: tuple[tuple[str, str, str], ...] = (
    ("HAFNIUM", "CVE-2021-26855", "Microsoft Threat Intelligence, March 2021"),
    ("HAFNIUM", "CVE-2021-27065", "Microsoft Threat Intelligence, March 2021"),
    ("TA505", "CVE-2023-34362", "CISA advisory AA23-158A (CL0P)"),
    ("TA505", "CVE-2023-0669", "CISA advisory AA23-158A (CL0P)"),
    ("APT29", "CVE-2019-19781", "NCSC/CSE/NSA advisory on APT29, July 2020"),
    ("APT29", "CVE-2019-11510", "NCSC/CSE/NSA advisory on APT29, July 2020"),
    ("APT29", "CVE-2018-13379", "NCSC/CSE/NSA advisory on APT29, July 2020"),
    ("APT29", "CVE-2023-42793", "CISA advisory AA23-347A"),
    ("APT41", "CVE-2019-19781", "FireEye, March 2020"),
    ("Lazarus Group", "CVE-2017-0144", "WannaCry attribution, US Government, December 2017"),
    ("APT35", "CVE-2021-44228", "Check Point Research, January 2022"),
    ("Fox Kitten", "CVE-2019-11510", "CISA advisory AA20-259A"),
    ("Fox Kitten", "CVE-2020-5902", "CISA advisory AA20-259A"),
    ("Fox Kitten", "CVE-2024-3400", "CISA advisory AA24-241A"),
    ("UNC4841", "CVE-2023-2868", "Mandiant, June 2023"),
    ("UTA0218", "CVE-2024-3400", "Volexity, April 2024"),
    ("Storm-0062", "CVE-2023-22515", "Microsoft Threat Intelligence, October 2023"),
)


# --- prospects --------------------------------------------------------------------------------

PROSPECT_SECTORS = ("Financial Services", "Healthcare", "Pharmaceuticals", "Energy", "Telecommunications",
                    "Technology", "Manufacturing", "Defense", "Aerospace", "Education", "Transportation",
                    "Media", "Legal", "Retail", "Hospitality")

# (country, weight, calling code, currency, cities). Weights follow where a security-services
# vendor's pipeline usually sits; cities make the fake addresses read naturally.
PROSPECT_COUNTRIES = (
    ("United States", 14, "1", "USD", ("Boston", "Austin", "Chicago", "Denver", "Seattle", "Atlanta")),
    ("United Kingdom", 6, "44", "GBP", ("London", "Manchester", "Leeds", "Bristol")),
    ("Germany", 5, "49", "EUR", ("Munich", "Frankfurt", "Hamburg", "Stuttgart")),
    ("France", 3, "33", "EUR", ("Paris", "Lyon", "Toulouse")),
    ("Canada", 3, "1", "CAD", ("Toronto", "Ottawa", "Calgary")),
    ("Japan", 3, "81", "JPY", ("Tokyo", "Osaka", "Nagoya")),
    ("Australia", 3, "61", "AUD", ("Sydney", "Melbourne", "Brisbane")),
    ("Singapore", 2, "65", "SGD", ("Singapore",)),
    ("India", 3, "91", "INR", ("Bengaluru", "Mumbai", "Hyderabad")),
    ("Netherlands", 2, "31", "EUR", ("Amsterdam", "Rotterdam", "Utrecht")),
    ("Saudi Arabia", 2, "966", "SAR", ("Riyadh", "Jeddah")),
    ("United Arab Emirates", 2, "971", "AED", ("Dubai", "Abu Dhabi")),
    ("Israel", 2, "972", "ILS", ("Tel Aviv", "Haifa")),
    ("South Korea", 2, "82", "KRW", ("Seoul", "Busan")),
    ("Taiwan", 2, "886", "TWD", ("Taipei", "Hsinchu")),
    ("Switzerland", 1, "41", "CHF", ("Zurich", "Geneva")),
    ("Sweden", 1, "46", "SEK", ("Stockholm", "Gothenburg")),
    ("Spain", 1, "34", "EUR", ("Madrid", "Barcelona")),
    ("Italy", 1, "39", "EUR", ("Milan", "Rome")),
    ("Brazil", 1, "55", "BRL", ("Sao Paulo", "Rio de Janeiro")),
)

NAME_STEMS = ("Northwind", "Harborview", "Bluegate", "Silverline", "Cedarbrook", "Ironbridge", "Meridian",
              "Summitline", "Redwood", "Lakeshore", "Granite Peak", "Brightwater", "Oakridge", "Falconer",
              "Sterling Vale", "Evergreen", "Kestrel", "Aurora", "Pinnacle", "Beaconfield", "Halcyon",
              "Corvid", "Tidewater", "Westbrook", "Stonegate", "Larkspur", "Copperfield", "Riverstone",
              "Highmoor", "Fairhaven", "Juniper", "Marlow", "Ashford", "Clearwater", "Vantage", "Orion",
              "Keystone", "Willowmere", "Sable", "Thornbury", "Alder", "Blackwood", "Crescent", "Driftwood",
              "Emberly", "Foxhall", "Glenmore", "Hawthorne", "Ivyline", "Kingsmead", "Lumen", "Mistral",
              "Novara", "Oakhurst", "Pelican", "Quarry Hill", "Rosewood", "Saltmarsh", "Tamarind",
              "Upland", "Verity", "Wexford", "Yarrow", "Zephyr", "Bramblewood", "Coldharbour", "Dunmore")

SECTOR_PROFILES: dict[str, dict[str, Sequence[str]]] = {
    "Financial Services": {"suffix": ("Capital", "Bancorp", "Financial Group", "Payments", "Asset Management",
                                      "Insurance"),
                           "assets": ("online banking platform", "payment switch", "trading systems",
                                      "customer data warehouse"),
                           "concerns": ("business e-mail compromise", "ransomware", "fraud on payment rails")},
    "Healthcare": {"suffix": ("Health System", "Medical Group", "Care Partners", "Clinics"),
                   "assets": ("electronic health records", "PACS imaging archive", "patient portal",
                              "connected medical devices"),
                   "concerns": ("ransomware disrupting patient care", "theft of patient records")},
    "Pharmaceuticals": {"suffix": ("Therapeutics", "Biosciences", "Pharma", "Life Sciences"),
                        "assets": ("clinical trial data", "research file shares", "manufacturing execution systems"),
                        "concerns": ("espionage against research", "ransomware in production plants")},
    "Energy": {"suffix": ("Energy", "Power & Light", "Utilities", "Renewables"),
               "assets": ("SCADA network", "grid operations centre", "OT remote access", "billing platform"),
               "concerns": ("sabotage of operational technology", "pre-positioning in OT networks")},
    "Telecommunications": {"suffix": ("Telecom", "Networks", "Communications", "Fibre"),
                           "assets": ("core network", "lawful-intercept systems", "subscriber databases",
                                      "edge routers"),
                           "concerns": ("espionage on call records", "compromise of edge devices")},
    "Technology": {"suffix": ("Software", "Systems", "Cloud", "Labs", "Data"),
                   "assets": ("SaaS platform", "CI/CD pipeline", "source code repositories", "customer tenants"),
                   "concerns": ("supply-chain compromise", "theft of source code and signing keys")},
    "Manufacturing": {"suffix": ("Industries", "Manufacturing", "Components", "Automation"),
                      "assets": ("plant-floor OT", "ERP system", "engineering file servers", "supplier portal"),
                      "concerns": ("ransomware halting production", "theft of designs")},
    "Defense": {"suffix": ("Defense Systems", "Dynamics", "Technologies"),
                "assets": ("classified programme enclaves", "engineering workstations", "supplier network"),
                "concerns": ("state-sponsored espionage", "compromise through subcontractors")},
    "Aerospace": {"suffix": ("Aerospace", "Aviation", "Avionics"),
                  "assets": ("avionics design data", "maintenance systems", "flight operations"),
                  "concerns": ("espionage on designs", "disruption of flight operations")},
    "Education": {"suffix": ("University", "Institute of Technology", "College"),
                  "assets": ("research networks", "student information system", "identity provider"),
                  "concerns": ("espionage against research", "ransomware during term time")},
    "Transportation": {"suffix": ("Logistics", "Freight", "Shipping", "Rail"),
                       "assets": ("fleet management", "port and warehouse systems", "booking platform"),
                       "concerns": ("ransomware stopping deliveries", "GPS and OT disruption")},
    "Media": {"suffix": ("Media", "Broadcasting", "Publishing", "Studios"),
              "assets": ("broadcast playout", "newsroom systems", "subscriber platform"),
              "concerns": ("hack-and-leak operations", "surveillance of journalists")},
    "Legal": {"suffix": ("LLP", "Legal", "Law Partners"),
              "assets": ("document management system", "client extranet", "e-discovery platform"),
              "concerns": ("theft of privileged client data", "business e-mail compromise")},
    "Retail": {"suffix": ("Retail", "Stores", "Commerce", "Brands"),
               "assets": ("e-commerce storefront", "point-of-sale estate", "loyalty programme data"),
               "concerns": ("card skimming", "ransomware over peak season")},
    "Hospitality": {"suffix": ("Hotels", "Resorts", "Travel"),
                    "assets": ("reservation system", "guest Wi-Fi", "property management systems"),
                    "concerns": ("theft of guest data", "ransomware at properties")},
}

SIZE_BANDS = (  # (band, revenue range in USD, headcount phrase, weight)
    ("1-249", (8_000_000, 60_000_000), "a specialist", 2),
    ("250-999", (60_000_000, 400_000_000), "a mid-sized", 3),
    ("1000-4999", (400_000_000, 2_500_000_000), "a large", 3),
    ("5000+", (2_500_000_000, 40_000_000_000), "a major", 2),
)
DEAL_STAGES = ("qualification", "discovery", "proposal", "negotiation", "closed-won", "closed-lost")
CONTACT_TITLES = ("CISO", "Head of Security Operations", "IT Director", "VP Infrastructure",
                  "Security Architect", "Head of Risk", "CIO")
FIRST_NAMES = ("Jane", "John", "Maria", "Amir", "Priya", "Kenji", "Sofia", "Lars", "Chloe", "Diego",
               "Hannah", "Omar", "Yuki", "Elena", "Noah", "Aisha", "Lukas", "Grace", "Mateo", "Ines")
LAST_NAMES = ("Doe", "Roe", "Moreau", "Tanaka", "Schmidt", "Okafor", "Lindqvist", "Haddad", "Rossi",
              "Kowalski", "Nakamura", "Fernandes", "Novak", "Brennan", "Sato", "Ibrahim", "Weber", "Kaur")
# Vendors whose products appear in the KEV sample; a prospect's estate is drawn from these.
ESTATE_VENDORS = ("Microsoft", "Citrix", "Fortinet", "Ivanti", "Palo Alto Networks", "F5", "Atlassian",
                  "Cisco", "Apache", "VMware", "Progress", "Fortra", "ConnectWise", "JetBrains", "Jenkins",
                  "PaperCut", "Barracuda Networks", "PHP Group", "GNU")


def fake_phone(calling_code: str, rng: random.Random) -> str:
    """A number from ranges reserved for fiction, so no real person is ever dialled from demo data."""
    if calling_code == "1":
        return f"+1 202-555-01{rng.randrange(100):02d}"
    if calling_code == "44":
        return f"+44 20 7946 0{rng.randrange(1000):03d}"
    if calling_code == "61":
        return f"+61 2 5550 {rng.randrange(10000):04d}"
    return f"+{calling_code} 555 01{rng.randrange(100):02d}"


def build_prospects(rng: random.Random) -> list[dict[str, Any]]:
    """67 generated companies with their contact, deal and technology estate."""
    sectors = [PROSPECT_SECTORS[i % len(PROSPECT_SECTORS)] for i in range(PROSPECT_COUNT)]
    rng.shuffle(sectors)
    stems = list(NAME_STEMS)
    rng.shuffle(stems)
    country_weights = [c[1] for c in PROSPECT_COUNTRIES]
    prospects: list[dict[str, Any]] = []
    for index, sector in enumerate(sectors):
        profile = SECTOR_PROFILES[sector]
        name = f"{stems[index]} {rng.choice(profile['suffix'])}"
        slug = slugify(name)
        country, _, calling_code, currency, cities = rng.choices(PROSPECT_COUNTRIES, weights=country_weights)[0]
        band, (low, high), size_phrase, _ = rng.choices(SIZE_BANDS, weights=[s[3] for s in SIZE_BANDS])[0]
        revenue = rng.randrange(low, high, 1_000_000)
        tier = "Tier 1" if band == "5000+" else "Tier 2" if band in ("1000-4999", "250-999") else "Tier 3"
        deal_value = int(round(min(revenue * rng.uniform(0.0008, 0.003), 4_000_000), -3))
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        contact = {
            "uid": f"contact-{slug}",
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}@{slug}.example",
            "phone": fake_phone(calling_code, rng),
            "title": rng.choice(CONTACT_TITLES),
        }
        deal = {"uid": f"deal-{slug}", "amount": deal_value, "currency": currency,
                "stage": rng.choice(DEAL_STAGES)}
        assets = rng.sample(list(profile["assets"]), k=min(2, len(profile["assets"])))
        concerns = list(profile["concerns"])
        city = rng.choice(cities)
        description = (
            f"{name} is {size_phrase} {sector.lower()} organisation headquartered in {city}, {country} "
            f"({band} employees). Its most exposed assets are its {assets[0]} and {assets[-1]}; "
            f"leadership is most concerned about {' and '.join(concerns)}. "
            f"Prospect for managed detection and response and threat-intelligence services."
        )
        estate = sorted(rng.sample(ESTATE_VENDORS, k=rng.randint(3, 6)))
        row = {
            "uid": f"prospect-{slug}",
            "name": name,
            "sector": sector,
            "country": country,
            "size_band": band,
            "tier": tier,
            "description": description,
            "confidence": 1.0,
            # Private: present in the graph for the account team, never in the vector store.
            "contact_name": contact["name"],
            "contact_email": contact["email"],
            "contact_phone": contact["phone"],
            "address": f"{rng.randint(1, 400)} Example Street, {city}, {country}",
            "annual_revenue": revenue,
            "deal_value": deal_value,
            "internal_notes": (f"Champion is {contact['name']} ({contact['title']}). Budget owner wants a "
                               f"proposal under {currency} {deal_value:,}; renewal of the incumbent MSSP is "
                               f"due in Q{rng.randint(1, 4)}. Do not share pricing outside the account team."),
        }
        prospects.append({"row": row, "contact": contact, "deal": deal, "estate": estate})
    if len({p["row"]["uid"] for p in prospects}) != len(prospects):
        raise AssertionError("generated prospect names collide; NAME_STEMS must stay unique")
    return prospects


def rank_actors(prospect: Row, actors: Sequence[Actor], rng: random.Random) -> list[tuple[Actor, str]]:
    """Actors that target the prospect's sector or country, best matches first, with the basis."""
    scored = []
    for actor in actors:
        sector = prospect["sector"] in actor.sectors
        country = prospect["country"] in actor.countries
        if not (sector or country):
            continue
        basis = "sector+country" if sector and country else "sector" if sector else "country"
        # Sector matches outweigh country ones (the actor hunts this industry); among equals prefer
        # actors we know more about, then break ties randomly so prospects don't all share one list.
        score = (3 * sector + 2 * country + bool(actor.techniques) + 0.5 * bool(actor.row["description"])
                 + 0.25 * SEVERITY_RANK[actor.row["severity"]] + rng.random() * 0.1)
        scored.append((score, actor.uid, actor, basis))
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [(actor, basis) for _, _, actor, basis in scored]


# --- documents --------------------------------------------------------------------------------


@dataclass
class Doc:
    """A generated Artifact or Report before it becomes a row: its text and what it mentions."""

    doc_type: str
    title: str
    summary: str
    body: str
    mentions: list[tuple[str, str]]  # (label, uid)
    tags: list[str] = field(default_factory=list)


def _published(rng: random.Random, start: dt.date = dt.date(2024, 1, 8), days: int = 540) -> str:
    return (start + dt.timedelta(days=rng.randrange(days))).isoformat()


def _names(uids: Iterable[str], rows: dict[str, Row], limit: int) -> list[str]:
    return [rows[u]["name"] for u in list(uids)[:limit] if u in rows]


def _relevance(prospect: Row, basis: str) -> str:
    return {
        "sector+country": f"it targets {prospect['sector'].lower()} organisations and has victims in "
                          f"{prospect['country']}",
        "sector": f"it targets {prospect['sector'].lower()} organisations",
        "country": f"it has victims in {prospect['country']}",
    }[basis]


def actor_profile(actor: Actor, prospect: Row, basis: str, malware: dict[str, Row],
                  techniques: dict[str, Row]) -> Doc:
    row = actor.row
    origin = f"assessed to operate from {row['country']}" if row.get("country") else "of unattributed origin"
    parts = [f"{row['name']}: threat actor profile prepared for {prospect['name']}."]
    if row["aliases"]:
        parts.append(f"Also tracked as {', '.join(row['aliases'][:8])}.")
    parts.append(f"The actor is {origin}; primary motivation: {row['motivation']}. "
                 f"Nightingale rates it {row['severity']} (confidence {row['confidence']:.2f}).")
    parts.append(row["description"] or "No public description is recorded for this actor.")
    if row["target_sectors"]:
        parts.append(f"Targeted sectors: {', '.join(row['target_sectors'])}.")
    if row["target_countries"]:
        parts.append(f"Reported victims in: {', '.join(row['target_countries'][:15])}.")
    tools = _names(actor.malware, malware, 8)
    if tools:
        parts.append(f"Known malware: {', '.join(tools)}.")
    ttps = [f"{techniques[t]['name']} ({t})" for t in actor.techniques[:10] if t in techniques]
    if ttps:
        parts.append(f"Documented ATT&CK techniques include {', '.join(ttps)}.")
    relevance = _relevance(prospect, basis)
    parts.append(f"Relevance to {prospect['name']}: {relevance}.")
    summary = (f"{row['name']} ({row['severity']}, {row['motivation']}) is {origin}. "
               f"{first_sentences(row['description'], 1, 300)} Relevant to {prospect['name']} because "
               f"{relevance}.")
    return Doc("actor_profile", f"Actor profile: {row['name']} — relevance to {prospect['name']}",
               " ".join(summary.split()), "\n\n".join(parts), [("ThreatActor", actor.uid)])


def landscape(doc_type: str, title: str, intro: str, ranked: Sequence[tuple[Actor, str]]) -> Doc:
    lines = [title, intro]
    for actor, basis in ranked:
        row = actor.row
        gist = first_sentences(row["description"], 1, 300) or "No public description is recorded."
        lines.append(f"- {row['name']} ({row['severity']}, {row['motivation']}, match on {basis}): {gist}")
    names = [actor.name for actor, _ in ranked[:4]]
    summary = f"{intro} Most relevant: {', '.join(names)}." if names else intro
    return Doc(doc_type, title, summary, "\n\n".join(lines), [("ThreatActor", a.uid) for a, _ in ranked])


def technique_brief(prospect: Row, ranked: Sequence[tuple[Actor, str]], techniques: dict[str, Row]) -> Doc:
    counts = Counter(t for actor, _ in ranked for t in actor.techniques
                     if t in techniques and _observable(techniques[t]))
    top = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:8]]
    intro = (f"The ATT&CK techniques most used by the actors that target {prospect['sector'].lower()} "
             f"organisations and {prospect['country']}, with the number of those actors using each.")
    lines = [f"Techniques to detect first at {prospect['name']}", intro]
    for t in top:
        row = techniques[t]
        lines.append(f"- {row['name']} ({t}; tactics: {', '.join(row['tactics'])}; used by {counts[t]}): "
                     f"{first_sentences(row['description'], 2, 400)}")
    if top:
        names = [f"{techniques[t]['name']} ({t})" for t in top[:4]]
        summary = f"Detection priorities for {prospect['name']}: {', '.join(names)}."
    else:
        lines.append("None of the actors matched to this prospect has documented ATT&CK techniques yet.")
        summary = f"No documented ATT&CK techniques for the actors matched to {prospect['name']}."
    return Doc("threat_brief", f"Threat brief: techniques to detect first at {prospect['name']}", summary,
               "\n\n".join(lines), [("ThreatActor", a.uid) for a, _ in ranked if a.techniques][:10])


def malware_brief(prospect: Row, ranked: Sequence[tuple[Actor, str]], malware: dict[str, Row]) -> Doc:
    counts = Counter(m for actor, _ in ranked for m in actor.malware if m in malware)
    top = [m for m, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:6]]
    lines = [f"Malware families relevant to {prospect['name']}",
             "Families used by the actors most likely to target this organisation, with what they do."]
    for m in top:
        row = malware[m]
        lines.append(f"- {row['name']} ({row['malware_type']}, {row['mitre_id']}): "
                     f"{first_sentences(row['description'], 2, 400)}")
    if top:
        names = [f"{malware[m]['name']} ({malware[m]['malware_type']})" for m in top[:4]]
        summary = f"Malware families to hunt for at {prospect['name']}: {', '.join(names)}."
    else:
        lines.append("No malware family is documented for the actors matched to this prospect.")
        summary = f"No malware family is documented for the actors matched to {prospect['name']}."
    return Doc("threat_brief", f"Threat brief: malware families relevant to {prospect['name']}", summary,
               "\n\n".join(lines), [("ThreatActor", a.uid) for a, _ in ranked if a.malware][:10])


def exposure_summary(prospect: Row, estate: Sequence[str], exposures: Sequence[KevEntry],
                     ransomware_only: bool, exploiters: dict[str, list[str]]) -> Doc:
    entries = [e for e in exposures if e.known_ransomware_campaign_use == "Known"] if ransomware_only \
        else list(exposures)
    what = "CISA KEV entries with known ransomware campaign use" if ransomware_only else "CISA KEV entries"
    heading = (f"Ransomware-linked exposure at {prospect['name']}" if ransomware_only
               else f"Known exploited vulnerabilities in {prospect['name']}'s estate")
    intro = f"Technology vendors in the estate: {', '.join(estate)}. {len(entries)} {what} apply."
    lines = [heading, intro]
    for e in entries:
        actors = exploiters.get(e.cve_id)
        lines.append(f"- {e.cve_id} {e.vulnerability_name} ({e.vendor_project} {e.product}); in KEV since "
                     f"{e.date_added}, federal due date {e.due_date}; ransomware use: "
                     f"{e.known_ransomware_campaign_use}. {e.short_description} Required action: "
                     f"{e.required_action}" + (f" Exploited by: {', '.join(actors)}." if actors else ""))
    if not entries:
        lines.append(f"No entry of the sample catalogue among the {what} matches this estate.")
    listed = ", ".join(e.cve_id for e in entries[:6]) or "none"
    summary = f"{len(entries)} {what} apply to {prospect['name']}'s estate ({', '.join(estate)}): {listed}."
    title = (f"Exposure summary: ransomware-linked KEV entries at {prospect['name']}" if ransomware_only
             else f"Exposure summary: known exploited vulnerabilities at {prospect['name']}")
    return Doc("exposure_summary", title, summary, "\n\n".join(lines),
               [("Vulnerability", e.cve_id) for e in entries])


def fake_indicators(rng: random.Random, actor_uid: str, count: int = 4) -> list[str]:
    """Indicators from documentation ranges (RFC 5737 addresses, .example domains): never live."""
    nets = ("192.0.2", "198.51.100", "203.0.113")
    out = []
    for i in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            out.append(f"ip:{rng.choice(nets)}.{rng.randint(1, 254)}")
        elif kind == 1:
            out.append(f"domain:{slugify(actor_uid)[:20]}-{rng.randrange(1000):03d}.example")
        else:
            out.append("sha256:" + hashlib.sha256(f"{actor_uid}/{i}/{rng.random()}".encode()).hexdigest())
    return out


# --- assembly ---------------------------------------------------------------------------------


def load_kev_sample() -> list[KevEntry]:
    feed = parse_kev_feed(KEV_SAMPLE_PATH.read_bytes())
    if feed.errors:  # the sample ships with the code: a bad entry is a bug, not input to tolerate
        raise ValueError(f"{KEV_SAMPLE_PATH} has invalid entries: {'; '.join(map(str, feed.errors))}")
    return feed.entries


def build_demo_graph(seed: int = DEMO_SEED) -> DemoGraph:
    """The whole demo graph as rows; a pure function of the galaxy data and the seed."""
    rng = random.Random(seed)
    actors, malware_rows, technique_rows, graph = build_landscape()
    malware = {r["uid"]: r for r in malware_rows}
    techniques = {r["uid"]: r for r in technique_rows}
    graph.nodes["ThreatActor"] = [a.row for a in actors.values()]
    graph.nodes["Malware"] = malware_rows
    graph.nodes["Technique"] = technique_rows

    kev = load_kev_sample()
    for entry in kev:
        graph.nodes["KEV"].append({"uid": entry.cve_id, **entry.kev_properties(), "confidence": KEV_CONFIDENCE})
        graph.nodes["Vulnerability"].append({"uid": entry.cve_id, **entry.vulnerability_properties(),
                                             "confidence": KEV_CONFIDENCE})
    for row in lists_relationships(kev):
        graph.add_rel(LISTS, *row[:4])
    actor_by_name = {a.name: a for a in actors.values()}
    kev_ids = {e.cve_id for e in kev}
    exploiters: dict[str, list[str]] = defaultdict(list)
    for name, cve, reference in KNOWN_EXPLOITATION:
        if name not in actor_by_name or cve not in kev_ids:
            raise ValueError(f"KNOWN_EXPLOITATION names {name!r}/{cve} which the galaxy or sample lacks")
        graph.add_rel("EXPLOITS", "ThreatActor", actor_by_name[name].uid, "Vulnerability", cve,
                      reference=reference)
        exploiters[cve].append(name)

    ordered_actors = sorted(actors.values(), key=lambda a: a.uid)
    prospects = build_prospects(rng)
    targeted: Counter[str] = Counter()
    for p in prospects:
        row, contact, deal, estate = p["row"], p["contact"], p["deal"], p["estate"]
        uid = row["uid"]
        graph.nodes["Prospect"].append(row)
        graph.nodes["Contact"].append(contact)
        graph.nodes["Deal"].append(deal)
        graph.add_rel("HAS_CONTACT", "Prospect", uid, "Contact", contact["uid"])
        graph.add_rel("HAS_DEAL", "Prospect", uid, "Deal", deal["uid"])
        exposures = [e for e in kev if e.vendor_project in estate]
        for e in exposures:
            graph.add_rel("EXPOSED_TO", "Prospect", uid, "Vulnerability", e.cve_id, product=e.product)

        ranked = rank_actors(row, ordered_actors, rng)
        top = ranked[:TARGETS_PER_PROSPECT]
        for actor, basis in top:
            graph.add_rel("TARGETS", "ThreatActor", actor.uid, "Prospect", uid, basis=basis)
            targeted[actor.uid] += 1
        for n, doc in enumerate(prospect_artifacts(row, top, ranked, estate, exposures, exploiters,
                                                   malware, techniques), start=1):
            art_uid = f"{uid.removeprefix('prospect-')}-artifact-{n:02d}"
            graph.nodes["Artifact"].append({
                "uid": art_uid, "title": doc.title, "summary": doc.summary, "body": doc.body,
                "doc_type": doc.doc_type, "published": _published(rng), "prospect_uid": uid,
                "tags": sorted({doc.doc_type, slugify(row["sector"]), slugify(row["country"]),
                                *(target for label, target in doc.mentions if label == "ThreatActor")}),
                "confidence": 0.8,
            })
            graph.add_rel("ABOUT", "Artifact", art_uid, "Prospect", uid)
            for label, target in doc.mentions:
                graph.add_rel("MENTIONS", "Artifact", art_uid, label, target)

    _threat_intel(graph, [actors[u] for u, _ in targeted.most_common()], techniques, malware, prospects, rng)
    for report_uid, doc in _reports(kev, exploiters, prospects, actors, ordered_actors):
        graph.nodes["Report"].append({"uid": report_uid, "title": doc.title, "summary": doc.summary,
                                      "body": doc.body, "doc_type": doc.doc_type, "published": _published(rng),
                                      "tags": sorted({doc.doc_type, *doc.tags}),
                                      "confidence": 0.8})
        for label, target in doc.mentions:
            graph.add_rel("COVERS", "Report", report_uid, label, target)
    return graph


def prospect_artifacts(row: Row, top: Sequence[tuple[Actor, str]], ranked: Sequence[tuple[Actor, str]],
                       estate: Sequence[str], exposures: Sequence[KevEntry],
                       exploiters: dict[str, list[str]], malware: dict[str, Row],
                       techniques: dict[str, Row]) -> list[Doc]:
    """Ten documents: four actor profiles, four threat briefs, two exposure summaries."""
    if not top:
        raise ValueError(f"no galaxy actor targets {row['sector']} or {row['country']}")
    # Fewer than four matching actors would repeat one; rank_actors gives every prospect plenty.
    docs = [actor_profile(actor, row, basis, malware, techniques) for actor, basis in (list(top) * 4)[:4]]
    wide = list(ranked[:15])
    sector_actors = [(a, b) for a, b in ranked if "sector" in b][:10] or wide[:10]
    country_actors = [(a, b) for a, b in ranked if "country" in b][:10] or wide[:10]
    sector_brief = landscape("threat_brief", f"{row['sector']} threat landscape for {row['name']}",
                             f"Actors known to target {row['sector'].lower()} organisations, ranked by how "
                             f"closely they match {row['name']}.", sector_actors)
    country_brief = landscape("threat_brief", f"Threat actors with victims in {row['country']}",
                              f"Groups reported to have compromised organisations in {row['country']}, "
                              f"where {row['name']} is headquartered.", country_actors)
    sector_brief.title = f"Threat brief: {sector_brief.title}"
    country_brief.title = f"Threat brief: actors active against {row['country']} ({row['name']})"
    docs += [sector_brief, country_brief, technique_brief(row, wide, techniques), malware_brief(row, wide, malware)]
    docs += [exposure_summary(row, estate, exposures, ransomware_only, exploiters)
             for ransomware_only in (False, True)]
    if len(docs) != ARTIFACTS_PER_PROSPECT:
        raise AssertionError(f"built {len(docs)} artifacts for {row['uid']}, expected {ARTIFACTS_PER_PROSPECT}")
    return docs


def _observable(technique: Row) -> bool:
    # Reconnaissance and resource development happen on the adversary's side: no telemetry sees them.
    return bool(set(technique["tactics"]) - {"reconnaissance", "resource-development"})


def _threat_intel(graph: DemoGraph, actors: Sequence[Actor], techniques: dict[str, Row],
                  malware: dict[str, Row], prospects: Sequence[dict[str, Any]], rng: random.Random) -> None:
    """Observed-activity items for the actors that target prospects, most-targeting first."""
    candidates = [a for a in actors if a.techniques or a.malware] or list(actors)
    sectors = sorted({p["row"]["sector"] for p in prospects})
    for n in range(THREAT_INTEL_COUNT):
        actor = candidates[n % len(candidates)]
        row = actor.row
        sector = next((s for s in row["target_sectors"] if s in sectors), rng.choice(sectors))
        where = rng.choice(row["target_countries"]) if row["target_countries"] else "multiple regions"
        uid = f"ti-{n + 1:04d}"
        observable = [t for t in actor.techniques if _observable(techniques[t])]
        if actor.malware and (n % 2 == 1 or not observable):
            target_label, target = "Malware", rng.choice(actor.malware)
            what = f"{malware[target]['name']} ({malware[target]['malware_type']})"
            detail = first_sentences(malware[target]["description"], 1, 300)
        elif observable:
            target_label, target = "Technique", rng.choice(observable)
            what = f"{techniques[target]['name']} ({target})"
            detail = first_sentences(techniques[target]["description"], 1, 300)
        else:
            target_label, target, what, detail = "", "", "new infrastructure", ""
        observed = _published(rng, dt.date(2025, 1, 6), 170)
        graph.nodes["ThreatIntel"].append({
            "uid": uid,
            "title": f"{row['name']} activity: {what}",
            "summary": (f"Partner telemetry on {observed} shows {row['name']} using {what} against "
                        f"{sector.lower()} organisations in {where}. {detail}").strip(),
            "severity": row["severity"],
            "confidence": round(rng.uniform(0.55, 0.95), 2),
            "sources": list(actor.refs[:3]) or ["partner telemetry"],
            "indicators": fake_indicators(rng, actor.uid),
            "observed_at": observed,
        })
        graph.add_rel("ATTRIBUTED_TO", "ThreatIntel", uid, "ThreatActor", actor.uid)
        if target:
            graph.add_rel("INVOLVES", "ThreatIntel", uid, target_label, target)


def _reports(kev: Sequence[KevEntry], exploiters: dict[str, list[str]], prospects: Sequence[dict[str, Any]],
             actors: dict[str, Actor], ordered_actors: Sequence[Actor]) -> list[tuple[str, Doc]]:
    """A KEV digest, a ransomware report, and landscape reports for the most common sectors."""
    by_vendor: dict[str, list[KevEntry]] = defaultdict(list)
    for e in kev:
        by_vendor[e.vendor_project].append(e)
    intro = f"{len(kev)} CISA KEV entries tracked for our prospects, grouped by vendor."
    digest = ["Known exploited vulnerabilities digest", intro]
    for vendor in sorted(by_vendor):
        items = "; ".join(f"{e.cve_id} {e.vulnerability_name} (added {e.date_added})" for e in by_vendor[vendor])
        digest.append(f"{vendor}: {items}.")
    busiest = sorted(by_vendor, key=lambda v: (-len(by_vendor[v]), v))[:3]
    reports = [("report-kev-digest", Doc(
        "kev_digest", "Known exploited vulnerabilities digest",
        f"{intro} Most affected vendors: {', '.join(busiest)}.", "\n\n".join(digest),
        [("Vulnerability", e.cve_id) for e in kev], ["kev", "vulnerabilities"]))]

    ransomware = [e for e in kev if e.known_ransomware_campaign_use == "Known"]
    intro = f"{len(ransomware)} of the tracked KEV entries are known to be used in ransomware campaigns."
    lines = ["Ransomware-linked vulnerabilities", intro]
    for e in ransomware:
        who = exploiters.get(e.cve_id)
        lines.append(f"{e.cve_id} ({e.vendor_project} {e.product}): {e.short_description}"
                     + (f" Publicly attributed exploitation: {', '.join(who)}." if who else ""))
    named = sorted({name for e in ransomware for name in exploiters.get(e.cve_id, ())})
    by_name = {a.name: a.uid for a in actors.values()}
    reports.append(("report-ransomware-vulnerabilities", Doc(
        "landscape", "Ransomware-linked vulnerabilities",
        f"{intro} Public reporting attributes exploitation of some of them to {', '.join(named)}.",
        "\n\n".join(lines),
        [("Vulnerability", e.cve_id) for e in ransomware] + [("ThreatActor", by_name[n]) for n in named],
        ["ransomware", "kev"])))

    sector_counts = Counter(p["row"]["sector"] for p in prospects)
    for sector, _ in sorted(sector_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:REPORT_COUNT - len(reports)]:
        group = [(a, "sector") for a in ordered_actors if sector in a.sectors]
        group.sort(key=lambda ab: (-SEVERITY_RANK[ab[0].row["severity"]], ab[0].uid))
        report = landscape("landscape", f"Quarterly threat landscape: {sector}",
                           f"{len(group[:12])} actors with documented activity against {sector.lower()} "
                           f"organisations, most severe first.", group[:12])
        report.tags = [slugify(sector)]
        reports.append((f"report-landscape-{slugify(sector)}", report))
    return reports


# --- loading ----------------------------------------------------------------------------------


class DemoLoadError(RuntimeError):
    """The graph store did not write what the demo asked for."""


class BulkGraph(Protocol):
    """The bulk side of the graph store (sync.stores.neo4j_graph.Neo4jGraphStore)."""

    def ensure_schema(self, labels: Iterable[str]) -> None: ...

    def count_label(self, label: str) -> int: ...

    def import_entities(self, label: str, rows: Sequence[Row], source: str) -> int: ...

    def import_relationships(self, rel_type: str, rows: Sequence[RelRow]) -> int: ...


def load_demo(graph: BulkGraph, *, only_if_empty: bool = False, demo: DemoGraph | None = None) -> dict[str, int]:
    """Write the demo graph in bulk; returns written counts per label and relationship type.

    With `only_if_empty`, nothing is written (and {} returned) when the graph already has prospects,
    so `load_demo --if-empty` can run on every start without bumping versions.
    """
    if only_if_empty and graph.count_label("Prospect") > 0:
        return {}
    demo = demo or build_demo_graph()
    graph.ensure_schema(DEMO_LABELS)
    counts: dict[str, int] = {}
    for label in DEMO_LABELS:
        rows = demo.nodes.get(label, [])
        written = graph.import_entities(label, rows, source=SOURCES[label]) if rows else 0
        if written != len(rows):
            raise DemoLoadError(f"{label}: the graph wrote {written} of {len(rows)} rows")
        counts[label] = written
    for rel_type, rows in sorted(demo.relationships.items()):
        written = graph.import_relationships(rel_type, rows)
        if written != len(rows):
            raise DemoLoadError(f"{rel_type}: the graph wrote {written} of {len(rows)} relationships "
                                "(an endpoint is missing)")
        counts[rel_type] = written
    return counts
