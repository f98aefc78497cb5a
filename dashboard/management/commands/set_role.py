"""Give an existing user a role (viewer, analyst or admin); audited."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from dashboard.access import ROLES, assign_role, role_of
from dashboard.user_audit import acting


class Command(BaseCommand):
    help = "Give a user exactly one role: viewer, analyst or admin."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("role", choices=ROLES)

    def handle(self, *args, username, role, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"there is no user {username!r} (create one with: manage.py create_user {username} --role {role})")
        before = role_of(user)
        with acting("command", note="manage.py set_role"):  # audited as user.role (dashboard.user_audit)
            assign_role(user, role)
        self.stdout.write(f"{username} is now {role} (was {before or 'no role'})")
