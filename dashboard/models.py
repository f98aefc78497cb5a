from django.db import models

from nightingale.tokens import BearerToken


class Access(models.Model):
    """No table: the holder of the dashboard's own permissions, which the role groups are given
    (dashboard/migrations/0001_roles.py; the roles are described in dashboard/access.py)."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_dashboard", "See every dashboard page"),
            ("act_on_sync", "Retry and discard dead letters, resync, start reconciliations, resolve "
                            "conflicts, acknowledge alerts"),
            ("manage_users", "Manage users and their roles"),
        ]

    def __str__(self) -> str:
        return "dashboard access"


class ApiToken(BearerToken):
    """A bearer token for the JSON API, acting as its user with that user's role at the time of
    each request (dashboard.tokens). Only a SHA-256 digest of the token is stored: the token
    itself is shown once, when it is made (`manage.py api_token create`)."""

    user = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="api_tokens")

    def __str__(self) -> str:
        return f"{self.prefix}… {self.name} ({self.user.get_username()})"
