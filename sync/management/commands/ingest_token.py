"""Ingest tokens from a shell: create one bound to the sources it may claim and the labels it may
write (shown once), list them, revoke one. Creating and revoking are audited under `--user`, who
must be an admin (the role that manages users and their tokens), or else as the command itself
(sync.ingest.tokens)."""

from django.core.management.base import BaseCommand, CommandError

from nightingale.permissions import MANAGE_USERS
from sync.ingest import tokens
from sync.management.cli import acting_user
from sync.models import IngestToken


def _names(text: str) -> list[str]:
    return [part for part in (text or "").split(",") if part.strip()]


class Command(BaseCommand):
    help = ("Create (printed once), list or revoke ingest API tokens. A token may claim only its "
            "--sources and write only its --labels.")

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="a new token, printed once")
        create.add_argument("--name", required=True, help="which feed it is for, e.g. 'misp-sync'")
        create.add_argument("--sources", required=True,
                            help="comma-separated `source` values it may send, e.g. misp,otx")
        create.add_argument("--labels", required=True,
                            help="comma-separated labels it may write, e.g. ThreatActor,ThreatIntel")
        create.add_argument("--user", default="", help="the admin the audit trail names (default: 'command')")
        listing = actions.add_parser("list", help="tokens (never the tokens themselves: their prefix)")
        listing.add_argument("--all", action="store_true", help="revoked ones too")
        revoke = actions.add_parser("revoke", help="refuse a token from now on")
        revoke.add_argument("token", help="its number or prefix, from `list`")
        revoke.add_argument("--user", default="", help="the admin the audit trail names (default: 'command')")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"_{action}")(**options)
        except tokens.TokenError as exc:
            raise CommandError(str(exc)) from None

    def _create(self, name, sources, labels, user, **options):
        row, token = tokens.create(name, _names(sources), _names(labels), by=acting_user(user, needs=MANAGE_USERS))
        self.stdout.write(f"ingest token #{row.pk} {row.name!r}: may claim {', '.join(row.sources)}; "
                          f"may write {', '.join(row.labels)}")
        for source in tokens.authoritative(row):
            self.stdout.write(f"note: {source} is an authoritative source: this token's writes win "
                              "vulnerability-score disputes against every other source")
        self.stdout.write("shown this once, store it now:")
        self.stdout.write(token)

    def _list(self, all, **options):
        rows = IngestToken.objects.order_by("-created_at")
        if not all:
            rows = rows.filter(revoked_at=None)
        for row in rows:
            used = f"last used {row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never used"
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            self.stdout.write(f"#{row.pk:<4} {row.prefix}…  {row.name:<20} {state:<18} {used:<26} "
                              f"sources={','.join(row.sources)} labels={','.join(row.labels)}")

    def _revoke(self, token, user, **options):
        row = tokens.find(token)
        if not tokens.revoke(row, by=acting_user(user, needs=MANAGE_USERS)):
            raise CommandError(f"ingest token #{row.pk} was revoked already, at {row.revoked_at:%Y-%m-%d %H:%M}")
        self.stdout.write(f"revoked ingest token #{row.pk} ({row.prefix}…, {row.name!r})")
