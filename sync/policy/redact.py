"""Contact details never reach the vector index, whatever the label: every e-mail address
and phone number in any text or metadata value becomes "[e-mail redacted]" / "[phone redacted]"
(`redact_contacts`), and reconciliation deletes and rebuilds any vector that still holds one
(`has_contact_details`). Every label, because any free text can quote a person (a report's
source, a victim's help desk, a spoofed sender) and the index is a copy held outside the graph;
an address or number that is an indicator stays in the graph, where search hits lead. Phone
numbers are found by Google's libphonenumber (`phonenumbers.PhoneNumberMatcher`): international
numbers, and national formats of the regions in CONTACT_PHONE_REGIONS (default US, GB). A match
counts when it is a valid number, or a possible one written in the groups its region writes it
in ("(555) 123-4567", "07700 900123": the numbers of fiction, which no plan assigns); a possible
number written otherwise ("2024-01-15", "10.0.19041.1", "1700000000") is a date, version or id.
Runs that continue a word or an identifier ("T1059.001", "CVE-2024-12345", hashes) are not
numbers, and texts without a run of 7 digits are not given to the matcher at all.

Detection looks through disguises: Unicode format characters (category Cf: the soft hyphen,
zero-width spaces and joiners, bidi controls), which a reader never sees, are ignored, and the
look-alikes of "@" and "." ("＠", "﹫", "．", "。", ...) read as those; what is replaced is the
whole disguised span of the original text.

Hostile text costs linear time: no pattern here can backtrack over what it scanned already. An
address is looked for around each "@" (its local part reaches back at most to the previous "@",
its domain forward at most to the next), and a run of digits longer than `_WINDOW` characters is
given to the matcher in overlapping windows. The matcher is the one slow step (about a
millisecond a window, and only windows of 7 digits or more that are neither an IPv4 address nor
an ISO date reach it): each value may give it `_MATCHER_BUDGET` characters of windows that no
earlier value gave it (recurring dates and versions are remembered); past that, every further
such run is redacted unasked. That fails closed: a megabyte of hostile digits costs a second,
not an hour, and hides nothing.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from sync.policy.memo import TextMemo

# --- contact details -------------------------------------------------------------------------
# E-mail addresses and phone numbers never reach the vector index, whatever the label: they are
# replaced in every text and metadata value before anything leaves the graph, and
# reconciliation deletes (and rebuilds) any vector that still holds one.
REDACTED_EMAIL, REDACTED_PHONE = "[e-mail redacted]", "[phone redacted]"
# An address is `local@domain`: the local part a run of [\w.+-], the domain labels of [\w-]
# joined by dots. Both are matched from an "@" outward (`_email_spans`), never from every
# position of the text, so that a long run of word characters is scanned once, not once per
# character ("[\w.+-]+@..." searched the usual way rescans it: 10,000 characters of hex and one
# address took seconds).
_LOCAL_REVERSED = re.compile(r"[\w.+-]+")  # matched on the reversed text before an "@"
_DOMAIN = re.compile(r"[\w-]+(?:\.[\w-]+)+")  # ends at the next "@" at the latest: linear
# Where the phone matcher is worth running: a run of digits and phone punctuation holding at least
# 7 digits (this C-speed search is all most texts cost; it ignores a leading "+" or "(", which
# the matcher finds in the context it is given). The class is a single character repeated and
# the run must end on a digit: a run is scanned once and given back at most to its last digit.
_PHONE_RUN = re.compile(r"\d[\d \u00a0().\-/\u2010-\u2015]{5,}\d")
_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D")
_NOT_PHONE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|\d{4}([-/.])\d{2}\1\d{2}")  # IPv4, ISO date: fullmatch only
_MIN_PHONE_DIGITS = 7
# The matcher needs a little context: a "+" or "(" before the run, a timestamp's ":ss" after it.
_CONTEXT_CHARS = 3
# A longer run is given to the matcher in windows of _WINDOW characters, each starting _STEP
# after the last: any number written in up to _STEP characters (E.164 allows 15 digits; with
# a separator between each, 29 characters) lies whole inside one of them.
_WINDOW, _STEP = 64, 32
# Characters of windows one value may give the matcher that no earlier value gave it (see the
# module docstring); a stored metadata value (2,000 characters at most) never reaches it.
_MATCHER_BUDGET = 8_000
_WINDOW_CACHE_SIZE = 16_384

# Disguises: format characters (Cf) are read as nothing, look-alikes of "@" and "." as those.
# Cf as of Unicode 15 (a test holds it to the running Python's `unicodedata`).
_FORMAT_RANGES = ((0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
                  (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E),
                  (0x2060, 0x2064), (0x2066, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
                  (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
                  (0xE0001, 0xE0001), (0xE0020, 0xE007F))
_FORMAT_CHARACTERS = "".join(chr(c) for first, last in _FORMAT_RANGES for c in range(first, last + 1))
_LOOKALIKES = {"\uff20": "@", "\ufe6b": "@", "\uff0e": ".", "\ufe52": ".", "\u3002": ".", "\uff61": ".",
               "\u2024": "."}
_DISGUISE = re.compile("[" + "".join(chr(first) if first == last else f"{chr(first)}-{chr(last)}"
                                     for first, last in _FORMAT_RANGES) + "".join(_LOOKALIKES) + "]")
_UNDISGUISE = {**{ord(c): None for c in _FORMAT_CHARACTERS}, **{ord(k): v for k, v in _LOOKALIKES.items()}}

# Metadata values (names, countries, sectors, tactics) recur across entities: short ones are
# redacted once per process.
_CACHED_REDACT_CHARS = 256

_regions: tuple[str, ...] | None = None


def phone_regions() -> tuple[str, ...]:
    """CONTACT_PHONE_REGIONS, read once per process (and again when a test changes it)."""
    global _regions
    if _regions is None:
        _regions = tuple(settings.CONTACT_PHONE_REGIONS)
    return _regions


@receiver(setting_changed)
def _forget_regions(setting: str, **kwargs: Any) -> None:
    global _regions
    if setting == "CONTACT_PHONE_REGIONS":
        _regions = None


def _email_spans(text: str) -> list[tuple[int, int]]:
    r"""The e-mail addresses in `text`, as `[\w.+-]+@[\w-]+(?:\.[\w-]+)+` searched left to right
    would find them, in time linear in the text: from each "@" the local part is read backwards,
    never past the previous "@" or address, and the domain forwards, never past the next "@"."""
    spans: list[tuple[int, int]] = []
    floor = 0
    at = text.find("@")
    while at != -1:
        local = _LOCAL_REVERSED.match(text[floor:at][::-1])
        domain = _DOMAIN.match(text, at + 1) if local else None
        if domain:
            spans.append((at - local.end(), domain.end()))
            floor = domain.end()
        else:
            floor = at + 1
        at = text.find("@", floor)
    return spans


def _run_windows(start: int, end: int):
    """The windows a run of digits is given to the matcher in: itself, or overlapping _WINDOWs."""
    if end - start <= _WINDOW:
        yield start, end
        return
    for first in range(start, end, _STEP):
        last = min(first + _WINDOW, end)
        yield first, last
        if last == end:
            return


_window_cache: dict[tuple[str, int, int, tuple[str, ...]], tuple[tuple[int, int], ...]] = {}


def _phone_spans(value: str) -> list[tuple[int, int]]:
    """Where `value` holds phone numbers, as (start, end) offsets, left to right.

    Spends at most _MATCHER_BUDGET characters of windows not seen before on the matcher; a run
    that would need more is taken for a number whole (fail closed)."""
    if len(value) < _MIN_PHONE_DIGITS:
        return []
    regions = phone_regions()
    budget = _MATCHER_BUDGET
    spans: list[tuple[int, int]] = []
    size = len(value)
    for run in _PHONE_RUN.finditer(value):
        found: list[tuple[int, int]] = []
        for start, end in _run_windows(*run.span()):
            left, right = max(0, start - _CONTEXT_CHARS), min(size, end + _CONTEXT_CHARS)
            key = (value[left:right], start - left, end - left, regions)
            known = _window_cache.get(key)
            span = _matcher_span(*key[:3]) if known is None else None
            if span is not None:
                if budget < right - left:
                    found = [run.span()]  # fail closed: the whole run
                    break
                budget -= right - left
                known = _phones_in_window(key[0], *span, regions)
                if len(_window_cache) >= _WINDOW_CACHE_SIZE:
                    _window_cache.clear()
                _window_cache[key] = known
            found.extend((left + a, left + b) for a, b in known or ())
        spans.extend(found)
    return spans


def _continues_token(window: str, index: int) -> bool:
    """Does window[index:] continue a word, an identifier or a time ("T1059", "CVE-2024",
    "KB5034441", the seconds of "10:30:07.123456")?"""
    before = window[index - 1] if index else " "
    if before == ":":  # a time's, never a label's ("Tel:2025550123")
        return index > 1 and window[index - 2].isdigit()
    return before.isalnum() or (before in "-." and index > 1 and window[index - 2].isalnum())


def _matcher_span(window: str, start: int, end: int) -> tuple[int, int] | None:
    """The part of window[start:end] (a run with a little context around it) the matcher must
    read, or None where no phone number can be: the groups that belong to a token around the run
    left out, fewer than 7 digits, an IPv4 address or an ISO date."""
    if _continues_token(window, start):
        # The run's first group belongs to that token; a phone number may still follow it.
        cut = _NON_DIGIT.search(window, start, end)
        if cut is None:
            return None
        start = cut.start()
    if end < len(window) and window[end].isalnum():
        end = max(start, *(window.rfind(c, start, end) for c in " -./)"))  # likewise the last group
    if len(_DIGIT.findall(window, start, end)) < _MIN_PHONE_DIGITS or _NOT_PHONE.fullmatch(window, start, end):
        return None
    return start, end


def _phones_in_window(window: str, start: int, end: int, regions: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """The phone numbers the matcher finds in window[start:end] (see `_matcher_span`).

    Cached by `_phone_spans`: the runs that are not phone numbers (dates, above all) recur
    across entities.
    """
    found: list[tuple[int, int]] = []
    for region in regions:
        # POSSIBLE, but only when written as the library writes that number: fictional ones.
        possible = list(phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.POSSIBLE))
        for match in possible:
            before = window[match.start - 1] if match.start else " "
            after = window[match.end] if match.end < len(window) else " "
            if match.end > start and match.start < end and not (before.isalnum() or after.isalnum()) \
                    and _written_as_phone_number(match):
                found.append((match.start, match.end))
        # VALID: a number some numbering plan holds, however it is written (the library also
        # wants a national prefix where its region writes one, and no letter around it). A valid
        # number is a possible one: where the matcher found nothing possible, it finds nothing valid.
        if possible:
            found += [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(
                window, region, leniency=phonenumbers.Leniency.VALID) if m.end > start and m.start < end]
    return tuple(sorted(set(found)))


def _digit_groups(text: str) -> list[str]:
    return re.findall(r"[0-9]+", phonenumbers.normalize_digits_only(text, keep_non_digits=True))


def _written_as_phone_number(match: phonenumbers.PhoneNumberMatch) -> bool:
    """Is this possible (but not valid) number grouped exactly as the library would write it?

    That catches the numbers of fiction and examples ("(555) 123-4567", "07700 900123"), which
    no numbering plan holds, while runs that merely have a possible length ("2024-01-15",
    "10.0.19041.1", "2024-12345") are grouped otherwise.
    """
    written = _digit_groups(match.raw_string)
    if len(written) < 2:
        return False  # a bare digit run is a phone number only when valid: else an id or a timestamp
    number = match.number
    national = _digit_groups(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    international = _digit_groups(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL))
    return written in (national, international) or (
        written[0] == str(number.country_code) and written[1:] == national)


def _undisguised(value: str) -> tuple[str, list[int]]:
    """`value` as detection reads it (format characters dropped, look-alikes of "@" and "."
    replaced), and where its characters were dropped: the offsets in the result before which
    one was, in order (see `_original`)."""
    if value.isascii() or not _DISGUISE.search(value):
        return value, []
    dropped: list[int] = []
    removed = 0
    for found in _DISGUISE.finditer(value):
        if found.group() in _LOOKALIKES:
            continue
        dropped.append(found.start() - removed)
        removed += 1
    return value.translate(_UNDISGUISE), dropped


def _original(index: int, dropped: list[int]) -> int:
    """The offset in the original value of the character at `index` of the undisguised one."""
    return index + bisect_right(dropped, index)


def _contact_spans(value: str) -> list[tuple[int, int, str]]:
    """(start, end, marker) of each contact detail in `value`, merged, left to right, as offsets
    of `value` itself (a disguised address's span covers its disguise)."""
    if value.isalnum() and not value.isdigit():
        return []  # one token (a hash, a name): no "@", and any digits in it belong to the token
    text, dropped = _undisguised(value)
    found = [(a, b, REDACTED_EMAIL) for a, b in _email_spans(text)] if "@" in text else []
    found += [(a, b, REDACTED_PHONE) for a, b in _phone_spans(text)]
    merged: list[tuple[int, int, str]] = []
    for start, end, marker in sorted(found):
        if merged and start <= merged[-1][1]:
            first, last, kind = merged[-1]
            merged[-1] = (first, max(end, last), REDACTED_EMAIL if REDACTED_EMAIL in (kind, marker) else kind)
        else:
            merged.append((start, end, marker))
    if not dropped:
        return merged
    return [(_original(a, dropped), _original(b - 1, dropped) + 1, marker) for a, b, marker in merged]


def _redact_text(value: str) -> str:
    if len(value) <= _CACHED_REDACT_CHARS:
        return _redact_short(value, phone_regions())
    key = (value, phone_regions())
    found = _long_redacted.get(key)
    if found is None:
        found = _redact(value)
        _long_redacted.put(key, found, len(value) + len(found))
    return found


# Long values (descriptions, report bodies) recur too: a metadata-only update, a resync or a
# reconciliation builds an unchanged entity's metadata again, and redacting its long values was
# over a third of building its document.
_long_redacted: TextMemo[str] = TextMemo(max_chars=8_000_000)


@functools.lru_cache(maxsize=16384)
def _redact_short(value: str, regions: tuple[str, ...]) -> str:  # regions: part of the cache key
    # Metadata values (names, countries, sectors, tactics) recur across entities: redacted once.
    return _redact(value)


def _redact(value: str) -> str:
    spans = _contact_spans(value)
    if not spans:
        return value
    pieces, copied = [], 0
    for start, end, marker in spans:
        pieces += [value[copied:start], marker]
        copied = end
    pieces.append(value[copied:])
    return "".join(pieces)


def has_contact_details(value: Any) -> bool:
    """Does the value (a string or a list of them) hold an e-mail address or a phone number?"""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and bool(_contact_spans(v)) for v in values)


def redact_contacts(value: Any) -> Any:
    """The value with every e-mail address and phone number replaced by a marker."""
    if isinstance(value, list):
        return [redact_contacts(v) for v in value]
    return _redact_text(value) if isinstance(value, str) else value
