"""The conflicts as an analyst reads them (the read side; deciding is sync.conflicts.resolve's):
a filtered list with counts by kind, one conflict laid out field by field (word diff,
provenance, the rule's proposal, a preview of the resulting node), and the snapshot a bulk
action would act on.

The list, the conflict page, the bulk confirmation and `manage.py conflicts` share `Filter`, so
a bookmarked view, a confirmation and its command line all mean the same conflicts.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from sync.conflicts.records import STORE_KINDS, ConflictError
from sync.models import Conflict
from sync.policy import WITHHELD, may_show, policy_for, shown_properties, shown_value, text_and_hash
from sync.stores import graph_store

Status = Conflict.Status
AGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
SORTS = {"oldest": ("created_at", "id"), "newest": ("-created_at", "-id")}
PAGE_SIZE = 50
MAX_PAGES = 200  # bounded offsets: the first 10,000 of any filter; narrow the filter for the rest
MAX_BULK = 500  # conflicts one bulk action resolves (each is a graph write): narrow the filter for more
# Field choices on the conflict page: the graph (left), the other side (right), the rule's
# proposal, or a value the analyst types.
SIDES = ("left", "right", "proposal", "edit")
BULK_ACTIONS = {"proposal": ("merged", "Apply the proposal to"), "left": ("graph", "Keep the graph's value for"),
                "right": ("other", "Take the other side's value for"), "dismiss": ("", "Dismiss")}
WORD_DIFF_MIN_CHARS = 40
MAX_EDIT_CHARS = 2_000  # an edited value (the page's input holds as many)
MAX_EDIT_ITEMS = 1_000  # items of an edited list
WORDS = re.compile(r"\s+|\S+\s*")  # a word with the space after it (leading space on its own)
MAX_DIFF_WORDS = 1_000  # words a side difflib is given (see word_diff)


@dataclass(frozen=True)
class Filter:
    """Which conflicts: by kind, status, label, rule, age (open longer than), and for "resolve
    similar" the disputed field and the two sources; `as_of` bounds a snapshot (created by then)."""

    kind: str = ""
    status: str = Status.OPEN
    label: str = ""
    rule: str = ""
    age: str = ""
    field: str = ""
    graph_source: str = ""
    other_source: str = ""
    as_of: datetime | None = None
    sort: str = "oldest"

    def rows(self) -> QuerySet[Conflict]:
        rows = Conflict.objects.all()
        for name in ("kind", "status", "label", "rule"):
            if getattr(self, name):
                rows = rows.filter(**{name: getattr(self, name)})
        if self.age:
            rows = rows.filter(created_at__lte=timezone.now() - AGES[self.age])
        if self.field:
            rows = rows.filter(graph_side__has_key=self.field)
        if self.graph_source:
            rows = rows.filter(sources__graph__source=self.graph_source)
        if self.other_source:
            rows = rows.filter(sources__other__source=self.other_source)
        if self.as_of:
            rows = rows.filter(created_at__lte=self.as_of)
        return rows

    def ordered(self) -> QuerySet[Conflict]:
        return self.rows().order_by(*SORTS[self.sort])

    def frozen(self) -> Filter:
        return self if self.as_of else replace(self, as_of=timezone.now())

    def params(self) -> list[tuple[str, str]]:
        """The filter as query-string pairs (defaults left out)."""
        pairs = [(name, getattr(self, name)) for name in
                 ("kind", "label", "rule", "age", "field", "graph_source", "other_source") if getattr(self, name)]
        if self.status != Status.OPEN:
            pairs.append(("status", self.status or "all"))
        if self.sort != "oldest":
            pairs.append(("sort", self.sort))
        if self.as_of:
            pairs.append(("as_of", self.as_of.isoformat(timespec="microseconds")))
        return pairs

    def describe(self, n: int) -> str:
        """In words: '12 open threat_severity conflicts on ThreatActor severity between a and b'."""
        words = [str(n), (self.status or "").replace("_", " "), self.kind.replace("_", " ") if self.kind else "",
                 "conflict" if n == 1 else "conflicts"]
        what = " ".join(w for w in words if w)
        if self.label or self.field:
            what += " on " + " ".join(p for p in (self.label, self.field) if p)
        if self.graph_source and self.other_source:
            what += f" between {self.graph_source} (graph) and {self.other_source}"
        elif self.graph_source or self.other_source:
            what += f" from {self.graph_source or self.other_source}"
        if self.rule:
            what += f" under the rule {self.rule}"
        if self.age:
            what += f", open longer than {self.age}"
        return what

    def command_args(self, action: str) -> list[str]:
        """The equivalent `manage.py conflicts` arguments (the note is the analyst's to write)."""
        args = ["conflicts", "--apply", action]
        for name in ("kind", "label", "rule", "age", "field", "graph_source", "other_source"):
            if getattr(self, name):
                args += [f"--{name.replace('_', '-')}", getattr(self, name)]
        if self.as_of:
            args += ["--before", self.as_of.isoformat(timespec="microseconds")]
        return [*args, "--note", "WHY"]


@dataclass
class Listing:
    conflicts: list[Conflict]
    total: int
    page: int
    pages: int
    by_kind: list[tuple[str, int]]  # counts by kind under the filter without its kind


def listing(selection: Filter, page: int = 1) -> Listing:
    """One page of the filter's conflicts (oldest first unless asked), its total and the counts
    by kind; three queries whatever the size."""
    total = selection.rows().count()
    pages = max(1, min(MAX_PAGES, -(-total // PAGE_SIZE)))
    page = max(1, min(page, pages))
    shown = list(selection.ordered().defer("graph_side", "other_side", "proposal", "resolved_values", "note")
                 .select_related(None)[(page - 1) * PAGE_SIZE:page * PAGE_SIZE])
    kinds = (replace(selection, kind="").rows().values("kind").annotate(n=Count("id")).order_by("kind"))
    return Listing(shown, total, page, pages, [(row["kind"], row["n"]) for row in kinds])


def neighbours(conflict: Conflict, selection: Filter) -> tuple[int | None, int | None]:
    """The previous and next conflict in the filter's order (for j / k)."""
    key, pk = conflict.created_at, conflict.pk
    rows = selection.rows().exclude(pk=pk)
    before = Q(created_at__lt=key) | Q(created_at=key, id__lt=pk)
    after = Q(created_at__gt=key) | Q(created_at=key, id__gt=pk)
    if selection.sort == "newest":
        before, after = after, before
    ordered_desc = ("-created_at", "-id") if selection.sort == "oldest" else ("created_at", "id")
    previous = rows.filter(before).order_by(*ordered_desc).values_list("id", flat=True).first()
    following = rows.filter(after).order_by(*SORTS[selection.sort]).values_list("id", flat=True).first()
    return previous, following


# -- one conflict, field by field --------------------------------------------------------------

@dataclass
class ConflictField:
    """One field of a conflict as the review shows it: the graph's value (left) beside the other
    side's (right), the rules' proposal, and what the analyst chose or typed."""

    name: str
    left: Any
    right: Any
    proposal: Any
    has_proposal: bool
    changed: bool
    embedded: bool
    left_diff: list[tuple[str, str]] | None = None  # (kind, text): kind is "same" or "del"
    right_diff: list[tuple[str, str]] | None = None  # kind is "same" or "ins"
    choice: str = ""
    edit: str = ""
    moved: bool = False  # the graph's value changed since the analyst looked

    @property
    def json(self) -> dict[str, str]:
        return {"left": _as_json(self.left), "right": _as_json(self.right), "proposal": _as_json(self.proposal)}


@dataclass
class Review:
    conflict: Conflict
    rows: list[ConflictField]
    unchanged: list[ConflictField]  # disputed fields both sides agree on, and the node's other shown fields
    store_kind: bool
    live_version: int | None
    node_exists: bool
    preview: dict[str, Any] = field(default_factory=dict)
    effect: str = ""  # re-embed / metadata-only / nothing, in words
    reembeds: bool = False
    error: str = ""
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)  # graph/other: source, confidence, time
    resolved: dict[str, Any] = field(default_factory=dict)  # the values decided, as people may read them


def text(value: Any) -> str:
    """A value as the analyst reads (and edits) it: lists comma-separated, None empty."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def word_diff(left: str, right: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Word-level diff (difflib over words and the spaces between them): each side as runs of
    unchanged and removed/added text, each word keeping the space that follows it.

    difflib compares every word with every other at worst (8,000 words a side took seconds): past
    MAX_DIFF_WORDS a side, the words both sides begin and end with are matched in one pass, and
    a middle still longer than that is shown removed and added whole."""
    a, b = WORDS.findall(left), WORDS.findall(right)
    if max(len(a), len(b)) > MAX_DIFF_WORDS:
        return _long_word_diff(a, b)
    old, new = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            old.append(("same", "".join(a[i1:i2])))
            new.append(("same", "".join(b[j1:j2])))
        else:
            if i2 > i1:
                old.append(("del", "".join(a[i1:i2])))
            if j2 > j1:
                new.append(("ins", "".join(b[j1:j2])))
    return old, new


def _long_word_diff(a: list[str], b: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """`word_diff` of long word lists, in time linear in their length (see there)."""
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    middle_a, middle_b = a[head:len(a) - tail], b[head:len(b) - tail]
    if max(len(middle_a), len(middle_b)) <= MAX_DIFF_WORDS:
        old, new = word_diff("".join(middle_a), "".join(middle_b))
    else:
        old = [("del", "".join(middle_a))] if middle_a else []
        new = [("ins", "".join(middle_b))] if middle_b else []
    if head:
        old.insert(0, ("same", "".join(a[:head])))
        new.insert(0, ("same", "".join(b[:head])))
    if tail:
        old.append(("same", "".join(a[len(a) - tail:])))
        new.append(("same", "".join(b[len(b) - tail:])))
    return old, new


def review(conflict: Conflict, *, choices: dict[str, str] | None = None, edits: dict[str, str] | None = None,
           seen: dict[str, Any] | None = None) -> Review:
    """The conflict as its page shows it, with the live node read once from the graph.

    `choices`/`edits` are the analyst's (from a preview or a refused attempt); where `seen` (the
    graph values the analyst looked at) differs from the graph side now, that field's choice is
    dropped and the row marked as moved. A field outside the label's display allow-list
    (sync.policy.display) is shown WITHHELD on both sides, in the proposal and the preview.
    """
    choices, edits = dict(choices or {}), dict(edits or {})
    entity = graph_store().get_entities([(conflict.label, conflict.uid)]).get((conflict.label, conflict.uid))
    policy = policy_for(conflict.label)
    embedded = set(policy.text_property_names)
    store_kind = conflict.kind in STORE_KINDS
    rows, unchanged = [], []
    for name in conflict.fields:
        left, right = conflict.graph_side.get(name), conflict.other_side.get(name)
        has_proposal = name in (conflict.proposal or {})
        row = ConflictField(name, left, right, (conflict.proposal or {}).get(name), has_proposal,
                       _as_json(left) != _as_json(right), name in embedded)
        if isinstance(left, str) and isinstance(right, str) and max(len(left), len(right)) >= WORD_DIFF_MIN_CHARS:
            row.left_diff, row.right_diff = word_diff(left, right)
        shown_left = shown_value(conflict.label, name, left)  # what the page showed the analyst
        if seen is not None and name in seen and _as_json(seen[name]) != _as_json(shown_left):
            row.moved = True
        elif choices.get(name) in SIDES:
            row.choice, row.edit = choices[name], edits.get(name, "")
        elif not row.changed:
            row.choice = "left"  # both sides agree: nothing to decide
        elif has_proposal and conflict.status == Status.OPEN and not store_kind:
            row.choice = "proposal"  # the rule's proposal is where a decision starts
        (rows if row.changed or store_kind else unchanged).append(row)
    if entity is not None and not store_kind:
        shown = [*policy.text_property_names, *policy.metadata_fields]
        for name in dict.fromkeys(shown):
            if name not in conflict.graph_side and name in entity.properties:
                value = entity.properties[name]
                unchanged.append(ConflictField(name, value, value, None, False, False, name in embedded))
    result = Review(conflict, rows, unchanged, store_kind, entity.version if entity else None, entity is not None,
                    provenance={side: _provenance((conflict.sources or {}).get(side)) for side in ("graph", "other")})
    if entity is not None and not store_kind:
        _preview(result, entity.properties, policy)
    _withhold(result)
    return result


def _withhold(result: Review) -> None:
    """What the policy does not let the page show, replaced (after the preview was worked out
    from the real values)."""
    label = result.conflict.label
    for row in result.rows + result.unchanged:
        if not may_show(label, row.name):
            row.left = row.right = row.proposal = WITHHELD
            row.left_diff = row.right_diff = None
    result.preview = shown_properties(label, result.preview)
    result.resolved = shown_properties(label, result.conflict.resolved_values or {})


def _provenance(described: dict | None) -> dict[str, Any]:
    described = dict(described or {})
    stamp = described.get("updated_at")
    try:
        described["updated_at"] = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
    except ValueError:
        described["updated_at"] = None
    return described


def _preview(result: Review, properties: dict[str, Any], policy) -> None:
    after = dict(properties)
    for row in result.rows + result.unchanged:
        if row.name not in result.conflict.graph_side and row.name not in result.conflict.other_side:
            continue
        try:
            after[row.name] = chosen_value(row, properties.get(row.name))
        except ConflictError as exc:
            result.error = str(exc)
            return
    shown = [r.name for r in result.rows + result.unchanged]
    result.preview = {name: after.get(name) for name in shown}
    changed = {k for k in shown if _as_json(after.get(k)) != _as_json(properties.get(k))}
    if not changed:
        result.effect = "Nothing changes in the graph: the node keeps its version."
    elif not policy.synced:
        result.effect = f"{policy.label} is never synced: only the graph changes."
    elif text_and_hash(policy, after)[1] != text_and_hash(policy, properties)[1]:
        result.reembeds = True
        result.effect = "The embedded text changes: the node will be re-embedded."
    else:
        result.effect = "A metadata-only update: the vectors keep their embeddings (no re-embedding)."


def chosen_value(row: ConflictField, current: Any) -> Any:
    if row.choice == "left":
        return row.left
    if row.choice == "right":
        return row.right
    if row.choice == "proposal":
        if not row.has_proposal:
            raise ConflictError(f"the rule proposed nothing for {row.name}: choose left, right or edit")
        return row.proposal
    if row.choice == "edit":
        return parse_edit(row.name, row.edit, row.left if row.left is not None else row.right)
    return current


def parse_edit(name: str, raw: str, like: Any) -> Any:
    """An edited value in the type of the field's current one: numbers stay numbers, lists lists
    (then checked as any edit is: `check_edit`)."""
    raw = (raw or "").strip()
    if not raw:
        raise ConflictError(f"{name}: type a value, or choose a side")
    if len(raw) > MAX_EDIT_CHARS:
        raise ConflictError(f"{name}: at most {MAX_EDIT_CHARS:,} characters")
    if isinstance(like, bool):
        if raw.lower() not in ("true", "false"):
            raise ConflictError(f"{name} must be true or false, got {raw[:40]!r}")
        return raw.lower() == "true"
    if isinstance(like, int | float):
        try:
            number = float(raw)
        except ValueError:
            raise ConflictError(f"{name} must be a number, got {raw[:40]!r}") from None
        value = int(number) if isinstance(like, int) and math.isfinite(number) and number.is_integer() else number
        return check_edit(name, value, like)
    if isinstance(like, list | tuple):
        return check_edit(name, [part.strip() for part in raw.split(",") if part.strip()], like)
    return raw


def _family(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    return "null" if value is None else "an object"


def check_edit(name: str, value: Any, *likes: Any) -> Any:
    """A value an analyst (the page, the API) gives a field, as the graph can hold it: of the kind
    of one of the field's sides (`likes`; anything scalar when both are empty), a finite number
    in 64-bit range, a string of at most MAX_EDIT_CHARS, a list of at most MAX_EDIT_ITEMS strings
    or numbers of one kind. Never null: a resolution does not delete a disputed field. Raises
    ConflictError (a 400 wherever it comes from)."""
    kind = _family(value)
    kinds = {_family(like) for like in likes if like is not None}
    if kinds and kind not in kinds:
        raise ConflictError(f"{name} must be {' or '.join(sorted(kinds))}, like the sides, not {kind}")
    if kind == "null":
        raise ConflictError(f"{name}: give a value, or choose a side (a resolution does not delete a field)")
    if kind == "an object":
        raise ConflictError(f"{name} must be a string, a number, true or false, or a list of these")
    items = value if kind == "a list" else [value]
    if kind == "a list":
        if len(value) > MAX_EDIT_ITEMS:
            raise ConflictError(f"{name}: at most {MAX_EDIT_ITEMS} items")
        if len({_family(item) for item in value}) > 1 or any(_family(item) not in ("a string", "a number")
                                                             for item in value):
            raise ConflictError(f"{name} must be a list of strings, or of numbers")
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConflictError(f"{name} must be a finite number, got {item}")
        if isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**63:
            raise ConflictError(f"{name} must be a number the graph can hold (a 64-bit integer)")
        if isinstance(item, str) and len(item) > MAX_EDIT_CHARS:
            raise ConflictError(f"{name}: at most {MAX_EDIT_CHARS:,} characters")
    return value


def bulk_ids(selection: Filter) -> list[int]:
    """The open conflicts of the snapshot, oldest first (at most MAX_BULK + 1, to tell "too many")."""
    return list(replace(selection, status=Status.OPEN).ordered().values_list("id", flat=True)[:MAX_BULK + 1])


def similar(conflict: Conflict) -> Filter:
    """Open conflicts like this one: the same kind, field(s) and the two same sources."""
    sources = conflict.sources or {}
    return Filter(kind=conflict.kind, label=conflict.label, field=conflict.fields[0] if conflict.fields else "",
                  graph_source=str((sources.get("graph") or {}).get("source") or ""),
                  other_source=str((sources.get("other") or {}).get("source") or ""))
