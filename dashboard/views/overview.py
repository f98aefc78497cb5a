from django.shortcuts import render

from dashboard.access import viewer_required
from sync.observe.health import check_services


@viewer_required
def home(request):
    return render(request, "dashboard/home.html", {"services": check_services()})
