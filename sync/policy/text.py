"""Property values made safe to embed and store (`clean_text`, `html_to_text`), and cut to size.

Cleaning: control characters are removed and the text NFC-normalised, then every string is read
as HTML and turned into text with the standard library's HTML parser: tags and comments dropped,
block elements become line breaks, `<script>`, `<style>` and `<template>` content removed,
entities decoded. Entity-escaped markup (`&lt;script&gt;`, common in feeds) is decoded and parsed
again, up to 4 rounds, so it is removed too. A `<` that could still open markup (an unterminated
tag, or one with another `<` before its `>`) becomes `‹`; that also keeps the parser linear on
hostile input. A `<` followed by a space or digit is plain text ("< 2.4"); one directly followed
by a letter is markup ("a<b and c>d" reads "ad"). Whitespace is collapsed (text keeps its line
and paragraph breaks; metadata strings are one line).
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from html.parser import HTMLParser

ELLIPSIS = "…"

# --- cleaning --------------------------------------------------------------------------------
_SKIPPED_ELEMENTS = frozenset({"script", "style", "template"})
_BLOCK_ELEMENTS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tr", "ul",
})
_CELL_ELEMENTS = frozenset({"td", "th"})
_UNESCAPE_ROUNDS = 4
_MARKUP_OPENER = re.compile(r"<(?=[A-Za-z/!?])")
_TAG_START_CHARS = frozenset(string.ascii_letters + "/!?")
INERT_LT = "‹"  # what a '<' that could still open markup becomes


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_ELEMENTS:
            self.skipping += 1
        elif tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")
        elif tag in _CELL_ELEMENTS:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # Browsers ignore the "/" of <script/>: what follows is still script, so skip it too.
        if tag in _SKIPPED_ELEMENTS:
            self.skipping += 1
        else:
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_ELEMENTS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")
        elif tag in _CELL_ELEMENTS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def _defuse(text: str) -> str:
    """The text with every '<' html.parser could stall on made harmless, in one linear pass.

    Python 3.11's html.parser rescans to the end of its input for each construct it cannot close
    (a known CPython issue), so a megabyte of "<a<a<a..." would take hours. Here a '<' that opens markup is
    kept only when a '>' closes it before the next '<'; otherwise it becomes `INERT_LT`. Comments
    are removed here (the parser's own comment search has the same flaw), CDATA sections are made
    inert, and a '<' that opens nothing becomes "&lt;", which the parser turns back into '<'
    without its slow character-by-character path.
    """
    pieces: list[str] = []
    size = len(text)
    copied = 0
    next_gt = next_comment_end = -2  # -2: not looked up yet; -1: none left in the text
    lt = text.find("<")
    while lt != -1:
        following = text.find("<", lt + 1)
        if text.startswith("<!--", lt):
            if next_comment_end != -1 and next_comment_end < lt + 4:
                next_comment_end = text.find("-->", lt + 4)
            if next_comment_end != -1:
                pieces.append(text[copied:lt])
                copied = next_comment_end + 3
                lt = text.find("<", copied)
                continue
            replacement = INERT_LT
        elif text.startswith("<![", lt):
            replacement = INERT_LT
        elif lt + 1 < size and text[lt + 1] in _TAG_START_CHARS:
            if next_gt != -1 and next_gt < lt:
                next_gt = text.find(">", lt)
            if next_gt != -1 and (following == -1 or next_gt < following):
                lt = following
                continue
            replacement = INERT_LT
        else:
            replacement = "&lt;"
        pieces.append(text[copied:lt])
        pieces.append(replacement)
        copied = lt + 1
        lt = following
    pieces.append(text[copied:])
    return "".join(pieces)


def html_to_text(value: str) -> str:
    """The text an HTML reader sees in `value`, without script, style, comments or any markup."""
    text = value
    for _ in range(_UNESCAPE_ROUNDS):
        if "<" not in text and "&" not in text:
            break
        parser = _TextExtractor()
        parser.feed(_defuse(text))
        parser.close()
        parsed = "".join(parser.parts)
        if parsed == text:
            break
        text = parsed
    # What is left can only be a '<' the parser took for text (an unterminated tag at the end, or
    # markup escaped more times than the rounds above): make sure no later reader sees a tag.
    return _MARKUP_OPENER.sub(INERT_LT, text) if "<" in text else text


# Control characters (Cc, except tab and newline) and lone surrogates cannot be embedded or stored
# meaningfully; one C-speed regex pass finds (and removes) them, even over megabytes.
_UNSTORABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(value: str, *, multiline: bool = False) -> str:
    """A property value made safe to embed and store: see "Cleaning" in the module docstring."""
    if len(value) <= _CACHED_CLEAN_CHARS:
        return _clean_short(value, multiline)
    return _clean(value, multiline)


# Names, aliases, countries and sectors recur across entities, and most fields are cleaned twice
# per document (once for the text, once as metadata): short values are cleaned once per process.
_CACHED_CLEAN_CHARS = 256


@functools.lru_cache(maxsize=16384)
def _clean_short(value: str, multiline: bool) -> str:
    return _clean(value, multiline)


def _clean(value: str, multiline: bool) -> str:
    # Characters are removed before the markup pass, never after it: removing the NUL from
    # "<\x00script>" afterwards would assemble the very tag the pass let through as text.
    text = value.replace("\r\n", "\n").replace("\r", "\n") if "\r" in value else value
    if not text.isprintable() and _UNSTORABLE.search(text):  # printable: no control characters or surrogates
        text = _UNSTORABLE.sub("", text)
    text = html_to_text(unicodedata.normalize("NFC", text))
    if not multiline:
        return " ".join(text.split())
    lines = [" ".join(line.split()) for line in text.split("\n")]
    paragraphs: list[str] = []
    blank = False
    for line in lines:
        if line:
            if blank and paragraphs:
                paragraphs.append("")
            paragraphs.append(line)
            blank = False
        else:
            blank = True
    return "\n".join(paragraphs)


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a space near the end when there is one, ending in …."""
    if len(text) <= limit:
        return text
    head = text[:limit - 1]
    space = head.rfind(" ")
    if space >= limit * 0.8:
        head = head[:space]
    return head.rstrip() + ELLIPSIS
