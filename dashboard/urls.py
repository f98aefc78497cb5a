from django.urls import path

from dashboard.views import alerts, api, audit, overview, policy, queue, reconciliation

# Each page's URL name is also its entry in the navigation (dashboard/context.py NAVIGATION).
urlpatterns = [
    path("", overview.home, name="home"),
    path("overview/live", overview.live, name="overview-live"),
    path("overview/charts", overview.charts, name="overview-charts"),
    path("queue/", queue.index, name="queue"),
    path("queue/live", queue.live, name="queue-live"),
    path("queue/dead/", queue.dead_letters, name="queue-dead"),
    path("queue/dead/confirm", queue.confirm, name="queue-dead-confirm"),
    path("queue/dead/<str:action>", queue.act, name="queue-dead-act"),
    path("reconciliation/", reconciliation.index, name="reconciliation"),
    path("reconciliation/start", reconciliation.start, name="reconciliation-start"),
    path("reconciliation/<int:pk>/", reconciliation.detail, name="reconciliation-run"),
    path("reconciliation/<int:pk>/progress", reconciliation.progress, name="reconciliation-progress"),
    path("reconciliation/<int:pk>/resync", reconciliation.resync, name="reconciliation-resync"),
    path("alerts/", alerts.index, name="alerts"),
    path("alerts/banner", alerts.banner, name="alerts-banner"),
    path("alerts/<int:pk>/acknowledge", alerts.acknowledge, name="alert-acknowledge"),
    path("audit/", audit.index, name="audit"),
    path("audit/export.csv", audit.export, name="audit-export"),
    path("policy/", policy.index, name="policy"),
    # The JSON API (bearer tokens; docs/api.md). URL names start with "api-".
    path("api/v1/whoami", api.whoami, name="api-whoami"),
    path("api/v1/audit", api.audit_entries, name="api-audit"),
    path("api/v1/policy", api.policy, name="api-policy"),
    path("api/v1/dead-letters/<str:action>", api.dead_letters, name="api-dead-letters"),
    path("api/v1/reconciliations", api.reconciliations, name="api-reconciliations"),
    path("api/v1/alerts/<int:pk>/acknowledge", api.acknowledge, name="api-alert-acknowledge"),
    path("api/v1/resync", api.resync, name="api-resync"),
    path("api/v1/conflicts/<int:pk>/resolve", api.resolve, name="api-conflict-resolve"),
    path("api/v1/conflicts/<int:pk>/dismiss", api.dismiss, name="api-conflict-dismiss"),
]
