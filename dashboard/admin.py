"""Users and django-q2's tasks in Django's admin site.

Users: what only a superuser may change — `is_superuser`, `is_staff`, a user's own permissions,
membership of groups other than the roles, and any superuser's account (password included) —
is read-only for everyone else, and refused when saved as well as left out of the form, so a
forged POST changes nothing (403, audited as `access.denied`). `is_staff` follows the role (the
admin role uses this site) when someone else changes a user's groups. Every change to a user's
flags, groups or permissions is audited by dashboard.user_audit, naming the admin who made it;
so are creating and deleting a user.

django-q2's schedules, tasks and queue are read-only for everyone but superusers (a task names
a function to run), and a schedule's function is one of the project's tasks, chosen from a list
(sync.tasks.TASKS; sync.cluster checks again when it is saved, enqueued and run).
"""

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django_q import admin as q_admin
from django_q.models import Failure, OrmQ, Schedule, Success

from dashboard.access import ADMIN, ROLES, role_of
from dashboard.user_audit import acting
from sync.cluster import allowed_tasks
from sync.models import AuditEntry

User = get_user_model()
SUPERUSER_ONLY = ("is_superuser", "is_staff", "user_permissions")


def _roles(user) -> list[str]:
    return sorted(user.groups.filter(name__in=ROLES).values_list("name", flat=True)) if user.pk else []


class RefusedChange(Exception):
    """A change only a superuser may make, found when saving (the transaction is rolled back)."""

    def __init__(self, what: list[str]):
        super().__init__(f"only a superuser may change {', '.join(what)}")
        self.what = what


class AuditedUserAdmin(UserAdmin):
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            with acting(request.user, note="in the admin site"):
                return super().changeform_view(request, object_id, form_url, extra_context)
        except RefusedChange as exc:
            AuditEntry.record(request.user, "access.denied", request.path[:1200],
                              after={"method": request.method, "needs": "superuser", "has": role_of(request.user),
                                     "fields": exc.what})
            raise PermissionDenied(str(exc)) from None

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else fields + [f for f in SUPERUSER_ONLY if f not in fields]

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "groups" and not request.user.is_superuser:
            kwargs["queryset"] = db_field.related_model.objects.filter(name__in=ROLES)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def has_change_permission(self, request, obj=None):
        # A superuser's account (its password too) is a superuser's to change.
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        if not request.user.is_superuser:
            stored = User.objects.filter(pk=obj.pk).values("is_superuser", "is_staff").first() if change else None
            stored = stored or {"is_superuser": False, "is_staff": False}
            changed = [name for name, value in stored.items() if getattr(obj, name) != value]
            if changed:
                raise RefusedChange(changed)
        super().save_model(request, obj, form, change)
        if not change:
            AuditEntry.record(request.user, "user.create", f"user:{obj.get_username()}",
                              note="created in the admin site")

    def save_related(self, request, form, formsets, change):
        user = form.instance
        if request.user.is_superuser:
            super().save_related(request, form, formsets, change)
            return
        kept = self._superuser_only_memberships(user)
        if "groups" in form.cleaned_data:
            # The form offers the roles only: the user's other groups stay as they are.
            form.cleaned_data["groups"] = [*form.cleaned_data["groups"], *user.groups.exclude(name__in=ROLES)]
        super().save_related(request, form, formsets, change)
        if self._superuser_only_memberships(user) != kept:
            raise RefusedChange(["user_permissions or groups other than the roles"])
        fresh = User.objects.get(pk=user.pk)
        staff = role_of(fresh) == ADMIN or fresh.is_superuser
        if fresh.is_staff != staff:
            fresh.is_staff = staff
            fresh.save(update_fields=["is_staff"])

    @staticmethod
    def _superuser_only_memberships(user) -> tuple:
        return (sorted(user.user_permissions.values_list("pk", flat=True)),
                sorted(user.groups.exclude(name__in=ROLES).values_list("pk", flat=True)))

    def delete_model(self, request, obj):
        AuditEntry.record(request.user, "user.delete", f"user:{obj.get_username()}",
                          before={"role": role_of(obj), "groups": _roles(obj)}, note="deleted in the admin site")
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        if not request.user.is_superuser and queryset.filter(is_superuser=True).exists():
            raise PermissionDenied("only a superuser may delete a superuser")
        for user in queryset:
            AuditEntry.record(request.user, "user.delete", f"user:{user.get_username()}",
                              before={"role": role_of(user), "groups": _roles(user)}, note="deleted in the admin site")
        super().delete_queryset(request, queryset)


class SuperuserOnly:
    """django-q2's admin pages: a superuser's to change; others (with a view permission) only look."""

    def has_add_permission(self, request, *args):
        return request.user.is_superuser and super().has_add_permission(request, *args)

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_delete_permission(request, obj)

    def get_actions(self, request):
        # "resubmit" enqueues the task again: a change, whatever permission it declares.
        return super().get_actions(request) if request.user.is_superuser else {}


class ScheduleForm(forms.ModelForm):
    """A schedule's function is one of the project's tasks, chosen from the list; no result hook."""

    func = forms.ChoiceField(choices=())
    hook = forms.CharField(required=False, disabled=True, help_text="result hooks are not allowed")

    class Meta:
        model = Schedule
        fields = ("name", "func", "hook", "args", "kwargs", "schedule_type", "minutes", "repeats", "next_run", "cron",
                  "cluster", "intended_date_kwarg")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["func"].choices = [(name, name) for name in sorted(allowed_tasks())]


class ScheduleAdmin(SuperuserOnly, q_admin.ScheduleAdmin):
    form = ScheduleForm


class SuccessAdmin(SuperuserOnly, q_admin.TaskAdmin):
    pass


class FailureAdmin(SuperuserOnly, q_admin.FailAdmin):
    pass


class QueueAdmin(SuperuserOnly, q_admin.QueueAdmin):
    pass


for model, model_admin in ((Schedule, ScheduleAdmin), (Success, SuccessAdmin), (Failure, FailureAdmin),
                           (OrmQ, QueueAdmin)):
    if admin.site.is_registered(model):  # the queue only on the ORM broker, as django-q2 does
        admin.site.unregister(model)
        admin.site.register(model, model_admin)

if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)
