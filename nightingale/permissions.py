"""The roles' permission names. dashboard.access defines the roles (viewer, analyst, admin) and
maps each to its permission from here; the engine's own views and commands (/metrics, the probes'
details, `--user`) check the same names, and may not import the UI. Imports nothing."""

VIEW_DASHBOARD = "dashboard.view_dashboard"  # viewer and above
ACT_ON_SYNC = "dashboard.act_on_sync"  # analyst and above
MANAGE_USERS = "dashboard.manage_users"  # admin


def holds(user, permission: str) -> bool:
    """Whether a logged-in, active user holds the permission (through a role, or as a superuser)."""
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.has_perm(permission))
