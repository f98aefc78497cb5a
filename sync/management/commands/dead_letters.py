"""Dead letters from a shell: list them by error group, retry or discard one, some, a group or a filter.

The same selections as the Queue page (sync.deadletters): `--ids`, or `--group` / `--label` /
`--text` (or `--all`), bounded by `--before` (default: now), so an action never touches dead
letters that die while it runs. Retries and discards are audited under `--user`.
"""

from django.core.management.base import BaseCommand, CommandError

from nightingale.permissions import ACT_ON_SYNC
from nightingale.times import BadTime, parse_time
from sync import deadletters
from sync.management.cli import acting_user

WORDING = deadletters.Wording(
    both="choose dead letters either by --ids or by --group / --label / --text, not both",
    nothing="say which dead letters: --ids, --group, --label, --text, or --all")


class Command(BaseCommand):
    help = "List dead letters by error group, or retry / discard a selection of them."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=("list", "retry", "discard"))
        parser.add_argument("--ids", help="comma-separated event ids")
        parser.add_argument("--group", default="", help="a group key (from `list` or the Queue page)")
        parser.add_argument("--label", default="")
        parser.add_argument("--text", default="", help="text the error contains")
        parser.add_argument("--all", action="store_true", help="every dead letter (retry/discard without a filter)")
        parser.add_argument("--before", default="", help="only dead letters that died by this ISO time (default: now)")
        parser.add_argument("--user", default="", help="the user the audit trail names (default: 'command')")
        parser.add_argument("--note", default="", help="why (discard)")

    def handle(self, *args, action, ids, group, label, text, all, before, user, note, **options):
        try:
            as_of = parse_time(before, "--before")
        except BadTime as exc:
            raise CommandError(str(exc)) from None
        try:
            numbers = [int(i) for i in ids.split(",") if i.strip()] if ids else []
        except ValueError:
            raise CommandError("--ids takes event numbers, e.g. 12,15") from None
        try:
            selection = deadletters.select(numbers, label=label, group=group, text=text, as_of=as_of, everything=all,
                                           action=action != "list", now_by_default=True, wording=WORDING)
        except deadletters.BadSelection as exc:
            raise CommandError(str(exc)) from None
        if action == "list":
            for g in deadletters.groups(selection):
                self.stdout.write(f"{g.key}  {g.count:6d}  {g.label:<14} {g.fingerprint}")
            return
        actor = acting_user(user, needs=ACT_ON_SYNC)
        try:
            outcome = (deadletters.retry(selection, actor) if action == "retry"
                       else deadletters.discard(selection, actor, note=note))
        except deadletters.NotRetried as exc:
            raise CommandError(str(exc)) from None
        verb = "retried" if action == "retry" else "discarded"
        self.stdout.write(f"{verb} {outcome.done} of {outcome.asked} dead letters"
                          + (f" ({outcome.skipped} already handled)" if outcome.skipped else ""))
