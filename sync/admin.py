"""The engine's records in Django's admin site, read-only: every change to them goes through the
engine (audited, checked against the stores), never through a generic form. Audit entries in
particular can be neither edited nor deleted here. Node values (a conflict's sides, an audit
entry's before and after) are shown through the label's display allow-list, as on the dashboard."""

import json

from django.apps import apps
from django.contrib import admin

from sync.audit import shown_values
from sync.models import AuditEntry, Conflict
from sync.policy import shown_properties


def _json(values) -> str:
    return json.dumps(values, ensure_ascii=False, sort_keys=True, default=str)


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
    # A node's values as the audit page shows them (sync.audit.shown_values).
    exclude = ("before", "after")
    readonly_fields = ("shown_before", "shown_after")

    @admin.display(description="before")
    def shown_before(self, entry):
        return _json(shown_values(entry.action, entry.target, entry.before))

    @admin.display(description="after")
    def shown_after(self, entry):
        return _json(shown_values(entry.action, entry.target, entry.after))


class ConflictAdmin(ReadOnlyAdmin):
    """Both sides, the proposal and the resolution through the label's display allow-list, as on
    the Conflicts page (sync.policy.display): the admin site reveals nothing the dashboard withholds."""

    list_display = ("id", "kind", "label", "uid", "status", "rule", "created_at")
    list_filter = ("status", "kind", "label")
    search_fields = ("uid",)
    exclude = ("graph_side", "other_side", "proposal", "resolved_values")
    readonly_fields = ("shown_graph_side", "shown_other_side", "shown_proposal", "shown_resolved_values")

    @admin.display(description="graph side")
    def shown_graph_side(self, conflict):
        return _json(shown_properties(conflict.label, conflict.graph_side or {}))

    @admin.display(description="other side")
    def shown_other_side(self, conflict):
        return _json(shown_properties(conflict.label, conflict.other_side or {}))

    @admin.display(description="proposal")
    def shown_proposal(self, conflict):
        return _json(shown_properties(conflict.label, conflict.proposal or {}))

    @admin.display(description="resolved values")
    def shown_resolved_values(self, conflict):
        return _json(shown_properties(conflict.label, conflict.resolved_values or {}))


admin.site.register(AuditEntry, AuditEntryAdmin)
admin.site.register(Conflict, ConflictAdmin)
for app_label in ("sync", "observe"):
    for model in apps.get_app_config(app_label).get_models():
        if not admin.site.is_registered(model):
            admin.site.register(model, ReadOnlyAdmin)
