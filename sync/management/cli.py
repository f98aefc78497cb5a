"""What the management commands that act for a person share, in whichever app they live: the
engine's commands use it, so it lives in the engine, and the UI's commands import it from here."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from nightingale.permissions import ACT_ON_SYNC, holds


def acting_user(username: str, default: str = "command", *, needs: str | None = None):
    """The user `--user NAME` names, for the audit trail; `default` (the command's own name)
    when no name was given. An unknown name is a CommandError; so is, when the action `needs` a
    permission (ACT_ON_SYNC: what the pages and the API ask of the same action), an inactive user
    or one without it: the trail never names someone as doing what they may not do."""
    if not username:
        return default
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"there is no user {username!r}")
    if needs is not None and not holds(user, needs):
        raise CommandError(f"{username} may not do this: it needs the analyst role or above "
                           f"(manage.py set_role {username} analyst)" if needs == ACT_ON_SYNC
                           else f"{username} may not do this: it needs the permission {needs}")
    return user
