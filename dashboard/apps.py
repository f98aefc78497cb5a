from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_migrate, post_save, pre_save


class DashboardConfig(AppConfig):
    name = "dashboard"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model

        from dashboard import user_audit
        from dashboard.roles import ensure_roles

        # After the permissions are created (django.contrib.auth's own post_migrate runs first).
        post_migrate.connect(ensure_roles, sender=self, dispatch_uid="dashboard-ensure-roles")
        # Every change to a user's flags, groups or permissions is audited, whoever makes it.
        User = get_user_model()
        pre_save.connect(user_audit.flags_before_save, sender=User, dispatch_uid="dashboard-user-flags-before")
        post_save.connect(user_audit.flags_after_save, sender=User, dispatch_uid="dashboard-user-flags-after")
        m2m_changed.connect(user_audit.groups_changed, sender=User.groups.through, dispatch_uid="dashboard-user-groups")
        m2m_changed.connect(user_audit.permissions_changed, sender=User.user_permissions.through,
                            dispatch_uid="dashboard-user-permissions")
