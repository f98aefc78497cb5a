"""Login throttling (django-axes): whose address a login comes from, and when it is locked out.

The address: behind TRUSTED_PROXY_COUNT reverse proxies that each append the address they were
reached from to CLIENT_IP_HEADER (X-Forwarded-For by default), the client is the address the
outermost trusted proxy appended — the TRUSTED_PROXY_COUNT-th from the right; anything further
left was written by the client and is not believed. With no proxy configured, or a request that
did not come through them (the header missing, too short or not an address), it is REMOTE_ADDR.

The lock-out counts failed logins in the last LOGIN_LOCKOUT_MINUTES two ways:

- per username and address: LOGIN_FAILURE_LIMIT failures lock that username *at that address*
  (the owner elsewhere is not locked out: nobody can lock `admin` out for everyone);
- per address, over all usernames: LOGIN_ADDRESS_FAILURE_LIMIT failures lock the address (a
  password sprayed across usernames is stopped).

A successful login clears that username's failures at that address only, never the address's
failures for other usernames (axes' own reset would clear those too, so a sprayer holding one
valid account could reset the count with it).
"""

from __future__ import annotations

import ipaddress

from axes.handlers.database import AxesDatabaseHandler
from django.conf import settings
from django.db.models import Sum


def _address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request) -> str | None:
    """The client's address (AXES_CLIENT_IP_CALLABLE)."""
    remote = request.META.get("REMOTE_ADDR")
    count = settings.TRUSTED_PROXY_COUNT
    if count:
        hops = request.META.get(settings.CLIENT_IP_META_KEY, "").split(",")
        if len(hops) >= count and (found := _address(hops[-count])):
            return found
    return remote


class LoginThrottle(AxesDatabaseHandler):
    """axes' database handler, with a limit per address beside the one per username + address."""

    def get_failures(self, request, credentials=None) -> int:
        # axes compares one number with AXES_FAILURE_LIMIT (= LOGIN_FAILURE_LIMIT): the pair's
        # failures, or that limit itself once the address has spent its own.
        by_address, by_pair = (attempts.aggregate(n=Sum("failures_since_start"))["n"] or 0
                               for attempts in self.get_user_attempts(request, credentials))
        if by_address >= settings.LOGIN_ADDRESS_FAILURE_LIMIT:
            return max(by_pair, settings.AXES_FAILURE_LIMIT)
        return by_pair

    def reset_user_attempts(self, request, credentials=None) -> int:
        _, by_pair = self.filter_user_attempts(request, credentials)
        count, _ = by_pair.delete()
        return count
