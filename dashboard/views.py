from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from sync.observe.health import check_services


@login_required
def home(request):
    return render(request, "dashboard/home.html", {"services": check_services()})
