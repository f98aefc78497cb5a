from django.db import models


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
