"""The sync policy: selective sync, priorities, write modes, text, and metadata allow-lists."""

import dataclasses
import datetime as dt
import json
from decimal import Decimal

import neo4j.time
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync import models
from sync.embedding import content_hash, model_id
from sync.ids import parse_vector_id
from sync.policy import (
    ENGINE_KEYS,
    FIELD_MAX_CHARS,
    LIST_MAX_ITEMS,
    METADATA_BUDGET_BYTES,
    METADATA_LIMIT_BYTES,
    POLICY,
    LabelPolicy,
    Priority,
    VectorFailure,
    WriteMode,
    build_document,
    build_text,
    document,
    is_sensitive_key,
    policy_for,
    synced_labels,
    text_and_hash,
)
from sync.policy.memo import TextMemo
from sync.stores.base import Entity
from tests.leaks import shown

NOW = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
PRIVATE_PROSPECT_FIELDS = {
    "contact_name": "Jane Sentinel-Doe", "contact_email": "jane@sentinel.example",
    "contact_phone": "+44 20 7946 0999", "email": "sales@sentinel.example", "phone": "+1 555 0100",
    "address": "1 Sentinel Street", "annual_revenue": 987654321, "deal_value": 123456,
    "budget": 55555, "notes": "sentinel-note", "internal_notes": "sentinel-internal",
    "credit_terms": "sentinel-net-90",
}


def entity(node_label, uid="u-1", version=1, updated_at=NOW, **properties):
    return Entity(node_label, uid, version, updated_at, {"uid": uid, "version": version, **properties})


def metadata_of(document):
    return [chunk.metadata for chunk in document.chunks]


# --- the table -------------------------------------------------------------------------------
EXPECTED = {
    # label: (priority, write mode, on vector failure)
    "KEV": (Priority.HIGH, WriteMode.DUAL_WRITE, VectorFailure.COMPENSATE),
    "Vulnerability": (Priority.MEDIUM, WriteMode.WRITE_THROUGH, VectorFailure.QUEUE),
    "ThreatActor": (Priority.MEDIUM, WriteMode.WRITE_THROUGH, VectorFailure.QUEUE),
    "ThreatIntel": (Priority.MEDIUM, WriteMode.WRITE_THROUGH, VectorFailure.QUEUE),
    "Malware": (Priority.MEDIUM, WriteMode.WRITE_THROUGH, VectorFailure.QUEUE),
    "Technique": (Priority.MEDIUM, WriteMode.WRITE_THROUGH, VectorFailure.QUEUE),
    "Report": (Priority.LOW, WriteMode.WRITE_THROUGH, VectorFailure.QUEUE),
    "Artifact": (Priority.LOW, WriteMode.WRITE_THROUGH, VectorFailure.QUEUE),
    "Prospect": (Priority.LOW, WriteMode.WRITE_THROUGH, VectorFailure.QUEUE),
}
NEVER_SYNCED = ["Contact", "Deal", "Account", "_SyncTombstone", "Unknown", "kev", "Person"]


@pytest.mark.parametrize(("label", "expected"), EXPECTED.items())
def test_it_syncs_the_agreed_labels_with_their_rules(label, expected):
    policy = policy_for(label)
    assert policy.synced
    assert (policy.priority, policy.write_mode, policy.on_vector_failure) == expected
    assert policy.description


def test_it_syncs_nothing_else():
    assert set(synced_labels()) == set(EXPECTED)
    assert {label for label, policy in POLICY.items() if not policy.synced} == {
        "Contact", "Deal", "Account", "_SyncTombstone"}


@pytest.mark.parametrize("label", NEVER_SYNCED)
def test_it_never_syncs_people_money_internals_or_unknown_labels(label):
    policy = policy_for(label)
    assert not policy.synced
    assert policy.text_fields == () and policy.metadata_fields == ()
    assert build_document(entity(label, name="x", description="y", email="a@b.example")) is None


def test_it_lists_synced_labels_high_priority_first():
    labels = synced_labels()
    assert labels[0] == "KEV"
    priorities = [policy_for(label).priority for label in labels]
    assert priorities == sorted(priorities)


def test_it_restricts_prospect_metadata_to_the_strict_allow_list():
    assert set(POLICY["Prospect"].metadata_fields) == {"sector", "country", "size_band", "tier", "name"}


def test_it_refuses_a_label_that_is_not_a_string():
    with pytest.raises(ValueError, match="label must be a str"):
        policy_for(None)


# --- enums -----------------------------------------------------------------------------------
def test_it_sorts_priorities_high_first_and_names_them_in_words():
    assert Priority is models.Priority  # one enum: the policy's is the one the queue stores
    assert sorted([Priority.LOW, Priority.HIGH, Priority.MEDIUM]) == [Priority.HIGH, Priority.MEDIUM, Priority.LOW]
    assert Priority.HIGH < Priority.MEDIUM < Priority.LOW
    assert max(Priority) == Priority.LOW and min(Priority) == Priority.HIGH
    assert [p.value for p in Priority] == [0, 1, 2]  # stored
    assert Priority.labels == ["high", "medium", "low"]  # read and typed
    assert Priority.from_label("medium") is Priority.MEDIUM
    with pytest.raises(ValueError, match="priority must be one of high, medium, low, got 'HIGH'"):
        Priority.from_label("HIGH")


def test_it_names_write_modes_and_failure_handling_for_storage():
    assert WriteMode.DUAL_WRITE == "dual_write" and WriteMode.WRITE_THROUGH == "write_through"
    assert VectorFailure.COMPENSATE == "compensate" and VectorFailure.QUEUE == "queue"


# --- the PII / financial guard ---------------------------------------------------------------
@pytest.mark.parametrize("key", [
    "email", "contact_email", "workEmail", "Email_Address", "phone", "telephone", "mobile_phone",
    "address", "postal_addresses", "annual_revenue", "salary", "deal_value", "deals", "budget",
    "iban", "credit_terms", "creditLimit", "ssn", "password", "api_token", "notes", "internal_notes",
    "note", "contact_name", "contactname", "secret", "passport_no", "bank_account",
])
def test_it_recognises_personal_and_financial_keys(key):
    assert is_sensitive_key(key)


@pytest.mark.parametrize("key", [
    "name", "sector", "country", "size_band", "tier", "cve_id", "vendor_project", "date_added",
    "known_ransomware_campaign_use", "cwes", "severity", "aliases", "target_sectors", "mitre_id",
    "indicators", "sources", "observed_at", "prospect_uid", "doc_type", "tags", "cvss_score",
    "description", "required_action", "first_seen", "classname", "ideal", "tokenizer_kind",
])
def test_it_lets_ordinary_keys_through(key):
    assert not is_sensitive_key(key)


@pytest.mark.parametrize("field", sorted(PRIVATE_PROSPECT_FIELDS))
def test_it_refuses_a_sensitive_field_added_to_an_allow_list(field):
    prospect = POLICY["Prospect"]
    with pytest.raises(ValueError, match="personal or financial data"):
        dataclasses.replace(prospect, metadata_fields=(*prospect.metadata_fields, field))
    with pytest.raises(ValueError, match="personal or financial data"):
        dataclasses.replace(prospect, text_fields=(*prospect.text_fields, (field, "Leak")))


def test_it_keeps_every_allow_list_free_of_sensitive_keys():
    for policy in POLICY.values():
        for name in (*policy.metadata_fields, *policy.text_property_names):
            assert not is_sensitive_key(name), f"{policy.label}.{name}"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metadata_fields": ("name", "version")}, "engine's own metadata keys"),
        ({"metadata_fields": ("name", "name")}, "metadata field twice"),
        ({"text_fields": ()}, "no text fields"),
        ({"on_vector_failure": VectorFailure.COMPENSATE}, "only a dual_write can be compensated"),
        ({"label": "Bad-Label"}, "cannot be used in a vector id"),
        ({"priority": "high"}, "take the enums"),
    ],
)
def test_it_refuses_inconsistent_policies(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(POLICY["ThreatActor"], **changes)


def test_it_refuses_fields_on_a_never_synced_policy():
    with pytest.raises(ValueError, match="never synced"):
        LabelPolicy("Contact", False, "person", metadata_fields=("name",))


# --- documents -------------------------------------------------------------------------------
def test_it_writes_labelled_lines_in_policy_order():
    document = build_document(entity(
        "ThreatActor", "apt29", name="APT29", aliases=["Cozy Bear", "The Dukes"],
        description="Russian SVR-linked group.\n\n  Targets   governments.", country="RU",
        target_sectors=["Government", "Defence"], confidence=0.9,
    ))
    assert document.text == (
        "Name: APT29\nAliases: Cozy Bear, The Dukes\n"
        "Description: Russian SVR-linked group.\n\nTargets governments.\nCountry: RU\n"
        "Target sectors: Government, Defence"
    )
    assert document.content_hash == content_hash(document.text)


def test_it_makes_one_chunk_with_the_plain_id_and_the_engine_keys():
    document = build_document(entity("KEV", "CVE-2024-3400", version=4, cve_id="CVE-2024-3400",
                                     vulnerability_name="PAN-OS command injection", severity="critical"))
    (chunk,) = document.chunks
    assert chunk.vector_id == "KEV:CVE-2024-3400"
    assert chunk.metadata == {
        "cve_id": "CVE-2024-3400", "vulnerability_name": "PAN-OS command injection", "severity": "critical",
        "label": "KEV", "uid": "CVE-2024-3400", "version": 4, "content_hash": document.content_hash, "model": model_id(),
        "chunks": 1, "updated_at": "2025-03-04T05:06:07+00:00", "chunk": 0, "text": document.text,
    }


def test_it_numbers_the_chunks_of_a_long_text():
    body = " ".join(f"Paragraph {n} describes lateral movement through SMB shares." for n in range(300))
    document = build_document(entity("Report", "r-9", title="Long report", body=body))
    assert len(document.chunks) > 2
    for n, chunk in enumerate(document.chunks):
        assert chunk.vector_id == f"Report:r-9#{n}"
        assert parse_vector_id(chunk.vector_id) == ("Report", "r-9", n)
        assert (chunk.metadata["chunk"], chunk.metadata["chunks"]) == (n, len(document.chunks))
        assert chunk.metadata["text"] == chunk.text[:1000] or chunk.metadata["text"].endswith("…")
        assert len(chunk.metadata["text"]) <= 1000


def every_string_in(value):
    return json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("label", sorted(EXPECTED))
def test_it_lets_no_property_outside_the_allow_list_into_metadata(label):
    policy = POLICY[label]
    fields = {name: f"value of {name}" for name in (*policy.metadata_fields, *policy.text_property_names)}
    extras = {**PRIVATE_PROSPECT_FIELDS, "random_property": "sentinel-random", "source": "sentinel-src"}
    document = build_document(entity(label, **fields, **extras))
    allowed = set(policy.metadata_fields) | set(ENGINE_KEYS)
    for metadata in metadata_of(document):
        assert set(metadata) <= allowed
        assert set(policy.metadata_fields) <= set(metadata)
    dumped = every_string_in([document.text, metadata_of(document)])
    # Each value whole: the dump holds content hashes, whose hex can hold "55555" by chance.
    assert shown(dumped, [str(value) for value in extras.values()]) == []


def test_it_never_lets_properties_override_the_engine_keys():
    spoofs = {"label": "Spoof", "chunk": 9, "chunks": 9, "text": "<script>x</script>", "content_hash": "0"}
    document = build_document(entity("Malware", "emotet", version=3, name="Emotet", **spoofs))
    (chunk,) = document.chunks
    assert chunk.metadata["label"] == "Malware"
    assert chunk.metadata["uid"] == "emotet"
    assert chunk.metadata["version"] == 3
    assert (chunk.metadata["chunk"], chunk.metadata["chunks"]) == (0, 1)
    assert chunk.metadata["text"] == "Name: Emotet"
    assert chunk.metadata["content_hash"] == document.content_hash


def test_it_coerces_metadata_to_pinecone_types():
    paris = dt.timezone(dt.timedelta(hours=2))
    document = build_document(entity(
        "ThreatIntel", "ti-1", title="Beacon seen", summary="C2 traffic.",
        severity=None, confidence=Decimal("0.75"), sources={"b-feed", "a-feed", None, ""},
        indicators=["1.2.3.4", 42, True, dt.date(2025, 1, 2), None, "  "],
        observed_at=dt.datetime(2025, 1, 2, 12, 0, tzinfo=paris),
    ))
    metadata = document.chunks[0].metadata
    assert "severity" not in metadata
    assert metadata["confidence"] == 0.75 and isinstance(metadata["confidence"], float)
    assert metadata["sources"] == ["a-feed", "b-feed"]
    assert metadata["indicators"] == ["1.2.3.4", "42", "yes", "2025-01-02"]
    assert metadata["observed_at"] == "2025-01-02T10:00:00+00:00"


def test_it_turns_neo4j_temporal_values_and_dicts_into_strings():
    document = build_document(entity(
        "ThreatActor", "apt1", updated_at=neo4j.time.DateTime(2025, 5, 1, 12, 0, 0, tzinfo=dt.UTC),
        name="APT1", first_seen=neo4j.time.Date(2006, 1, 1), confidence=float("nan"),
        motivation={"primary": "espionage"},
    ))
    metadata = document.chunks[0].metadata
    assert metadata["updated_at"] == "2025-05-01T12:00:00+00:00"
    assert metadata["first_seen"] == "2006-01-01"
    assert "confidence" not in metadata  # NaN has no Pinecone form
    assert metadata["motivation"] == '{"primary": "espionage"}'


def test_it_keeps_numbers_pinecone_cannot_hold_exactly_as_text():
    document = build_document(entity("Vulnerability", "v", title="Overflow", cvss_score=10**400,
                                     description=Decimal("sNaN"), severity=2**53))
    metadata = document.chunks[0].metadata
    assert metadata["cvss_score"] == str(10**400)
    assert metadata["severity"] == 2**53
    assert document.text == "Title: Overflow"


def test_it_refuses_a_property_with_no_text_form():
    with pytest.raises(ValueError, match=r"ThreatActor\.name is a bytes"):
        build_document(entity("ThreatActor", "x", name=b"\x00\x01"))


def test_it_caps_long_values_and_keeps_metadata_under_the_limit():
    document = build_document(entity(
        "Vulnerability", "CVE-2025-0001", title="界" * 50_000, description="Overflow.",
        cwes=[f"CWE-{n}" * 80 for n in range(500)], severity="high",
    ))
    metadata = document.chunks[0].metadata
    assert len(metadata["title"]) <= FIELD_MAX_CHARS and metadata["title"].endswith("…")
    assert len(metadata["cwes"]) <= LIST_MAX_ITEMS
    assert document.text.count("CWE-0") == 80  # the first item, whole
    assert "CWE-100" not in document.text  # items past the hundredth are not embedded
    size = len(json.dumps(metadata, ensure_ascii=True, separators=(",", ":")))
    assert size <= METADATA_BUDGET_BYTES < METADATA_LIMIT_BYTES


def test_it_halves_the_largest_values_when_the_caps_are_not_enough():
    # 12 capped fields of 4-byte characters would be ~130 KB of escaped JSON without the fitting.
    fields = {name: "😀" * 5_000 for name in POLICY["ThreatActor"].metadata_fields}
    fields["aliases"] = ["😀" * 300] * 500
    document = build_document(entity("ThreatActor", "big", **fields))
    for metadata in metadata_of(document):
        assert len(json.dumps(metadata, ensure_ascii=True, separators=(",", ":"))) <= METADATA_BUDGET_BYTES
        assert len(json.dumps(metadata, ensure_ascii=False).encode()) < METADATA_LIMIT_BYTES
        assert metadata["name"].startswith("😀") and metadata["aliases"]


def test_it_changes_the_hash_only_when_the_text_changes():
    first = build_document(entity("Malware", "m", name="Emotet", description="Banking  trojan.", mitre_id="S0367"))
    spaced = build_document(entity("Malware", "m", version=2, name="Emotet", description="Banking trojan. ",
                                   mitre_id="S0367"))
    metadata_only = build_document(entity("Malware", "m", version=3, name="Emotet",
                                          description="Banking trojan.", mitre_id="S9999"))
    changed = build_document(entity("Malware", "m", version=4, name="Emotet", description="Loader."))
    assert first.content_hash == spaced.content_hash == metadata_only.content_hash
    assert changed.content_hash != first.content_hash


_field_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=16),
    st.sampled_from(["", "1", "True", "yes", "a", "a, b", "<b>a</b>", "ring 555-123-4567"]),
    st.lists(st.sampled_from(["a", "b", "a, b", "1"]), max_size=3))


@given(st.lists(st.tuples(_field_values, _field_values), min_size=1, max_size=12))
def test_the_remembered_text_is_always_the_text_built_now(rounds):
    """text_and_hash remembers texts by the text fields' values: whatever came before, it answers
    what build_text and content_hash answer now (1, True and "1" are different texts; so are a
    list and its items joined; -0.0 and 0.0)."""
    policy = policy_for("ThreatActor")
    document._texts.clear()
    for name, aliases in rounds:
        properties = {"name": name, "aliases": aliases, "description": "Targets banks."}
        text = build_text(policy, properties)
        assert text_and_hash(policy, properties) == (text, content_hash(text))


def test_the_remembered_text_follows_the_phone_regions(settings):
    policy = policy_for("ThreatActor")
    french = {"name": "Actor", "description": "Appelez le 01 42 68 53 00 avant midi."}
    assert "01 42 68 53 00" in text_and_hash(policy, french)[0]
    settings.CONTACT_PHONE_REGIONS = ["US", "GB", "FR"]
    assert "01 42 68 53 00" not in text_and_hash(policy, french)[0]


def test_the_text_memory_is_bounded():
    memo = TextMemo(max_chars=800)
    for n in range(100):
        memo.put(n, "x" * 50, 50)
        assert memo._chars <= 800
    assert memo.get(99) == "x" * 50 and len(memo) <= 16
    memo.put("huge", "x" * 101, 101)  # over an eighth: never kept
    assert memo.get("huge") is None


def test_it_gives_an_entity_without_text_no_chunks():
    document = build_document(entity("ThreatActor", "ghost", description="  <script>alert(1)</script> ",
                                     severity="low"))
    assert document is not None
    assert document.text == ""
    assert document.chunks == () and not document.has_vectors and document.vector_ids == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"uid": 42}, "uid must be a str"),
        ({"uid": ""}, "must not be empty"),
        ({"uid": "u" * 1025}, "longer than 1024"),
        ({"version": "3"}, "version must be an int"),
        ({"version": True}, "version must be an int"),
        ({"updated_at": None}, "updated_at must be a datetime"),
        ({"updated_at": "2025-01-01"}, "updated_at must be a datetime"),
    ],
)
def test_it_refuses_malformed_entities_by_name(changes, message):
    base = entity("ThreatActor", "apt29", name="APT29")
    with pytest.raises(ValueError, match=message):
        build_document(dataclasses.replace(base, **changes))


def test_contact_details_in_prospect_text_are_redacted_before_they_leave_the_graph():
    from datetime import UTC, datetime

    from sync.policy import build_document
    from sync.stores.base import Entity

    entity = Entity("Prospect", "acme", 3, datetime(2026, 1, 1, tzinfo=UTC), {
        "uid": "acme", "name": "Acme", "sector": "energy",
        "description": "Reach Jane at jane.doe@acme.example or +44 20 7946 0958 for the pilot."})
    document = build_document(entity)
    assert "jane.doe@acme.example" not in document.text and "7946" not in document.text
    assert "[e-mail redacted]" in document.text and "[phone redacted]" in document.text
    assert all("@acme.example" not in str(chunk.metadata) for chunk in document.chunks)


# --- contact details: none reach the index, in any national format ----------------------------
# Phone numbers as people write them: national formats of the default regions (US, GB), the
# numbers of fiction and examples (555, Ofcom's drama ranges) and international ones.
PHONE_NUMBERS = [
    "(555) 123-4567", "555-123-4567", "555.123.4567", "555 123 4567", "1-555-123-4567", "+1-555-123-4567",
    "+1 (202) 555-0143", "(202) 555-0143", "202-555-0143", "1-800-555-0199", "2025550143", "+12025550143",
    "020 7946 0958", "(020) 7946 0958", "020-7946-0958", "+44 20 7946 0958", "+44 (0)20 7946 0958",
    "07700 900123", "0161 496 0000", "01632 960123", "+33 1 23 45 67 89", "+49 30 1234567",
    "+61 2 5550 1234", "+81 3-1234-5678",
]
# What threat intelligence is full of and must stay as it is: dates, timestamps, CVE/GHSA/ZDI ids,
# versions and builds, ATT&CK ids, IP addresses and networks, ports, hashes, counts and money.
NOT_PHONE_NUMBERS = [
    "2024-01-15", "2024-01-15T10:22:33Z", "2024-01-15 10:22:33", "2024-01-15 10:22", "15/01/2024",
    "01/15/2024 10:22", "2024.01.15", "20240115", "2023-2024", "2019-2024 and 2020-2021",
    "2024-01-15 to 2024-02-20", "14:30 UTC on 2024-03-01", "10:22:33.123456", "1700000000",
    "1700000000.123", "1700000000123",
    "CVE-2024-12345", "CVE-2021-44228", "CVE-2024-3094 and CVE-2024-21762", "CVE-2024-0001 (2024-01-02)",
    "CWE-79", "GHSA-j8r2-6x86-q33q", "ZDI-24-123", "ICSA-24-046-01", "MS17-010", "KB5034441",
    "10.0.19041.1", "10.0.22621.1265", "version 4.2.1.1234", "7.5.0-1234", "v2.4.49 and 2.4.50",
    "Windows 10 22H2 build 19045.3803", "build 22621.2861", "1.2.840.113549.1.1.11",
    "T1059.001", "T1566", "T1003.001 and T1059.003", "T1059.001/T1027",
    "192.168.100.200", "10.0.0.1:8080", "192.168.1.254/24", "10.10.10.10 and 172.16.254.1", "8.8.8.8",
    "IP 203.0.113.45:4444", "0.0.0.0/0", "2001:db8::8a2e:370:7334", "AS13335", "ASN 15169, 16509",
    "port 44300", "ports 8080, 8443 and 9200", "port 3389/tcp, 445/tcp and 5985",
    "d41d8cd98f00b204e9800998ecf8427e", "MD5 098f6bcd4621d373cade4e832627b4f6",
    "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "0x7ffde4a3",
    "12345678", "1,234,567 records", "1000000 records", "$1,250,000", "CVSS 9.8", "ISO 27001:2022",
    "RFC 7230 section 2.3", "between 2019 and 2023, 1234 victims", "sid:2034567;", "rule 2024001",
]


@pytest.mark.parametrize("number", PHONE_NUMBERS)
def test_a_phone_number_in_any_format_is_redacted(number):
    from sync.policy import REDACTED_PHONE, has_contact_details, redact_contacts

    sentence = f"Victims were told to call {number} to restore access."
    assert has_contact_details(sentence)
    redacted = redact_contacts(sentence)
    assert redacted == f"Victims were told to call {REDACTED_PHONE} to restore access."
    assert not has_contact_details(redacted)


@pytest.mark.parametrize("text", NOT_PHONE_NUMBERS)
def test_identifiers_dates_and_addresses_are_not_phone_numbers(text):
    from sync.policy import has_contact_details, redact_contacts

    sentence = f"Observed: {text}."
    assert redact_contacts(sentence) == sentence
    assert not has_contact_details(sentence)


def test_a_phone_number_beside_identifiers_is_redacted_and_they_are_kept():
    from sync.policy import redact_contacts

    text = ("CVE-2024-12345 (T1059.001, 10.0.19041.1) seen 2024-01-15 from 192.168.100.200; "
            "callback T1566 555-123-4567 and 020 7946 0958.")
    assert redact_contacts(text) == ("CVE-2024-12345 (T1059.001, 10.0.19041.1) seen 2024-01-15 from "
                                     "192.168.100.200; callback T1566 [phone redacted] and [phone redacted].")


def test_national_formats_follow_the_configured_regions(settings):
    from sync.policy import has_contact_details

    french = "Appelez le 01 42 68 53 00 avant midi."
    assert not has_contact_details(french)  # not a national format of US or GB
    settings.CONTACT_PHONE_REGIONS = ["US", "GB", "FR"]
    assert has_contact_details(french)


@pytest.mark.parametrize("label", synced_labels())
def test_no_label_sends_contact_details_to_the_index(label):
    """Every synced label, in its text and in its metadata: the index never holds a contact."""
    policy = POLICY[label]
    quote = "Ring (555) 123-4567 or 020 7946 0958, or mail jane.doe@victim.example."
    properties = {name: quote for name in (*policy.text_property_names, *policy.metadata_fields)}
    document = build_document(entity(label, **properties))
    shipped = json.dumps([document.text, *metadata_of(document)])
    assert shown(shipped, ["(555) 123-4567", "123-4567", "020 7946 0958", "7946", "jane.doe@victim.example"]) == []
    assert "[phone redacted]" in document.text and "[e-mail redacted]" in document.text
