"""Issue 18, defect 5 and the privacy property: no contact detail reaches the vector index.

E-mail addresses and phone numbers hidden in an entity's properties — disguised with invisible
format characters and look-alike "@" and ".", cut at any length, at the edge of every size limit
(a metadata value, a list item, a snippet), in lists and nested objects, in the uid — never leave
a detectable address or number in any vector id or metadata value that `build_document` makes;
and the dates, CVE ids, versions and ATT&CK ids around them come through untouched.
"Detectable" is `has_contact_details`, which reads through the same disguises; an independent
check looks for the planted addresses and numbers themselves.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from urllib.parse import unquote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sync.ingest.validate import IngestError, parse_items
from sync.policy import (
    FIELD_MAX_CHARS,
    LIST_ITEM_MAX_CHARS,
    SNIPPET_MAX_CHARS,
    build_document,
    has_contact_details,
    redact_contacts,
    uid_withheld,
)
from sync.policy import redact as redact_module
from sync.stores.base import Entity

NOW = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
FORMAT_CHARACTERS = "\u00ad\u200b\u200c\u200d\u2060\ufeff\u202e\u2066\u061c"
AT_LOOKALIKES = "@\uff20\ufe6b"
DOT_LOOKALIKES = "..\uff0e\u3002\uff61"

word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=8)


@st.composite
def email_addresses(draw) -> str:
    local = ".".join(draw(st.lists(word, min_size=1, max_size=3)))
    if draw(st.booleans()):
        local += draw(st.sampled_from(["+tag", "-ops", "_2", "42"]))
    domain = ".".join(draw(st.lists(word, min_size=1, max_size=2)))
    return f"{local}@{domain}.{draw(st.sampled_from(['example', 'com', 'co.uk', 'org']))}"


@st.composite
def phone_numbers(draw) -> str:
    """Numbers as people write them: valid US and UK numbers in several formats, and the
    fictional ones (555, Ofcom's drama ranges) written as their region writes them."""
    kind = draw(st.sampled_from(["us", "us-intl", "us-dots", "us-fiction", "uk", "uk-intl", "uk-mobile"]))
    area = draw(st.sampled_from(["202", "212", "312", "415", "617", "703"]))
    exchange = draw(st.integers(200, 999).filter(lambda n: n % 100 != 11 and n != 555))
    line = draw(st.integers(0, 9999))
    if kind == "us":
        return f"({area}) {exchange}-{line:04d}"
    if kind == "us-intl":
        return f"+1 {area} {exchange} {line:04d}"
    if kind == "us-dots":
        return f"{area}.{exchange}.{line:04d}"
    if kind == "us-fiction":
        return f"({area}) 555-{draw(st.integers(100, 199)):04d}"
    if kind == "uk":
        return f"020 7946 {draw(st.integers(0, 999)):04d}"
    if kind == "uk-intl":
        return f"+44 20 7946 {draw(st.integers(0, 999)):04d}"
    return f"07700 900{draw(st.integers(0, 999)):03d}"


@st.composite
def disguised(draw, contact: str) -> str:
    """The contact with format characters slipped in anywhere, "@" and "." swapped for look-alikes."""
    out = []
    for ch in contact:
        if ch == "@":
            ch = draw(st.sampled_from(AT_LOOKALIKES))
        elif ch == ".":
            ch = draw(st.sampled_from(DOT_LOOKALIKES))
        out.append(ch)
        if draw(st.integers(0, 3)) == 0:
            out.append(draw(st.sampled_from(FORMAT_CHARACTERS)))
    return "".join(out)


# What must come through untouched.
survivors = st.one_of(
    st.builds(lambda y, m, d: f"{y}-{m:02d}-{d:02d}", st.integers(1990, 2030), st.integers(1, 12), st.integers(1, 28)),
    st.builds(lambda y, n: f"CVE-{y}-{n}", st.integers(1999, 2030), st.integers(1000, 99999)),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", st.integers(0, 30), st.integers(0, 99), st.integers(0, 99)),
    st.sampled_from(["10.0.19041.1", "5.15.0-91-generic", "OpenSSL 3.0.13"]),
    st.builds(lambda t, s: f"T{t}" + (f".{s:03d}" if s else ""), st.integers(1001, 1659), st.integers(0, 20)),
)


@st.composite
def planted(draw):
    """(contact as written, contact undisguised, whether it was kept whole)."""
    contact = draw(st.one_of(email_addresses(), phone_numbers()))
    written = draw(disguised(contact)) if draw(st.booleans()) else contact
    whole = draw(st.booleans())
    if not whole:
        written = written[:draw(st.integers(1, len(written)))]  # cut at any length
    return written, contact, whole


@st.composite
def hostile_reports(draw):
    """A Report whose every field hides contact details among things that must survive."""
    contacts = draw(st.lists(planted(), min_size=1, max_size=4))
    kept = draw(st.lists(survivors, min_size=1, max_size=4))
    pieces = [c[0] for c in contacts] + kept
    pieces = draw(st.permutations(pieces))
    sentence = ", then ".join(pieces)  # words between them: a date and a number never share a run
    contact = contacts[0][0]
    # Put a contact right at each cut: a metadata value's, a list item's, the snippet's.
    def at_cut(limit: int) -> str:
        offset = draw(st.integers(-len(contact), 2))
        return "x " * ((limit + offset) // 2) + contact + " trailing words"
    title = draw(st.sampled_from([sentence, at_cut(FIELD_MAX_CHARS), sentence[:draw(st.integers(1, 80))]]))
    tags = [draw(st.sampled_from([sentence, at_cut(LIST_ITEM_MAX_CHARS), c[0]])) for c in contacts]
    nested = {"source": {"analyst": contacts[-1][0], "seen": kept[0]}, "notes": [sentence]}
    body = draw(st.sampled_from([sentence, at_cut(SNIPPET_MAX_CHARS), "Summary. " + sentence]))
    uid = draw(st.sampled_from([f"r-{draw(st.integers(1, 10**6))}", f"report {contact}", contact]))
    properties = {"title": title, "summary": sentence, "body": body, "tags": tags,
                  "doc_type": draw(st.sampled_from([nested, [nested, sentence], sentence]))}
    return Entity("Report", uid, 1, NOW, {"uid": uid, **properties}), contacts, kept


def undisguised(value: str) -> str:
    text, _ = redact_module._undisguised(value)
    return text


def stored_strings(document):
    for chunk in document.chunks:
        yield "vector id", unquote(chunk.vector_id)
        for name, value in chunk.metadata.items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    yield name, item


@given(hostile_reports())
def test_no_vector_id_or_metadata_value_holds_a_contact_detail(case):
    entity, contacts, kept = case
    for written, _, whole in contacts:
        assume(not whole or has_contact_details(f"call {written} now"))  # the generator made a real one
    document = build_document(entity)
    if uid_withheld(entity.uid):
        assert document is None  # never synced: its uid would be its vector id
        return
    assert document is not None and document.chunks
    for where, value in stored_strings(document):
        assert not has_contact_details(value), (where, value)
        for _, contact, whole in contacts:
            if whole:
                assert contact not in undisguised(value), (where, value)
    for survivor in kept:
        assert survivor in document.text
        assert survivor in document.chunks[0].metadata["text"] or len(document.text) > SNIPPET_MAX_CHARS


@given(st.lists(survivors, min_size=1, max_size=6))
def test_dates_cve_ids_versions_and_attack_ids_survive_untouched(kept):
    sentence = " and ".join(kept)
    assert redact_contacts(sentence) == sentence
    assert not has_contact_details(sentence)
    entity = Entity("Report", "r-1", 1, NOW, {"title": sentence, "body": sentence, "tags": kept})
    document = build_document(entity)
    metadata = document.chunks[0].metadata
    assert metadata["title"] == sentence and metadata["tags"] == kept and sentence in document.text


# --- the three ways in, one by one -------------------------------------------------------------
def test_a_contact_in_the_uid_never_becomes_a_vector_id():
    for uid in ["jane.doe@acme.example", "ops-jane.doe@acme.example", "+1 202 555 0123", "tel:(202) 456-1111"]:
        assert uid_withheld(uid)
        assert build_document(Entity("Report", uid, 1, NOW, {"uid": uid, "title": "Quarterly report"})) is None
    for uid in ["apt29", "CVE-2024-3400", "T1059.001", "r-2024-01-15", "5f1c9a0e-4b7e-4d7c-9a51-6d0c5e9f2b11"]:
        assert not uid_withheld(uid)


def test_ingest_refuses_a_contact_in_the_uid_of_a_synced_label():
    with pytest.raises(IngestError) as refused:
        parse_items({"label": "ThreatActor", "uid": "jane.doe@acme.example", "source": "feed",
                     "properties": {"name": "x"}})
    assert refused.value.field == "uid" and "e-mail address or phone number" in str(refused.value)
    # A never-synced label keeps its natural keys: nothing of it leaves the graph.
    assert parse_items({"label": "Contact", "uid": "jane.doe@acme.example", "source": "crm",
                        "properties": {}})[0].uid == "jane.doe@acme.example"


@pytest.mark.parametrize("limit", [FIELD_MAX_CHARS, LIST_ITEM_MAX_CHARS])
def test_a_contact_cut_by_a_size_limit_is_redacted_before_the_cut(limit):
    for contact in ["jane.doe@acme.example", "+1 202 555 0123"]:
        for offset in range(-len(contact), 3):
            value = "x " * ((limit + offset) // 2) + contact + " and more"
            document = build_document(Entity("Report", "r-1", 1, NOW, {"title": value, "tags": [value]}))
            metadata = document.chunks[0].metadata
            for stored in (metadata["title"], metadata["tags"][0]):
                assert not has_contact_details(stored), (offset, stored[-40:])
                assert "jane.doe" not in stored and "202 555" not in stored, (offset, stored[-40:])


def test_a_cut_never_makes_a_number_of_digits_that_were_none():
    # 202-555-01234567 is no phone number; cut after 0123 it would be one.
    value = "x " * ((LIST_ITEM_MAX_CHARS - 20) // 2) + "ref 202-555-01234567 tail"
    assert not has_contact_details(value)
    stored = build_document(Entity("Report", "r-1", 1, NOW, {"title": "t", "tags": [value]})).chunks[0].metadata["tags"][0]
    assert len(stored) <= LIST_ITEM_MAX_CHARS and not has_contact_details(stored)


@pytest.mark.parametrize("disguise", ["jane\u00ad.doe@acme.example", "jane.doe\u200b@acme.example",
                                      "jane.doe@\u200bacme.example", "jane.doe\uff20acme\uff0eexample",
                                      "jane.doe\ufe6bacme\u3002example", "jane\u2060.\u200ddoe@acme.\ufeffexample"])
def test_invisible_characters_and_look_alikes_do_not_hide_an_address(disguise):
    text = f"Write to {disguise} for access."
    assert has_contact_details(text)
    assert redact_contacts(text) == "Write to [e-mail redacted] for access."


def test_invisible_characters_do_not_hide_a_phone_number():
    text = "Call +1\u200b 202\u00ad 555\u2060 0123 now."
    assert redact_contacts(text) == "Call [phone redacted] now."


def test_the_format_characters_read_through_are_all_of_unicode_category_cf():
    known = {chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"}
    assert known <= set(redact_module._FORMAT_CHARACTERS)
    assert all(unicodedata.category(ch) in ("Cf", "Cn") for ch in redact_module._FORMAT_CHARACTERS)


def test_a_number_after_a_label_is_redacted_and_a_times_fraction_is_no_number():
    assert redact_contacts("Tel:2025550123") == "Tel:[phone redacted]"
    stamp = "seen 2025-03-04T05:06:07.123456+00:00 from 192.168.100.200"
    assert redact_contacts(stamp) == stamp
