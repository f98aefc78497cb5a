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
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

# --- contact details -------------------------------------------------------------------------
# E-mail addresses and phone numbers never reach the vector index, whatever the label: they are
# replaced in every text and metadata value before anything leaves the graph, and
# reconciliation deletes (and rebuilds) any vector that still holds one.
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
REDACTED_EMAIL, REDACTED_PHONE = "[e-mail redacted]", "[phone redacted]"
# Where the phone matcher is worth running: a run of digits and phone punctuation holding at least
# 7 digits (this C-speed search is all most texts cost; it ignores a leading "+" or "(", which
# the matcher finds in the context it is given).
_PHONE_RUN = re.compile(r"\d[\d \u00a0().\-/\u2010-\u2015]{5,}\d")
_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D")
_MIN_PHONE_DIGITS = 7
# The matcher needs a little context: a "+" or "(" before the run, a timestamp's ":ss" after it.
_CONTEXT_CHARS = 3

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


def _phone_spans(value: str) -> list[tuple[int, int]]:
    """Where `value` holds phone numbers, as (start, end) offsets, left to right."""
    if len(value) < _MIN_PHONE_DIGITS:
        return []
    spans: list[tuple[int, int]] = []
    size = len(value)
    for run in _PHONE_RUN.finditer(value):
        start, end = run.span()
        left, right = max(0, start - _CONTEXT_CHARS), min(size, end + _CONTEXT_CHARS)
        found = _phones_in_window(value[left:right], start - left, end - left, phone_regions())
        spans.extend((left + a, left + b) for a, b in found)
    return spans


def _continues_token(window: str, index: int) -> bool:
    """Does window[index:] continue a word or an identifier ("T1059", "CVE-2024", "KB5034441")?"""
    before = window[index - 1] if index else " "
    return before.isalnum() or (before in "-." and index > 1 and window[index - 2].isalnum())


@functools.lru_cache(maxsize=16384)
def _phones_in_window(window: str, start: int, end: int, regions: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """The phone numbers in window[start:end], a run with a little context around it.

    Cached: the runs that are not phone numbers (dates, above all) recur across entities.
    """
    if _continues_token(window, start):
        # The run's first group belongs to that token; a phone number may still follow it.
        cut = _NON_DIGIT.search(window, start, end)
        if cut is None:
            return ()
        start = cut.start()
    if end < len(window) and window[end].isalnum():
        end = max(start, *(window.rfind(c, start, end) for c in " -./)"))  # likewise the last group
    if len(_DIGIT.findall(window, start, end)) < _MIN_PHONE_DIGITS:
        return ()
    found: list[tuple[int, int]] = []
    for region in regions:
        # VALID: a number some numbering plan holds, however it is written (the library also
        # wants a national prefix where its region writes one, and no letter around it).
        found += [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(
            window, region, leniency=phonenumbers.Leniency.VALID) if m.end > start and m.start < end]
        # POSSIBLE, but only when written as the library writes that number: fictional ones.
        for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.POSSIBLE):
            before = window[match.start - 1] if match.start else " "
            after = window[match.end] if match.end < len(window) else " "
            if match.end > start and match.start < end and not (before.isalnum() or after.isalnum()) \
                    and _written_as_phone_number(match):
                found.append((match.start, match.end))
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


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _redact_text(value: str) -> str:
    if len(value) <= _CACHED_REDACT_CHARS:
        return _redact_short(value, phone_regions())
    return _redact(value)


@functools.lru_cache(maxsize=16384)
def _redact_short(value: str, regions: tuple[str, ...]) -> str:  # regions: part of the cache key
    # Metadata values (names, countries, sectors, tactics) recur across entities: redacted once.
    return _redact(value)


def _redact(value: str) -> str:
    if "@" in value:
        value = EMAIL.sub(REDACTED_EMAIL, value)
    spans = _merge(_phone_spans(value))
    if not spans:
        return value
    pieces, copied = [], 0
    for start, end in spans:
        pieces += [value[copied:start], REDACTED_PHONE]
        copied = end
    pieces.append(value[copied:])
    return "".join(pieces)


def has_contact_details(value: Any) -> bool:
    """Does the value (a string or a list of them) hold an e-mail address or a phone number?"""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and (("@" in v and EMAIL.search(v)) or _phone_spans(v)) for v in values)


def redact_contacts(value: Any) -> Any:
    """The value with every e-mail address and phone number replaced by a marker."""
    if isinstance(value, list):
        return [redact_contacts(v) for v in value]
    return _redact_text(value) if isinstance(value, str) else value
