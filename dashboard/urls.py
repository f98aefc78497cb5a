from django.urls import path

from dashboard.views import overview

# Each page's URL name is also its entry in the navigation (dashboard/context.py NAVIGATION).
urlpatterns = [
    path("", overview.home, name="home"),
]
