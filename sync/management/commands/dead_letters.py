"""Dead letters from a shell: list them by error group, retry or discard one, some, a group or a filter.

The same selections as the Queue page (sync.deadletters): `--ids`, or `--group` / `--label` /
`--text` (or `--all`), bounded by `--before` (default: now), so an action never touches dead
letters that die while it runs. Retries and discards are audited under `--user`.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from dashboard.forms import BadRequest, parse_time
from sync import deadletters


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
            as_of = parse_time(before, "--before") or timezone.now()
            numbers = tuple(int(i) for i in ids.split(",") if i.strip()) if ids else ()
        except (BadRequest, ValueError) as exc:
            raise CommandError(str(exc) if isinstance(exc, BadRequest) else "--ids takes event numbers, e.g. 12,15") from None
        selection = deadletters.Selection(ids=numbers, group=group, label=label, text=text,
                                          as_of=None if numbers else as_of)
        if action == "list":
            for g in deadletters.groups(selection):
                self.stdout.write(f"{g.key}  {g.count:6d}  {g.label:<14} {g.fingerprint}")
            return
        if not (numbers or group or label or text or all):
            raise CommandError("say which dead letters: --ids, --group, --label, --text, or --all")
        actor = "command"
        if user:
            actor = get_user_model().objects.filter(username=user).first()
            if actor is None:
                raise CommandError(f"there is no user {user!r}")
        outcome = (deadletters.retry(selection, actor) if action == "retry"
                   else deadletters.discard(selection, actor, note=note))
        verb = "retried" if action == "retry" else "discarded"
        self.stdout.write(f"{verb} {outcome.done} of {outcome.asked} dead letters"
                          + (f" ({outcome.skipped} already handled)" if outcome.skipped else ""))
