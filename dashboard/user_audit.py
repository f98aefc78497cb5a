"""Every change to what a user may do is audited, whoever makes it and however: the flags
(`is_superuser`, `is_staff`, `is_active`), the groups (the role) and the user's own permissions.

The receivers here listen to the User model's own signals (its save, and the m2m changes of its
groups and permissions, from either side), so the admin site, the commands, a shell or a data
migration cannot go around them. `acting(actor, note)` names who acts — the admin site its user,
a command itself; "system" when nobody did — and gathers the changes made inside it into one
entry per user and kind, written in the same transaction as the change:

- `user.role`: the groups, with the role before and after;
- `user.flags`: the flags that changed;
- `user.permissions`: the user's own permissions (`app_label.codename`).

A user created without privileges is no change (`user.create` records the creation); one created
as a superuser or staff is.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import transaction

from dashboard.access import role_of
from sync.models import AuditEntry

FLAGS = ("is_superuser", "is_staff", "is_active")
KINDS = {"groups": "user.role", "flags": "user.flags", "permissions": "user.permissions"}


@dataclass
class Changes:
    actor: object
    note: str = ""
    # (kind, user pk) -> [username, state before, state after]
    seen: dict[tuple[str, int], list] = field(default_factory=dict)

    def before(self, kind: str, user, state) -> None:
        self.seen.setdefault((kind, user.pk), [user.get_username(), state, state])

    def after(self, kind: str, user, state) -> None:
        entry = self.seen.setdefault((kind, user.pk), [user.get_username(), None, None])
        entry[2] = state

    def write(self) -> None:
        for (kind, _), (username, before, after) in self.seen.items():
            if before == after:
                continue
            if kind == "flags":
                changed = [name for name in FLAGS if (before or {}).get(name) != after.get(name)]
                before = {name: (before or {}).get(name, False) for name in changed}
                after = {name: after[name] for name in changed}
            AuditEntry.record(self.actor, KINDS[kind], f"user:{username}", before=before, after=after,
                              note=self.note)
        self.seen.clear()


_ACTING: ContextVar[Changes | None] = ContextVar("user_changes", default=None)
# Changes made outside `acting`: the state a pre_* signal saw, until its post_* signal.
_PENDING: ContextVar[dict | None] = ContextVar("user_changes_pending", default=None)


@contextlib.contextmanager
def acting(actor, note: str = ""):
    """Changes to users made inside are audited as made by `actor`, one entry per user and kind,
    in the same transaction. Nested, the outermost names the actor."""
    if _ACTING.get() is not None:
        yield
        return
    changes = Changes(actor, note)
    with transaction.atomic():
        token = _ACTING.set(changes)
        try:
            yield
        finally:
            _ACTING.reset(token)
        changes.write()


def _pending() -> dict:
    pending = _PENDING.get()
    if pending is None:
        pending = {}
        _PENDING.set(pending)
    return pending


def _seen(kind: str, user, state, phase: str) -> None:
    changes = _ACTING.get()
    if changes is not None:
        getattr(changes, phase)(kind, user, state)
        return
    pending = _pending()
    if phase == "before":
        pending[(kind, user.pk)] = state
        return
    once = Changes("system", "not made through the admin site or a command")
    once.before(kind, user, pending.pop((kind, user.pk), None))
    once.after(kind, user, state)
    once.write()


def _groups(user) -> dict:
    fresh = get_user_model().objects.get(pk=user.pk)  # no permission cache of the caller's instance
    return {"role": role_of(fresh), "groups": sorted(fresh.groups.values_list("name", flat=True))}


def _permissions(user) -> list[str]:
    return sorted(f"{app}.{codename}" for app, codename in
                  user.user_permissions.values_list("content_type__app_label", "codename"))


def _flags(user) -> dict:
    return {name: getattr(user, name) for name in FLAGS}


def _other_fields(raw: bool, update_fields) -> bool:
    """Loading fixtures, or a save of other fields only (the last login)."""
    return raw or (update_fields is not None and not set(update_fields) & set(FLAGS))


def flags_before_save(sender, instance, raw=False, update_fields=None, **kwargs) -> None:
    stored = None
    if instance.pk is not None and not _other_fields(raw, update_fields):
        stored = sender.objects.filter(pk=instance.pk).values(*FLAGS).first()
    instance._flags_stored = stored


def flags_after_save(sender, instance, created, raw=False, update_fields=None, **kwargs) -> None:
    if _other_fields(raw, update_fields):
        return
    # A new user starts unprivileged: being created a superuser or staff is a change.
    before = getattr(instance, "_flags_stored", None) or {
        "is_superuser": False, "is_staff": False, "is_active": instance.is_active}
    _seen("flags", instance, before, "before")
    _seen("flags", instance, _flags(instance), "after")


def _members_changed(kind: str, state):
    def receiver(sender, instance, action, reverse, pk_set, **kwargs) -> None:
        phase = {"pre_add": "before", "pre_remove": "before", "pre_clear": "before",
                 "post_add": "after", "post_remove": "after", "post_clear": "after"}[action]
        if not reverse:
            users = [instance]
        elif pk_set is None:  # a group's or a permission's users cleared: who they were
            if phase == "before":
                users = _pending()[("cleared", id(instance))] = list(instance.user_set.all())
            else:
                users = _pending().pop(("cleared", id(instance)), [])
        else:
            users = list(get_user_model().objects.filter(pk__in=pk_set))
        for user in users:
            _seen(kind, user, state(user), phase)

    return receiver


groups_changed = _members_changed("groups", _groups)
permissions_changed = _members_changed("permissions", _permissions)
