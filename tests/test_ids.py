"""Vector ids: deterministic, printable ASCII, ≤512 characters, label-prefixed, reversible."""

import string

import pytest

from sync.ids import (
    MAX_CHUNK,
    MAX_ID_LENGTH,
    MAX_UID_CHARS,
    UID_BUDGET,
    belongs_to_entity,
    check_key,
    check_syncable_key,
    encode_uid,
    entity_key,
    entity_prefix,
    is_label,
    is_property_key,
    is_shortened,
    label_prefix,
    parse_entity_key,
    parse_vector_id,
    vector_id,
)

PRINTABLE_ASCII = set(string.ascii_letters + string.digits + string.punctuation)
TRICKY_UIDS = [
    "apt29", "CVE-2024-3400", "a:b", "a#b", "100%", "two words", "x/y?z=1&w", "~._-", "!", "#0",
    "Fancy Bear (APT28)", "naïve", "апт-28", "黑客组织", "🐻‍❄️", "\t\n", "a" * UID_BUDGET,
]


def test_it_builds_label_prefixed_ids():
    assert vector_id("ThreatActor", "apt29") == "ThreatActor:apt29"
    assert vector_id("ThreatActor", "apt29", 0) == "ThreatActor:apt29#0"
    assert vector_id("Report", "r-1", 12) == "Report:r-1#12"


@pytest.mark.parametrize(
    ("uid", "encoded"),
    [
        ("a:b", "a%3Ab"), ("a#b", "a%23b"), ("100%", "100%25"), ("two words", "two%20words"),
        ("é", "%C3%A9"), ("A-Za_z0.9~", "A-Za_z0.9~"), ("a/b", "a%2Fb"), ("!", "%21"),
    ],
)
def test_it_percent_encodes_everything_outside_the_unreserved_set(uid, encoded):
    assert encode_uid(uid) == encoded


@pytest.mark.parametrize("uid", TRICKY_UIDS)
@pytest.mark.parametrize("chunk", [None, 0, 7, MAX_CHUNK])
def test_it_round_trips_through_parse(uid, chunk):
    vid = vector_id("ThreatActor", uid, chunk)
    assert set(vid) <= PRINTABLE_ASCII
    assert len(vid) <= MAX_ID_LENGTH
    assert parse_vector_id(vid) == ("ThreatActor", uid, chunk)


def test_it_keeps_every_id_within_512_characters_by_shortening_long_uids():
    label = "L" * 64
    long_uid = "x" * 5000
    vid = vector_id(label, long_uid, MAX_CHUNK)
    assert len(vid) == MAX_ID_LENGTH
    assert is_shortened(vid)
    assert parse_vector_id(vid) == (label, None, MAX_CHUNK)


def test_it_shortens_exactly_when_the_encoding_exceeds_the_budget():
    assert not is_shortened(vector_id("A", "a" * UID_BUDGET))
    assert is_shortened(vector_id("A", "a" * (UID_BUDGET + 1)))


def test_it_keeps_shortened_ids_unique_and_deterministic():
    first, second = "p" * 600 + "1", "p" * 600 + "2"
    assert vector_id("Report", first) != vector_id("Report", second)
    assert vector_id("Report", first) == vector_id("Report", first)


def test_it_never_cuts_a_percent_escape_when_shortening():
    # Three-byte characters encode to 9 characters, so the cut lands inside an escape for some length.
    for extra in range(9):
        uid = "a" * extra + "中" * 200
        vid = vector_id("Report", uid, 3)
        label, parsed_uid, chunk = parse_vector_id(vid)
        assert (label, parsed_uid, chunk) == ("Report", None, 3)
        head = vid.split(":", 1)[1].split("!", 1)[0]
        assert head.count("%") * 3 == len(head) - extra


def test_it_shares_one_prefix_across_an_entitys_chunks_even_when_shortened():
    uid = "z" * 1000
    prefix = entity_prefix("Artifact", uid)
    for chunk in (None, 0, 1, 99):
        vid = vector_id("Artifact", uid, chunk)
        assert vid.startswith(prefix)
        assert belongs_to_entity(vid, "Artifact", uid)


def test_it_tells_an_entitys_ids_from_longer_uids_with_the_same_prefix():
    assert belongs_to_entity("ThreatActor:apt2", "ThreatActor", "apt2")
    assert belongs_to_entity("ThreatActor:apt2#3", "ThreatActor", "apt2")
    assert not belongs_to_entity("ThreatActor:apt29", "ThreatActor", "apt2")
    assert not belongs_to_entity("ThreatActor:apt29#0", "ThreatActor", "apt2")
    assert not belongs_to_entity("ThreatActor:apt2#x", "ThreatActor", "apt2")
    assert not belongs_to_entity("ThreatActor:apt2#03", "ThreatActor", "apt2")


def test_it_gives_each_label_its_own_prefix():
    assert label_prefix("KEV") == "KEV:"
    assert not vector_id("KEVArchive", "x").startswith(label_prefix("KEV"))
    assert vector_id("KEV", "CVE-2024-1").startswith(label_prefix("KEV"))


@pytest.mark.parametrize("label", ["", "1abc", "a-b", "a b", "Ä", "_SyncTombstone", "L" * 65, "KEV\n", None, 3])
def test_it_refuses_labels_outside_the_pattern(label):
    with pytest.raises(ValueError, match="cannot be used in a vector id"):
        vector_id(label, "x")


@pytest.mark.parametrize("uid", [42, None, b"bytes", 4.2, ["a"]])
def test_it_refuses_a_non_string_uid_by_name(uid):
    with pytest.raises(ValueError, match="uid must be a str"):
        vector_id("ThreatActor", uid)


def test_it_refuses_an_empty_uid_and_lone_surrogates():
    with pytest.raises(ValueError, match="must not be empty"):
        vector_id("ThreatActor", "")
    with pytest.raises(ValueError, match="not valid Unicode"):
        vector_id("ThreatActor", "bad\ud800")


@pytest.mark.parametrize("chunk", [-1, MAX_CHUNK + 1, True, 1.0, "1"])
def test_it_refuses_bad_chunk_numbers(chunk):
    with pytest.raises(ValueError, match="chunk must be"):
        vector_id("Report", "r", chunk)


@pytest.mark.parametrize(
    "vid",
    [
        "nolabel", "Label:", "1abc:x", "Label:a#", "Label:a#01", "Label:a#x", "Label:a#-1", "Label:%zz",
        "Label:%c3%a9", "Label:%C3", "Label:%41", "Label:a b", "Label:a:b", "Label:é", "L:" + "a" * 511,
        "Label:abc!0123", "Label:a#1#2", "KEV\n:x", "Label:abc\n",
        vector_id("Label", "x" * 5000) + "\n",
    ],
)
def test_it_refuses_to_parse_what_vector_id_cannot_produce(vid):
    with pytest.raises(ValueError, match="not a vector id|cannot be used"):
        parse_vector_id(vid)


@pytest.mark.parametrize("name", ["KEV", "ThreatActor", "a_1", "L" * 64])
def test_it_accepts_labels_and_property_keys_by_the_same_pattern(name):
    assert is_label(name) and is_property_key(name)


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "é", "L" * 65, "KEV\n", "\nKEV", None, 3])
def test_it_refuses_labels_and_property_keys_that_are_not_whole_matches(name):
    assert not is_label(name)
    assert not is_property_key(name)


def test_property_keys_may_start_with_an_underscore_but_labels_may_not():
    assert is_property_key("_private")
    assert not is_label("_SyncTombstone")


def test_it_checks_an_entity_key_and_whether_the_engine_can_sync_it():
    assert check_key("ThreatActor", "apt29") == ("ThreatActor", "apt29")
    long_uid = "x" * (MAX_UID_CHARS + 1)
    assert check_key("ThreatActor", long_uid) == ("ThreatActor", long_uid)  # it names an entity...
    with pytest.raises(ValueError, match=f"uid longer than {MAX_UID_CHARS} characters"):
        check_syncable_key("ThreatActor", long_uid)  # ...that can never travel as metadata
    assert check_syncable_key("ThreatActor", "x" * MAX_UID_CHARS)
    for label, uid in [("KEV\n", "x"), ("1abc", "x"), ("KEV", ""), ("KEV", 42), ("KEV", "bad\ud800")]:
        with pytest.raises(ValueError):
            check_key(label, uid)
        with pytest.raises(ValueError):
            check_syncable_key(label, uid)


@pytest.mark.parametrize("uid", ["apt29", "a:b", "a#b", "two words", "naïve", ":"])
def test_it_parses_label_uid_back_with_the_raw_uid(uid):
    typed = entity_key("ThreatActor", uid)
    assert typed == f"ThreatActor:{uid}"
    assert parse_entity_key(typed) == ("ThreatActor", uid)


@pytest.mark.parametrize("text", ["", "ThreatActor", "ThreatActor:"])
def test_it_refuses_label_uid_without_a_colon_or_a_uid(text):
    with pytest.raises(ValueError, match="is not Label:uid"):
        parse_entity_key(text)
