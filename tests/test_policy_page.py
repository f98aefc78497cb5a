"""The Policy page: every label of sync.policy as the engine applies it, read-only."""

import pytest

from sync.policy import POLICY, SENSITIVE_KEY_TERMS, synced_labels
from sync.policy import summary as policy_summary

pytestmark = pytest.mark.django_db


def test_every_label_is_shown_as_the_engine_applies_it(client, viewer, settings):
    settings.FRESHNESS_TARGETS = {"high": 42.0, "medium": 900.0, "low": 86400.0}
    client.force_login(viewer)
    response = client.get("/policy/")
    assert response.status_code == 200
    page = response.content.decode()
    for label in synced_labels():
        rule = POLICY[label]
        row = page.split(f'id="label-{label}"')[1].split("</tr>")[0]
        assert rule.priority.label.upper() in row and rule.write_mode.value in row
        for name, caption in rule.text_fields:
            assert f"<code>{name}</code>" in row and caption.replace("&", "&amp;") in row
        for name in rule.metadata_fields:
            assert f"<li><code>{name}</code></li>" in row
    kev = page.split('id="label-KEV"')[1].split("</tr>")[0]
    assert "42.0 s" in kev and "undo the graph write and fail" in kev
    assert "24.0 h" in page.split('id="label-Report"')[1].split("</tr>")[0]


def test_it_says_what_never_leaves_the_graph(client, viewer):
    client.force_login(viewer)
    page = client.get("/policy/").content.decode()
    never = page.split('id="never-heading"')[1]
    for label in ("Contact", "Deal", "Account"):
        assert f"<code>{label}</code>" in never
    for term in SENSITIVE_KEY_TERMS:
        assert f"<code>{term}</code>" in never
    assert "[e-mail redacted]" in never and "any label the policy does not name" in never


def test_the_page_follows_the_policy_not_a_copy(client, viewer, monkeypatch):
    from sync.policy import LabelPolicy, Priority, WriteMode

    extra = LabelPolicy("Campaign", True, "campaign", Priority.HIGH, WriteMode.WRITE_THROUGH,
                        text_fields=(("name", "Name"),), metadata_fields=("name", "started"),
                        description="A campaign <b>of</b> attacks.")
    monkeypatch.setitem(POLICY, "Campaign", extra)
    monkeypatch.setattr("sync.policy.labels.synced_labels", lambda: ("Campaign", "KEV"))
    client.force_login(viewer)
    page = client.get("/policy/").content.decode()
    assert 'id="label-Campaign"' in page and "A campaign &lt;b&gt;of&lt;/b&gt; attacks." in page
    assert 'id="label-Report"' not in page
    assert [row.label for row in policy_summary.labels()][:2] == ["Campaign", "KEV"]


def test_the_page_has_no_form(client, admin_user):
    client.force_login(admin_user)
    page = client.get("/policy/").content.decode()
    assert "<form method=\"post\"" not in page.split("<main")[1].split("</main>")[0]
    assert client.post("/policy/").status_code == 405
