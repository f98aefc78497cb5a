"""The role groups and their permissions, kept complete after every `migrate` (and after the test
runner's flushes, which empty the tables and send post_migrate again).

dashboard/migrations/0001_roles.py creates the groups; this keeps them whole afterwards, so a
model added to the sync later is browsable by admins without another data migration.
"""

from __future__ import annotations

DASHBOARD = {
    "viewer": ["view_dashboard"],
    "analyst": ["view_dashboard", "act_on_sync"],
    "admin": ["view_dashboard", "act_on_sync", "manage_users"],
}
ADMIN_MODELS = {
    "auth": {"user": ("add", "change", "delete", "view"), "group": ("view",)},
    "sync": "view",
    "observe": "view",
    "axes": "view",
    "django_q": "view",  # schedules, tasks and the queue: a superuser's to change (dashboard/admin.py)
}


def ensure_roles(**kwargs) -> None:
    from django.contrib.auth.models import Group, Permission

    for role, codenames in DASHBOARD.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="dashboard", codename__in=codenames))
    admin = Group.objects.get(name="admin")
    for app_label, models in ADMIN_MODELS.items():
        permissions = Permission.objects.filter(content_type__app_label=app_label)
        if isinstance(models, str):
            admin.permissions.add(*permissions.filter(codename__startswith=f"{models}_"))
            continue
        for model, actions in models.items():
            admin.permissions.add(*permissions.filter(codename__in=[f"{a}_{model}" for a in actions]))
