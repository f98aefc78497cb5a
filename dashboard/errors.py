"""Error pages in the dashboard's own layout (Django's built-in CSRF page carries inline styles,
which the Content-Security-Policy refuses)."""

from django.shortcuts import render


def csrf_failure(request, reason=""):
    return render(request, "403.html", {"csrf_reason": reason}, status=403)
