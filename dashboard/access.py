"""Who may do what on the dashboard: three roles, as Django groups (dashboard/migrations/0001_roles.py).

- **viewer** sees every page (`dashboard.view_dashboard`);
- **analyst** also acts on the sync: retry and discard dead letters, resync, start reconciliations,
  resolve conflicts, acknowledge alerts (`dashboard.act_on_sync`);
- **admin** also manages users and roles and uses Django's admin site (`dashboard.manage_users`,
  the auth models — never what only a superuser may change, see dashboard/admin.py — and the sync
  models and django-q2's task records read-only; `is_staff`).

Every page needs a login (django.contrib.auth's LoginRequiredMiddleware, so a view nobody
decorated is still protected); the decorators here add the role check, in the spirit of
`@login_required`. Mutations are POST only (a GET is 405), CSRF-checked by Django's middleware,
and a refused POST is answered 403 and written to the audit trail. Each decorated view carries
`view.access` (role, methods), which the URL-wide tests read to check every route.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps

from django.contrib.auth.models import Group
from django.http import HttpResponseNotAllowed
from django.shortcuts import render

from nightingale.permissions import ACT_ON_SYNC, MANAGE_USERS, VIEW_DASHBOARD
from sync.models import AuditEntry

VIEWER, ANALYST, ADMIN = "viewer", "analyst", "admin"
ROLES = (VIEWER, ANALYST, ADMIN)  # each role has the rights of those before it
PERMISSION = {VIEWER: VIEW_DASHBOARD, ANALYST: ACT_ON_SYNC, ADMIN: MANAGE_USERS}  # nightingale.permissions
DESCRIPTION = {
    VIEWER: "sees every page",
    ANALYST: "also retries and discards dead letters, resyncs, starts reconciliations, "
             "resolves conflicts and acknowledges alerts",
    ADMIN: "also manages users and roles and uses the Django admin site",
}


@dataclass(frozen=True)
class Rule:
    role: str
    methods: tuple[str, ...]  # the HTTP methods the view answers


def role_of(user) -> str | None:
    """The highest role the user holds, or None (a user in no group sees nothing)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    for role in reversed(ROLES):
        if user.has_perm(PERMISSION[role]):
            return role
    return None


def has_role(user, role: str) -> bool:
    held = role_of(user)
    return held is not None and ROLES.index(held) >= ROLES.index(role)


def assign_role(user, role: str) -> None:
    """Put the user in exactly one role group (admins are staff: they use Django's admin site)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    user.groups.remove(*Group.objects.filter(name__in=ROLES).exclude(name=role))
    user.groups.add(Group.objects.get(name=role))
    staff = role == ADMIN or user.is_superuser
    if user.is_staff != staff:
        user.is_staff = staff
        user.save(update_fields=["is_staff"])


def _refuse(request, role: str):
    """403, with a page saying which role is needed; a refused POST is audited."""
    held = role_of(request.user)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        AuditEntry.record(request.user, "access.denied", request.path[:1200],
                          after={"method": request.method, "needs": role, "has": held})
    return render(request, "403.html", {"needed": role, "held": held,
                                            "needed_description": DESCRIPTION[role]},
                  status=403)


def role_required(role: str, methods: tuple[str, ...] = ("GET", "HEAD")):
    """The view answers `methods` (others: 405) to users holding `role` or above (others: 403)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def decorator(view):
        @wraps(view)
        def checked(request, *args, **kwargs):
            if request.method not in methods:
                return HttpResponseNotAllowed(methods)
            if not has_role(request.user, role):
                return _refuse(request, role)
            return view(request, *args, **kwargs)

        checked.access = Rule(role, methods)
        return checked

    return decorator


def viewer_required(view):
    """A page every role may read (GET/HEAD)."""
    return role_required(VIEWER)(view)


def analyst_page(view):
    """A page only analysts and admins may read (a confirmation step before an action)."""
    return role_required(ANALYST)(view)


def analyst_action(view):
    """A mutation: POST only, analysts and admins."""
    return role_required(ANALYST, ("POST",))(view)


def admin_action(view):
    """A mutation for admins only (users and roles): POST only."""
    return role_required(ADMIN, ("POST",))(view)
