"""Vector ids: deterministic, printable ASCII, at most 512 characters, prefixed by label.

    vector_id("ThreatActor", "apt29")        -> "ThreatActor:apt29"      (a one-chunk text)
    vector_id("ThreatActor", "apt29", 2)     -> "ThreatActor:apt29#2"    (chunk 2 of a longer one)
    vector_id("Report", "r/é 1")             -> "Report:r%2F%C3%A9%201"

The uid is percent-encoded: `A-Za-z0-9._~-` stay as they are, every other character (including
`:`, `#`, `%`, `!`, space and anything non-ASCII, as its UTF-8 bytes) becomes `%XX` with upper-case
hex. Because `:` and `#` are always escaped inside the uid, the first `:` ends the label and a `#`
starts the chunk number, so `parse_vector_id` is an exact inverse.

Every id fits Pinecone's 512-character limit whatever the uid: labels are at most 64 characters,
chunk numbers at most 7 digits, and an encoded uid longer than `UID_BUDGET` is *shortened* to a
prefix of its encoding, then `!`, then 32 hex digits of the uid's SHA-256. `!` never occurs in a
normal encoding (it is escaped), so shortened ids cannot collide with normal ones, and the hash keeps
two long uids with the same prefix apart. A shortened id cannot be decoded back to its uid:
`parse_vector_id` returns `uid=None` for it and the uid is read from the vector's `uid` metadata,
which `sync.policy.build_document` always writes.

An entity's vectors are `entity_prefix(label, uid)` itself and the ids starting with that prefix
plus `#`. The bare prefix also begins other uids' ids (`apt2` is a prefix of `apt29`), so filter a
`list_ids(prefix=...)` answer with `belongs_to_entity`.

The rules for naming an entity live here too, for every caller (the graph store, ingest, the
dashboard): `is_label` and `is_property_key` (whole-string matches: "KEV\n" is not a label),
`check_key` (a key that can name an entity), `check_syncable_key` (one the engine can also sync:
its uid fits in metadata, `MAX_UID_CHARS`), and `entity_key` / `parse_entity_key` for the
`Label:uid` a person types (the raw uid, not percent-encoded: not a vector id).

A leaf module: it imports nothing from `sync`, so the stores may use it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from urllib.parse import quote, unquote

MAX_ID_LENGTH = 512
MAX_LABEL_LENGTH = 64
MAX_CHUNK = 9_999_999  # 7 digits
# Fixed rather than computed per id, so that the shortening of a uid does not depend on its label
# or chunk number: all chunks of an entity share one prefix.
UID_BUDGET = MAX_ID_LENGTH - MAX_LABEL_LENGTH - len(":") - len("#") - len(str(MAX_CHUNK))
SHORTENED_MARKER = "!"
_HASH_HEX_DIGITS = 32  # 128 bits: collisions are out of reach for any realistic number of uids
# The uid travels as the `uid` metadata of every vector (a shortened id cannot be decoded), so a
# longer uid can never be synced.
MAX_UID_CHARS = 1024

# Use these through fullmatch (`is_label`, `is_property_key`): with `.match`, `$` also accepts a
# trailing newline. The anchors stay in the text because error messages quote the pattern.
LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
PROPERTY_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ENCODED_UID_RE = re.compile(r"^(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+$")
_SHORTENED_UID_RE = re.compile(r"^(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})*![0-9a-f]{32}$")


def is_label(value: object) -> bool:
    """Is `value` a graph label (also a relationship type): a letter, then letters, digits, `_`; 64 at most."""
    return isinstance(value, str) and LABEL_RE.fullmatch(value) is not None


def is_property_key(value: object) -> bool:
    """Is `value` a property name callers may write: a letter or `_`, then letters, digits, `_`; 64 at most."""
    return isinstance(value, str) and PROPERTY_KEY_RE.fullmatch(value) is not None


def check_label(label: object) -> str:
    """The label itself when it can start a vector id; ValueError otherwise."""
    if not is_label(label):
        raise ValueError(
            f"label {label!r} cannot be used in a vector id: labels must match {LABEL_RE.pattern}"
        )
    return label


def check_uid(uid: object) -> str:
    """The uid itself when it is a usable identity; ValueError naming the problem otherwise."""
    if not isinstance(uid, str):
        raise ValueError(
            f"uid must be a str, got {type(uid).__name__} {uid!r}: entity uids are string "
            "properties (store numbers as text, e.g. str(42))"
        )
    if not uid:
        raise ValueError("uid must not be empty")
    return uid


def check_key(label: object, uid: object) -> tuple[str, str]:
    """(label, uid) itself when it can name an entity, and so have vector ids; ValueError otherwise."""
    vector_id(label, uid)  # checks the label, the uid and that the uid has a UTF-8 form
    return label, uid


def check_syncable_key(label: object, uid: object) -> tuple[str, str]:
    """(label, uid) itself when the engine can sync it (`check_key`, and a uid that fits in metadata)."""
    check_key(label, uid)
    if len(uid) > MAX_UID_CHARS:
        raise ValueError(f"uid longer than {MAX_UID_CHARS} characters")
    return label, uid


def entity_key(label: str, uid: str) -> str:
    """`Label:uid` as people read and type it (the raw uid: see `parse_entity_key`)."""
    return f"{label}:{uid}"


def parse_entity_key(text: str) -> tuple[str, str]:
    """(label, uid) from `Label:uid`; ValueError without a `:` or with nothing after it.

    The label ends at the first `:` (labels never hold one); the uid is the rest, colons included.
    Whether the label is one the policy syncs is the caller's question.
    """
    label, sep, uid = text.partition(":")
    if not sep or not uid:
        raise ValueError(f"{text[:80]!r} is not Label:uid")
    return label, uid


def encode_uid(uid: str) -> str:
    """The uid as it appears in vector ids: percent-encoded, shortened when too long."""
    return _encode_uid(check_uid(uid))


@functools.lru_cache(maxsize=16384)  # every step of a sync asks for the ids of the same entities
def _encode_uid(uid: str) -> str:
    try:
        encoded = quote(uid, safe="", encoding="utf-8", errors="strict")
    except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form
        raise ValueError(f"uid {uid!r} is not valid Unicode text: {exc}") from None
    if len(encoded) <= UID_BUDGET:
        return encoded
    keep = UID_BUDGET - len(SHORTENED_MARKER) - _HASH_HEX_DIGITS
    head = encoded[:keep]
    # Never cut through a %XX escape: the kept head must itself be a valid encoding.
    tail = head[-2:]
    if tail.endswith("%"):
        head = head[:-1]
    elif tail.startswith("%"):
        head = head[:-2]
    digest = hashlib.sha256(uid.encode("utf-8")).hexdigest()[:_HASH_HEX_DIGITS]
    return f"{head}{SHORTENED_MARKER}{digest}"


def label_prefix(label: str) -> str:
    """`Label:` — the prefix every vector of that label starts with, and no other label's."""
    return f"{check_label(label)}:"


def entity_prefix(label: str, uid: str) -> str:
    """`Label:uid` — shared by all of the entity's vector ids (see `belongs_to_entity`)."""
    return f"{label_prefix(label)}{encode_uid(uid)}"


def vector_id(label: str, uid: str, chunk: int | None = None) -> str:
    """The id of one vector: `Label:uid` for a one-chunk text, `Label:uid#n` for chunk n."""
    base = entity_prefix(label, uid)
    if chunk is None:
        return base
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 0 <= chunk <= MAX_CHUNK:
        raise ValueError(f"chunk must be an int from 0 to {MAX_CHUNK}, got {chunk!r}")
    return f"{base}#{chunk}"


def first_vector_ids(label: str, uid: str) -> tuple[str, str]:
    """Both ids the first vector of (label, uid) can have: `Label:uid` (one chunk) and `Label:uid#0`."""
    base = entity_prefix(label, uid)
    return base, f"{base}#0"


def belongs_to_entity(vid: str, label: str, uid: str) -> bool:
    """Is `vid` one of the vectors of (label, uid) — its one-chunk id or one of its chunks?"""
    base = entity_prefix(label, uid)
    if vid == base:
        return True
    if not vid.startswith(base + "#"):
        return False
    digits = vid[len(base) + 1:]
    return digits.isascii() and digits.isdigit() and str(int(digits)) == digits


def is_shortened(vid: str) -> bool:
    """True for an id whose uid was too long and is only identifiable through its metadata."""
    return SHORTENED_MARKER in vid


def parse_vector_id(vid: str) -> tuple[str, str | None, int | None]:
    """`(label, uid, chunk)` from an id made by `vector_id`; ValueError for anything else.

    `chunk` is None for a one-chunk id. `uid` is None for a shortened id (see `is_shortened`):
    the uid is then the `uid` value of the vector's metadata.
    """
    if not isinstance(vid, str) or not vid.isascii() or len(vid) > MAX_ID_LENGTH:
        raise ValueError(f"{vid!r} is not a vector id: ids are ASCII strings of at most {MAX_ID_LENGTH} characters")
    label, sep, rest = vid.partition(":")
    if not sep:
        raise ValueError(f"{vid!r} is not a vector id: no ':' after the label")
    check_label(label)
    encoded, hash_sign, digits = rest.partition("#")
    chunk: int | None = None
    if hash_sign:
        if not (digits.isdigit() and str(int(digits)) == digits and int(digits) <= MAX_CHUNK):
            raise ValueError(f"{vid!r} is not a vector id: bad chunk number {digits!r}")
        chunk = int(digits)
    if _SHORTENED_UID_RE.fullmatch(encoded):
        return label, None, chunk
    if not _ENCODED_UID_RE.fullmatch(encoded):
        raise ValueError(f"{vid!r} is not a vector id: {encoded!r} is not a percent-encoded uid")
    try:
        uid = unquote(encoded, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"{vid!r} is not a vector id: its uid is not UTF-8") from None
    # Only the canonical spelling is accepted, so that one entity has exactly one id.
    if encode_uid(uid) != encoded:
        raise ValueError(f"{vid!r} is not a vector id: {encoded!r} is not the canonical encoding of its uid")
    return label, uid, chunk
