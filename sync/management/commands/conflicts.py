"""List conflicts, or resolve / dismiss a filtered snapshot of open ones (the Conflicts page's bulk
actions: each conflict is resolved and audited one by one, a stale one skipped and reported)."""

from django.core.management.base import BaseCommand, CommandError

from nightingale.permissions import ACT_ON_SYNC
from nightingale.times import BadTime, parse_time
from sync.conflicts.records import ConflictError
from sync.conflicts.resolve import bulk
from sync.conflicts.review import AGES, BULK_ACTIONS, Filter
from sync.management.cli import acting_user
from sync.models import Conflict
from sync.policy import shown_properties


class Command(BaseCommand):
    help = "List conflicts with their proposal, or --apply proposal/left/right/dismiss to the open ones matching."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="list resolved and dismissed ones too")
        parser.add_argument("--limit", type=int, default=50)
        parser.add_argument("--apply", choices=sorted(BULK_ACTIONS),
                            help="proposal: the rule's proposal; left: keep the graph; right: the other side; "
                                 "dismiss: close without changing the graph")
        parser.add_argument("--kind", choices=Conflict.Kind.values)
        parser.add_argument("--label", default="")
        parser.add_argument("--rule", default="")
        parser.add_argument("--age", choices=sorted(AGES), help="open longer than")
        parser.add_argument("--field", default="", help="conflicts on this field")
        parser.add_argument("--graph-source", default="", help="the graph side's source")
        parser.add_argument("--other-source", default="", help="the other side's source")
        parser.add_argument("--before", default="", help="only conflicts opened by this ISO time (the snapshot)")
        parser.add_argument("--note", default="", help="why (required with --apply; kept in each audit entry)")
        parser.add_argument("--user", default="", help="the user acting, audited as such (default: the command itself)")

    def handle(self, *args, all, limit, apply, note, user, before, **options):
        try:
            as_of = parse_time(before, "--before")
        except BadTime as exc:
            raise CommandError(str(exc)) from None
        selection = Filter(kind=options["kind"] or "", status="" if all and not apply else Conflict.Status.OPEN,
                           label=options["label"], rule=options["rule"], age=options["age"] or "",
                           field=options["field"], graph_source=options["graph_source"],
                           other_source=options["other_source"], as_of=as_of)
        if apply:
            self._apply(selection.frozen(), apply, note, user)
            return
        conflicts = selection.rows()
        total = conflicts.count()
        for c in conflicts.order_by("-created_at")[:limit]:
            # As on the Conflicts page: a value outside the label's display allow-list is withheld.
            graph, other, proposal = (shown_properties(c.label, side) for side in (c.graph_side, c.other_side,
                                                                                    c.proposal or {}))
            self.stdout.write(
                f"#{c.pk} {c.status} {c.kind} {c.label}:{c.uid} v{c.graph_version} rule={c.rule or '-'} "
                f"graph={graph} other={other} proposal={proposal or '-'}")
        self.stdout.write(f"{total} {'conflicts' if all else 'open conflicts'}")

    def _apply(self, selection: Filter, action: str, note: str, username: str) -> None:
        actor = acting_user(username, default="manage.py conflicts", needs=ACT_ON_SYNC)
        try:
            outcome = bulk(selection, action, actor, note)
        except ConflictError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(outcome.words())
