"""Users in Django's admin site: a role change made there (the user's groups) is audited like
`manage.py set_role`, naming the admin who made it; so is deleting a user."""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from dashboard.access import ROLES, role_of
from sync.models import AuditEntry

User = get_user_model()


def _roles(user) -> list[str]:
    return sorted(user.groups.filter(name__in=ROLES).values_list("name", flat=True)) if user.pk else []


class AuditedUserAdmin(UserAdmin):
    def save_related(self, request, form, formsets, change):
        user = form.instance
        before = getattr(user, "_roles_before", [])
        held_before = getattr(user, "_role_before", None)
        super().save_related(request, form, formsets, change)
        after = _roles(user)
        if after != before:
            AuditEntry.record(request.user, "user.role", f"user:{user.get_username()}",
                              before={"role": held_before, "groups": before},
                              after={"role": role_of(User.objects.get(pk=user.pk)), "groups": after},
                              note="changed in the admin site")

    def save_model(self, request, obj, form, change):
        if change:
            stored = User.objects.get(pk=obj.pk)
            obj._roles_before, obj._role_before = _roles(stored), role_of(stored)
        super().save_model(request, obj, form, change)
        if not change:
            AuditEntry.record(request.user, "user.create", f"user:{obj.get_username()}",
                              note="created in the admin site")

    def delete_model(self, request, obj):
        AuditEntry.record(request.user, "user.delete", f"user:{obj.get_username()}",
                          before={"role": role_of(obj), "groups": _roles(obj)}, note="deleted in the admin site")
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for user in queryset:
            AuditEntry.record(request.user, "user.delete", f"user:{user.get_username()}",
                              before={"role": role_of(user), "groups": _roles(user)}, note="deleted in the admin site")
        super().delete_queryset(request, queryset)


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)
