"""The engine's records in Django's admin site, read-only: every change to them goes through the
engine (audited, checked against the stores), never through a generic form. Audit entries in
particular can be neither edited nor deleted here."""

from django.apps import apps
from django.contrib import admin

from sync.models import AuditEntry


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        return {}  # not even the bulk "delete selected"


class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_name", "action", "target")
    list_filter = ("action",)
    search_fields = ("actor_name", "action", "target", "note")
    date_hierarchy = "at"


admin.site.register(AuditEntry, AuditEntryAdmin)
for app_label in ("sync", "observe"):
    for model in apps.get_app_config(app_label).get_models():
        if not admin.site.is_registered(model):
            admin.site.register(model, ReadOnlyAdmin)
