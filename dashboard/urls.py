from django.urls import path

from dashboard.views import alerts, entities, overview, queue, reconciliation, resync, search

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
    path("entities/", entities.index, name="entities"),
    path("entities/<str:label>/<path:uid>", entities.detail, name="entity"),
    path("entity-record/<str:label>/<path:uid>", entities.record, name="entity-record"),
    path("resync/", resync.confirm, name="resync"),
    path("resync/start", resync.start, name="resync-start"),
    path("search/", search.index, name="search"),
]
