from django.urls import path

from dashboard.views import alerts, overview

urlpatterns = [
    path("", overview.home, name="home"),
    path("overview/live", overview.live, name="overview-live"),
    path("overview/charts", overview.charts, name="overview-charts"),
    path("alerts/", alerts.index, name="alerts"),
    path("alerts/banner", alerts.banner, name="alerts-banner"),
    path("alerts/<int:pk>/acknowledge", alerts.acknowledge, name="alert-acknowledge"),
]
