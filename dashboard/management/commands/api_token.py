"""API tokens from a shell: create one for a user (shown once), list them, revoke one. A token
acts as its user, with the user's role at the time of each request (dashboard.tokens)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from dashboard import tokens
from dashboard.access import role_of
from dashboard.models import ApiToken


class Command(BaseCommand):
    help = "Create (printed once), list or revoke API tokens. A token acts with its user's role."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="a new token for USER, printed once")
        create.add_argument("username")
        create.add_argument("--name", required=True, help="what it is for, e.g. 'nightly retry job'")
        listing = actions.add_parser("list", help="tokens (never the tokens themselves: their prefix)")
        listing.add_argument("--user", default="")
        listing.add_argument("--all", action="store_true", help="revoked ones too")
        revoke = actions.add_parser("revoke", help="refuse a token from now on")
        revoke.add_argument("token", help="its number or prefix, from `list`")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"_{action}")(**options)
        except tokens.TokenError as exc:
            raise CommandError(str(exc)) from None

    def _create(self, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"there is no user {username!r} (create one with: manage.py create_user {username} --role viewer)")
        row, token = tokens.create(user, name)
        role = role_of(user)
        self.stdout.write(f"token #{row.pk} for {username} ({role or 'no role yet: it can do nothing'}), "
                          f"{row.name!r}; shown this once, store it now:")
        self.stdout.write(token)

    def _list(self, user, all, **options):
        rows = ApiToken.objects.select_related("user").order_by("user__username", "-created_at")
        if user:
            rows = rows.filter(user__username=user)
        if not all:
            rows = rows.filter(revoked_at=None)
        for row in rows:
            used = f"last used {row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never used"
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else role_of(row.user) or "no role"
            self.stdout.write(f"#{row.pk:<4} {row.prefix}…  {row.user.get_username():<16} {state:<18} {used:<26} {row.name}")

    def _revoke(self, token, **options):
        row = tokens.find(token)
        if not tokens.revoke(row):
            raise CommandError(f"token #{row.pk} was revoked already, at {row.revoked_at:%Y-%m-%d %H:%M}")
        self.stdout.write(f"revoked token #{row.pk} ({row.prefix}…, {row.name!r}) of {row.user.get_username()}")
