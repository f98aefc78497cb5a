from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DashboardConfig(AppConfig):
    name = "dashboard"

    def ready(self) -> None:
        from dashboard.roles import ensure_roles

        # After the permissions are created (django.contrib.auth's own post_migrate runs first).
        post_migrate.connect(ensure_roles, sender=self, dispatch_uid="dashboard-ensure-roles")
