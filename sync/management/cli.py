"""What the management commands that act for a person share, in whichever app they live: the
engine's commands use it, so it lives in the engine, and the UI's commands import it from here."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError


def acting_user(username: str, default: str = "command"):
    """The user `--user NAME` names, for the audit trail; `default` (the command's own name)
    when no name was given. An unknown name is a CommandError."""
    if not username:
        return default
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"there is no user {username!r}")
    return user
