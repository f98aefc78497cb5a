"""Embeddings: the real all-MiniLM-L6-v2, loaded once; chunking by its token window; content hashes."""

import os
import random
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.exceptions import ImproperlyConfigured

from sync.embedding import (
    BUNDLED_MODEL,
    DIMENSION,
    Embedder,
    content_hash,
    get_embedder,
    model_info,
    resolve_model_path,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def embedder():
    """The process's embedder with its weights loaded (get_embedder() keeps it for the session)."""
    loaded = get_embedder()
    loaded.encode(["warm-up"])
    return loaded


def cosine(a, b):
    return float(np.dot(a, b))  # the vectors are unit length


def token_count(embedder, text):
    return len(embedder.tokenizer.encode(text, add_special_tokens=False).ids)


def test_it_encodes_to_unit_float32_vectors_of_384_dimensions(embedder):
    vectors = embedder.encode(["APT29 phishing campaign", "CVE-2024-3400 in PAN-OS", ""])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, DIMENSION)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_it_encodes_nothing_to_an_empty_matrix(embedder):
    vectors = embedder.encode([])
    assert vectors.shape == (0, DIMENSION)
    assert vectors.dtype == np.float32


def test_it_places_similar_texts_closer_than_unrelated_ones(embedder):
    actor, paraphrase, cake = embedder.encode([
        "Russian state-sponsored group sends spear-phishing emails to government ministries",
        "A Kremlin-backed hacking crew targets diplomats with phishing messages",
        "Whisk butter and sugar, then fold in the flour to bake a sponge cake",
    ])
    assert cosine(actor, paraphrase) > 0.5
    assert cosine(actor, paraphrase) > cosine(actor, cake) + 0.3


def test_it_gives_the_same_vectors_whatever_the_batch_size(embedder):
    texts = [f"Ransomware operator number {n} encrypts file servers" for n in range(7)]
    np.testing.assert_allclose(embedder.encode(texts, batch_size=2), embedder.encode(texts, batch_size=64),
                               atol=1e-5)


def test_it_refuses_a_bare_string_and_non_strings(embedder):
    with pytest.raises(TypeError, match="not a single str"):
        embedder.encode("one text")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embedder.encode(["fine", 3])
    with pytest.raises(ValueError, match="batch_size"):
        embedder.encode(["fine"], batch_size=0)


def test_it_loads_the_model_once_per_process(embedder):
    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda _: get_embedder(), range(32)))
    assert all(each is embedder for each in seen)
    embedder.encode(["again"])
    assert embedder.load_count == 1


def test_it_loads_once_when_threads_race_for_the_model():
    fresh = Embedder(BUNDLED_MODEL, "cpu")
    start = threading.Barrier(6)

    def load(_):
        start.wait()
        return fresh.model

    with ThreadPoolExecutor(6) as pool:
        models = list(pool.map(load, range(6)))
    assert fresh.load_count == 1
    assert all(model is models[0] for model in models)


def test_it_loads_neither_torch_nor_weights_at_import_or_to_build_documents():
    code = (
        "import datetime, sys, django; django.setup()\n"
        "from sync.policy import build_document\n"
        "from sync.stores.base import Entity\n"
        "doc = build_document(Entity('Report', 'r1', 1, datetime.datetime.now(datetime.UTC),"
        " {'title': 'Long', 'body': 'Ransomware moves laterally. ' * 400}))\n"
        "print(len(doc.chunks), 'torch' in sys.modules, 'sentence_transformers' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    assert result.returncode == 0, result.stderr
    chunks, torch_loaded, st_loaded = result.stdout.split()
    assert int(chunks) > 1
    assert (torch_loaded, st_loaded) == ("False", "False")


def test_it_describes_the_model(embedder):
    info = model_info()
    assert info.name == "all-MiniLM-L6-v2"
    assert info.dimension == DIMENSION
    assert info.max_seq_length == 256
    assert info.chunk_tokens == 254  # [CLS] and [SEP] take the other two
    assert info.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert info.loaded


# --- configuration ---------------------------------------------------------------------------
def test_it_refuses_hub_names_instead_of_downloading():
    with pytest.raises(ImproperlyConfigured, match="never downloaded from a hub"):
        resolve_model_path("BAAI/bge-small-en-v1.5")


def test_it_refuses_a_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="missing modules.json, tokenizer.json"):
        resolve_model_path(str(tmp_path))


def test_it_accepts_a_local_model_directory():
    bundled = resolve_model_path(BUNDLED_MODEL)
    local = Embedder(str(bundled), "cpu")
    assert local.path == bundled
    assert local.split("A short text.") == ["A short text."]


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_it_refuses_a_device_torch_does_not_know(device):
    with pytest.raises(ImproperlyConfigured, match=f"EMBEDDING_DEVICE='{device}' is not a torch device"):
        Embedder(BUNDLED_MODEL, device).model_info()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_it_refuses_cuda_without_a_gpu():
    with pytest.raises(ImproperlyConfigured, match="torch sees no CUDA device"):
        Embedder(BUNDLED_MODEL, "cuda").model_info()


# --- chunking --------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   ", "\n\t \n", "\x00\x01"])
def test_it_splits_nothing_into_no_chunks(embedder, text):
    assert embedder.split(text) == []


def test_it_keeps_a_short_text_as_one_trimmed_chunk(embedder):
    assert embedder.split("  APT29 sends phishing e-mails.\n") == ["APT29 sends phishing e-mails."]


def sentences(count, seed=7):
    rng = random.Random(seed)
    verbs = ["exploits", "targets", "phishes", "encrypts", "exfiltrates data from", "scans"]
    objects = ["VPN appliances", "hospital networks", "cloud tenants", "mail servers", "OT gateways"]
    return [f"Sentence {n}: the actor {rng.choice(verbs)} {rng.choice(objects)} in region {n % 17}."
            for n in range(count)]


def test_it_splits_long_text_at_sentence_ends_within_the_window(embedder):
    parts = sentences(400)
    text = " ".join(parts)
    chunks = embedder.split(text)
    assert len(chunks) > 10
    position = 0
    for chunk in chunks:
        assert token_count(embedder, chunk) <= embedder.chunk_tokens
        found = text.find(chunk, max(0, position - len(chunk)))
        assert found >= 0, "chunks are substrings of the text"
        position = found + len(chunk)
    assert position == len(text)
    assert all(chunk.endswith(".") for chunk in chunks)
    # Sentence-aligned cuts plus overlap: every sentence is embedded whole in some chunk.
    assert all(any(part in chunk for chunk in chunks) for part in parts)


def test_it_overlaps_consecutive_chunks(embedder):
    text = " ".join(sentences(200))
    spans = []
    position = 0
    for chunk in embedder.split(text):
        start = text.find(chunk, position)
        spans.append((start, start + len(chunk)))
        position = start + 1
    assert len(spans) > 3
    for (_, previous_end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start < previous_end


def test_it_prefers_paragraph_breaks_to_sentence_ends(embedder):
    # Two-sentence paragraphs put a paragraph break in every cut's search span.
    parts = sentences(300)
    text = "\n\n".join(" ".join(parts[n:n + 2]) for n in range(0, len(parts), 2))
    chunks = embedder.split(text)
    assert len(chunks) > 10
    for chunk in chunks[:-1]:
        end = text.find(chunk) + len(chunk)
        assert text[end:end + 2] == "\n\n"


def test_it_cuts_inside_words_longer_than_its_search_span_and_still_fits(embedder):
    rng = random.Random(3)
    # 90-letter Greek words are ~90 word pieces each: some windows end with no word boundary near.
    words = ["".join(rng.choice("αβγδεζηθικλμνξοπρστυφχψω") for _ in range(90)) for _ in range(60)]
    text = " ".join(words)
    chunks = embedder.split(text)
    assert all(token_count(embedder, chunk) <= embedder.chunk_tokens for chunk in chunks)
    assert all(chunk in text for chunk in chunks)
    covered = bytearray(len(text))
    position = 0
    for chunk in chunks:
        position = text.find(chunk, max(0, position - len(chunk)))
        covered[position:position + len(chunk)] = b"\x01" * len(chunk)
        position += len(chunk)
    assert all(covered[i] or text[i] == " " for i in range(len(text)))


def test_it_splits_non_latin_text_into_exact_substrings(embedder):
    text = " ".join(["Группа АПТ-28 атакует министерства. 黑客组织攻击了政府网络。🐻‍❄️ 🔥"] * 120)
    chunks = embedder.split(text)
    assert len(chunks) > 1
    assert all(chunk in text and chunk == chunk.strip() for chunk in chunks)
    assert all(token_count(embedder, chunk) <= embedder.chunk_tokens for chunk in chunks)


def test_it_refuses_to_split_a_non_string(embedder):
    with pytest.raises(TypeError):
        embedder.split(None)


# --- content hash ----------------------------------------------------------------------------
def test_it_hashes_the_canonical_text():
    digest = content_hash("APT29 uses  spear-phishing.\n")
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert content_hash("  APT29 uses spear-phishing. ") == digest
    assert content_hash("APT29\tuses\n\nspear-phishing.") == digest
    assert content_hash("Cafe\u0301") == content_hash("Café")  # NFD and NFC spell the same text
    assert content_hash("APT28 uses spear-phishing.") != digest
    assert content_hash("apt29 uses spear-phishing.") != digest


def test_one_call_can_use_one_thread_and_leaves_the_count_as_it_was(embedder):
    import torch

    texts = ["APT29 phishing diplomats", "ransomware initial access"]
    before = torch.get_num_threads()
    assert np.allclose(embedder.encode(texts, threads=1), embedder.encode(texts), atol=1e-5)
    assert torch.get_num_threads() == before
