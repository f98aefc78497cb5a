"""Create a dashboard user with a role (viewer, analyst or admin; see dashboard/access.py)."""

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from dashboard.access import ROLES, assign_role
from dashboard.user_audit import acting
from nightingale.env import env_str
from sync.models import AuditEntry


class Command(BaseCommand):
    help = "Create a user with a role. The password comes from the variable named by --password-env, else one is generated and printed once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument("--email", default="")
        parser.add_argument("--password-env", metavar="VARIABLE",
                            help="read the password from this environment variable (never from the command line)")

    def handle(self, *args, username, role, email, password_env, **options):
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            raise CommandError(f"a user {username!r} exists already; change its role with: manage.py set_role {username} ROLE")
        generated = not password_env
        password = secrets.token_urlsafe(12) if generated else env_str(password_env)
        if not password:
            raise CommandError(f"{password_env} is empty or not set")
        user = User(username=username, email=email)
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError(f"{password_env}: " + " ".join(exc.messages)) from None
        user.set_password(password)
        with acting("command", note="manage.py create_user"):
            user.save()
            assign_role(user, role)
            AuditEntry.record("command", "user.create", f"user:{username}", after={"role": role})
        shown = f" with password {password}" if generated else f" with the password from {password_env}"
        self.stdout.write(f"created {role} {username!r}{shown}")
