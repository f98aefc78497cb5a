"""Create the first admin user (a superuser in the admin role) if there is none, and say how to log in.

The password comes from ADMIN_PASSWORD; without it one is generated once, kept in
$DATA_DIR/admin-password (mode 600) and printed, so a new user of `bin/run` can log in.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from dashboard.access import ADMIN, assign_role
from dashboard.user_audit import acting
from nightingale.env import env_str


class Command(BaseCommand):
    help = "Create the admin user (ADMIN_USERNAME / ADMIN_PASSWORD) when no superuser exists."

    def handle(self, *args, **options):
        User = get_user_model()
        username = env_str("ADMIN_USERNAME", "admin")
        password = env_str("ADMIN_PASSWORD")
        stored = settings.DATA_DIR / "admin-password"
        if User.objects.filter(is_superuser=True).exists():
            for admin in User.objects.filter(is_superuser=True).exclude(groups__name=ADMIN):
                with acting("command", note="manage.py ensure_admin"):
                    assign_role(admin, ADMIN)  # superusers made before the roles existed
            if not password and stored.exists() and User.objects.filter(username=username).exists():
                self.stdout.write(f"admin: log in as {username!r}, password in {stored}")
            return
        if not password:
            password = secrets.token_urlsafe(12)
            stored.write_text(password + "\n")
            stored.chmod(0o600)
            self.stdout.write(f"admin: created {username!r} with password {password} (kept in {stored})")
        else:
            self.stdout.write(f"admin: created {username!r} with the password from ADMIN_PASSWORD")
        with acting("command", note="manage.py ensure_admin"):
            assign_role(User.objects.create_superuser(username=username, email="", password=password), ADMIN)
