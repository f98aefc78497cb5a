"""The roles as groups with their permissions (see dashboard/access.py)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations, models

DASHBOARD = {
    "viewer": ["view_dashboard"],
    "analyst": ["view_dashboard", "act_on_sync"],
    "admin": ["view_dashboard", "act_on_sync", "manage_users"],
}
# Admins also use Django's admin site: users and groups, and the engine's records read-only.
ADMIN_MODELS = {
    "auth": {"user": ("add", "change", "delete", "view"), "group": ("view",)},
    "sync": "view",
    "observe": "view",
    "axes": "view",
}


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations ran (post_migrate); the groups need
    # them now.
    for config in apps.get_app_configs():
        config.models_module = True
        create_permissions(config, apps=apps, verbosity=0)
        config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in DASHBOARD.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="dashboard",
                                                         codename__in=codenames))
    admin = Group.objects.get(name="admin")
    for app_label, models_ in ADMIN_MODELS.items():
        permissions = Permission.objects.filter(content_type__app_label=app_label)
        if isinstance(models_, str):
            permissions = permissions.filter(codename__startswith=f"{models_}_")
            admin.permissions.add(*permissions)
            continue
        for model, actions in models_.items():
            admin.permissions.add(*permissions.filter(codename__in=[f"{a}_{model}" for a in actions]))


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(DASHBOARD)).delete()


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("sync", "0003_engine_invariants"),
        ("observe", "0001_initial"),
        ("axes", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Access",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
            ],
            options={
                "permissions": [
                    ("view_dashboard", "See every dashboard page"),
                    ("act_on_sync", "Retry and discard dead letters, resync, start reconciliations, resolve "
                                    "conflicts, acknowledge alerts"),
                    ("manage_users", "Manage users and their roles"),
                ],
                "managed": False,
                "default_permissions": (),
            },
        ),
        migrations.RunPython(create_roles, remove_roles),
    ]
