"""A URLconf for the access tests: the project's URLs plus one view per decorator."""

from django.http import HttpResponse
from django.urls import include, path

from dashboard.access import analyst_action, analyst_page, viewer_required


@viewer_required
def read(request):
    return HttpResponse("read")


@analyst_page
def confirm(request):
    return HttpResponse("confirm")


@analyst_action
def act(request):
    return HttpResponse("acted")


urlpatterns = [
    path("test-access/read", read),
    path("test-access/confirm", confirm),
    path("test-access/act", act),
    path("", include("nightingale.urls")),
]
