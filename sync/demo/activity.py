"""Demo activity: a steady trickle of the changes a live deployment sees, so the dashboard of a
fresh demo moves within a minute (`manage.py simulate`; bin/run starts it unless DEMO_ACTIVITY=off).

- Foreign edits (`rate` a minute): Cypher writes straight to Neo4j, as another tool would make
  them — change capture finds them through the APOC trigger's stamps. Two in three change embedded
  text (a threat actor's, malware's or technique's description gains a "Last observed" sentence),
  one in three only metadata (an artifact's `published` date).
- A new CISA KEV entry every `kev_every` seconds (3 minutes), also written by Cypher (with its
  Vulnerability and the LISTS link): HIGH priority, so change capture applies it at once — the
  "searchable within a minute" promise the overview shows.
- Now and then (`delete_every`, 2 minutes) a threat-intel item is deleted and, half a minute
  later, re-created with the same properties and relationships: a tombstone, then a new version.
- On a fresh demo, `first_conflicts` (run by `load_demo`) makes a dozen such disputes at once, so a
  new user finds conflicts to resolve; then, now and then (`dispute_every`, 90 s), two sources disagree on a rule-governed field through
  `sync.writes.write_entity` (a threat actor's severity, a vulnerability's CVSS score); the rule
  table settles most, and a low-confidence source leaves a conflict open for an analyst (at most
  MAX_OPEN_DEMO_CONFLICTS at a time, so the queue stays workable).

Every write names itself (`source` "demo-activity…"), and the generated KEV ids are
CVE-<year>-9xxxx with a description that says it is simulated.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings

from sync import writes
from sync.conflicts import rules
from sync.models import Conflict
from sync.stores import graph_store

log = logging.getLogger(__name__)

SOURCE = "demo-activity"
MAX_OPEN_DEMO_CONFLICTS = 15
TEXT_LABELS = ("ThreatActor", "Malware", "Technique")
OBSERVED = " Last observed: "
RECREATE_AFTER = 30.0


@dataclass
class Deleted:
    label: str
    uid: str
    properties: dict
    relationships: list[dict]
    at: float


@dataclass
class Counts:
    text_edits: int = 0
    metadata_edits: int = 0
    kevs: int = 0
    deletes: int = 0
    recreates: int = 0
    disputes: int = 0  # pairs of sources made to disagree (each pair is two writes)
    # What the disputes' writes recorded (first_conflicts): every disagreement a write met — with
    # the graph's own value too, not only within its pair — settled by a rule or left open.
    settled: int = 0
    left_open: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


class Activity:
    def __init__(self, *, rate: float, kev_every: float = 180.0, delete_every: float = 120.0,
                 dispute_every: float = 90.0, seed: int | None = None, say: Callable[[str], None] = log.info):
        self.rate = rate
        self.kev_every, self.delete_every, self.dispute_every = kev_every, delete_every, dispute_every
        self.random = random.Random(seed)
        self.say = say
        self.graph = graph_store()
        self.counts = Counts()
        self.deleted: list[Deleted] = []

    def cypher(self, query: str, **params) -> list:
        records, _, _ = self.graph.driver.execute_query(query, params, database_=settings.NEO4J_DATABASE)
        return records

    def run(self, *, seconds: float | None = None, stop=lambda: False) -> Counts:
        """Act until `stop()` or `seconds`; the first KEV, dispute and delete come within a minute."""
        start = time.monotonic()
        due = {"edit": start + 2, "kev": start + 5, "dispute": start + 20, "delete": start + 40}
        try:
            while not stop() and (seconds is None or time.monotonic() - start < seconds):
                now = time.monotonic()
                for kind, at in list(due.items()):
                    if now >= at:
                        self.step(kind)
                        due[kind] = now + self.jitter(self.every(kind))
                for item in [d for d in self.deleted if now - d.at >= RECREATE_AFTER]:
                    self.guarded("re-create", lambda item=item: self.recreate(item))
                time.sleep(min(0.5, max(0.0, min(due.values()) - time.monotonic())))
        finally:
            for item in list(self.deleted):  # leave the graph whole
                self.guarded("re-create", lambda item=item: self.recreate(item))
        return self.counts

    def every(self, kind: str) -> float:
        return {"edit": 60.0 / self.rate if self.rate > 0 else float("inf"), "kev": self.kev_every,
                "dispute": self.dispute_every, "delete": self.delete_every}[kind]

    def jitter(self, seconds: float) -> float:
        return seconds * self.random.uniform(0.7, 1.3)

    def step(self, kind: str) -> None:
        action = {"edit": self.edit, "kev": self.new_kev, "dispute": self.dispute, "delete": self.delete}[kind]
        self.guarded(kind, action)

    def guarded(self, what: str, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 — a demo keeps going; the failure is printed and counted
            message = f"{what} failed: {type(exc).__name__}: {exc}"
            self.counts.errors.append(message)
            self.say(message)

    def random_uid(self, label: str) -> str | None:
        total = self.cypher(f"MATCH (n:`{label}`) RETURN count(n) AS n")[0]["n"]
        if not total:
            return None
        rows = self.cypher(f"MATCH (n:`{label}`) RETURN n.uid AS uid SKIP $skip LIMIT 1",
                           skip=self.random.randrange(total))
        return rows[0]["uid"] if rows else None

    # -- foreign edits ---------------------------------------------------------------------------

    def edit(self) -> None:
        if self.random.random() < 2 / 3:
            label = self.random.choice(TEXT_LABELS)
            uid = self.random_uid(label)
            if uid is None:
                self.counts.skipped += 1
                return
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            self.cypher(f"MATCH (n:`{label}` {{uid: $uid}}) "
                        "SET n.description = split(coalesce(n.description, ''), $observed)[0] + $observed + $stamp + '.'",
                        uid=uid, observed=OBSERVED, stamp=stamp)
            self.counts.text_edits += 1
            self.say(f"foreign edit: {label}:{uid} description (re-embedded)")
        else:
            uid = self.random_uid("Artifact")
            if uid is None:
                self.counts.skipped += 1
                return
            self.cypher("MATCH (n:Artifact {uid: $uid}) SET n.published = $day", uid=uid,
                        day=datetime.now(UTC).date().isoformat())
            self.counts.metadata_edits += 1
            self.say(f"foreign edit: Artifact:{uid} published (metadata only)")

    # -- a new KEV -------------------------------------------------------------------------------

    def new_kev(self) -> None:
        year = datetime.now(UTC).year
        taken = self.cypher("MATCH (k:KEV) WHERE k.uid STARTS WITH $prefix RETURN count(k) AS n",
                            prefix=f"CVE-{year}-9")[0]["n"]
        cve = f"CVE-{year}-{90001 + taken}"
        template = self.cypher("MATCH (k:KEV) WHERE NOT k.uid STARTS WITH $prefix WITH k ORDER BY rand() LIMIT 1 "
                               "RETURN k.vendor_project AS vendor, k.product AS product, k.cwes AS cwes",
                               prefix=f"CVE-{year}-9")
        vendor, product, cwes = ((template[0]["vendor"], template[0]["product"], template[0]["cwes"] or [])
                                 if template else ("Example Vendor", "Example Gateway", ["CWE-78"]))
        kind = self.random.choice(("OS command injection", "authentication bypass", "path traversal",
                                   "deserialization of untrusted data", "out-of-bounds write"))
        name = f"{vendor} {product} {kind.title()} Vulnerability"
        today = datetime.now(UTC).date().isoformat()
        ransomware = self.random.choice(("Known", "Unknown", "Unknown"))
        description = (f"Simulated entry (demo activity): {vendor} {product} contains an {kind} vulnerability "
                       "that a remote attacker can exploit.")
        self.cypher(
            "CREATE (k:KEV {uid: $cve, cve_id: $cve, vendor_project: $vendor, product: $product, "
            "vulnerability_name: $name, date_added: $today, short_description: $description, "
            "required_action: 'Apply mitigations per vendor instructions or discontinue use of the product.', "
            "due_date: $today, known_ransomware_campaign_use: $ransomware, notes: '', cwes: $cwes, "
            "severity: $severity, source: $source, confidence: 1.0}) "
            "MERGE (v:Vulnerability {uid: $cve}) "
            "SET v.cve_id = $cve, v.title = $name, v.description = $description, v.cwes = $cwes, "
            "v.severity = $severity, v.source = $source "
            "MERGE (k)-[:LISTS]->(v)",
            cve=cve, vendor=vendor, product=product, name=name, today=today, description=description,
            ransomware=ransomware, cwes=list(cwes), severity="critical" if ransomware == "Known" else "high",
            source=f"{SOURCE}:cisa-feed")
        self.counts.kevs += 1
        self.say(f"new KEV: {cve} ({name})")

    # -- delete and re-create ---------------------------------------------------------------------

    def delete(self) -> None:
        uid = self.random_uid("ThreatIntel")
        if uid is None or any(d.uid == uid for d in self.deleted):
            self.counts.skipped += 1
            return
        rows = self.cypher("MATCH (n:ThreatIntel {uid: $uid}) "
                           "OPTIONAL MATCH (n)-[r]-(m) WHERE m.uid IS NOT NULL "
                           "RETURN properties(n) AS props, collect(CASE WHEN r IS NULL THEN NULL ELSE "
                           "{type: type(r), out: startNode(r) = n, label: labels(m)[0], uid: m.uid, "
                           "props: properties(r)} END) AS rels", uid=uid)
        if not rows:
            self.counts.skipped += 1
            return
        props = {k: v for k, v in rows[0]["props"].items() if k not in ("version", "updated_at")}
        self.cypher("MATCH (n:ThreatIntel {uid: $uid}) DETACH DELETE n", uid=uid)
        self.deleted.append(Deleted("ThreatIntel", uid, props, list(rows[0]["rels"]), time.monotonic()))
        self.counts.deletes += 1
        self.say(f"deleted: ThreatIntel:{uid} (re-created in {RECREATE_AFTER:.0f} s)")

    def recreate(self, item: Deleted) -> None:
        self.deleted.remove(item)
        self.cypher(f"CREATE (n:`{item.label}`) SET n = $props", props=item.properties)
        for rel in item.relationships:
            pattern = "(n)-[r:`{t}`]->(m)" if rel["out"] else "(m)-[r:`{t}`]->(n)"
            self.cypher(f"MATCH (n:`{item.label}` {{uid: $uid}}), (m:`{rel['label']}` {{uid: $other}}) "
                        f"CREATE {pattern.format(t=rel['type'])} SET r = $props",
                        uid=item.uid, other=rel["uid"], props=rel["props"])
        self.counts.recreates += 1
        self.say(f"re-created: {item.label}:{item.uid} with {len(item.relationships)} relationships")

    # -- disagreeing sources ----------------------------------------------------------------------

    def dispute(self, *, label: str | None = None, leave_open: bool | None = None) -> None:
        if leave_open is None:
            open_demo = Conflict.objects.filter(status=Conflict.Status.OPEN, sources__other__source__startswith=SOURCE)
            leave_open = open_demo.count() < MAX_OPEN_DEMO_CONFLICTS and self.random.random() < 0.5
        if label is None:
            label = "ThreatActor" if self.random.random() < 0.5 else "Vulnerability"
        if label == "ThreatActor":
            uid = self.random_uid("ThreatActor")
            if uid is None:
                self.counts.skipped += 1
                return
            first, second = self.random.sample(["low", "medium", "high", "critical"], 2)
            if leave_open:  # the low-confidence source says worse: the rule would adopt it, so it asks
                first, second = sorted((first, second), key=rules.severity_rank)
            writes.write_entity("ThreatActor", uid, {"severity": first}, source=f"{SOURCE}:vendor-a",
                                confidence=0.9, actor=SOURCE)
            writes.write_entity("ThreatActor", uid, {"severity": second}, source=f"{SOURCE}:vendor-b",
                                confidence=0.3 if leave_open else 0.8, actor=SOURCE)
            what = f"ThreatActor:{uid} severity {first} vs {second}"
        else:
            uid = self.random_uid("Vulnerability")
            if uid is None:
                self.counts.skipped += 1
                return
            first = round(self.random.uniform(5.0, 9.8), 1)
            second = round(min(10.0, max(0.1, first + self.random.choice((-2.1, -1.3, 1.2, 0.7)))), 1)
            writes.write_entity("Vulnerability", uid, {"cvss_score": first}, source=f"{SOURCE}:nvd-mirror",
                                confidence=0.9, actor=SOURCE)
            writes.write_entity("Vulnerability", uid, {"cvss_score": second}, source=f"{SOURCE}:vendor-advisory",
                                confidence=0.3 if leave_open else 0.8, actor=SOURCE)
            what = f"Vulnerability:{uid} CVSS {first} vs {second}"
        self.counts.disputes += 1
        self.say(f"disagreeing sources: {what}" + (" (low confidence: an analyst decides)" if leave_open else ""))


FIRST_DISPUTES = 12  # on a fresh demo: 8 left for an analyst, the rest settled by the rules


def first_conflicts(*, disputes: int = FIRST_DISPUTES, seed: int = 20250601,
                    say: Callable[[str], None] = log.info) -> Counts:
    """Conflicts for a fresh demo, so a new user has some to resolve at once: pairs of sources
    disagreeing on threat actors' severities and vulnerabilities' CVSS scores, written through
    `sync.writes.write_entity` like any ingest, so the rule table settles some (recorded as
    auto-resolved) and leaves the low-confidence ones open for an analyst."""
    activity = Activity(rate=0, seed=seed, say=say)
    before = Conflict.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    for n in range(disputes):
        activity.guarded("dispute", lambda n=n: activity.dispute(
            label=("ThreatActor", "Vulnerability")[n % 2], leave_open=n % 3 != 2))
    recorded = Conflict.objects.filter(pk__gt=before)
    activity.counts.settled = recorded.filter(status=Conflict.Status.AUTO_RESOLVED).count()
    activity.counts.left_open = recorded.filter(status=Conflict.Status.OPEN).count()
    return activity.counts
