"""The equivalent of a dashboard action outside the UI, shown on its confirmation: the
`manage.py` line and the `curl` call of the JSON API (docs/api.md). Pages build both here and
show them with templates/partials/equivalent.html, so every page says it the same way."""

from __future__ import annotations

import json
import shlex

API_BASE = "$NIGHTINGALE_URL"  # the dashboard's address, e.g. https://sync.example.org
TOKEN = "$NIGHTINGALE_TOKEN"  # a token of the user (manage.py api_token create USER --name WHAT)


def curl(path: str, data: dict | None = None) -> str:
    """`curl` for a POST of `data` as JSON to `path` (e.g. /api/v1/resync)."""
    parts = [f'curl -X POST "{API_BASE}{path}"', f'-H "Authorization: Bearer {TOKEN}"']
    if data is not None:
        parts += ["-H 'Content-Type: application/json'",
                  "-d " + shlex.quote(json.dumps(data, ensure_ascii=False, separators=(", ", ": ")))]
    return " ".join(parts)


def manage(*args: str, user=None) -> str:
    """A `manage.py` line, each argument quoted for a POSIX shell, acting as `user` (audited)."""
    words = ["manage.py", *args]
    if user is not None and getattr(user, "pk", None):
        words += ["--user", user.get_username()]
    return " ".join(shlex.quote(w) if w != "manage.py" else w for w in words)
