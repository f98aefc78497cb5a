"""The sync policy: which labels reach the vector index, how fast, and carrying what.

Owns, one module each:
- `labels`: the per-label table (`POLICY`, `policy_for`, `synced_labels`), the enums a policy is
  made of (`WriteMode`, `VectorFailure`; `Priority` is the queue's, `sync.models.Priority`,
  re-exported here) and the guard on sensitive field names.
- `redact`: contact details (e-mail addresses, phone numbers) found and replaced in any value.
- `text`: HTML and hostile text turned into clean, storable text; cutting to size.
- `document`: what the vector index holds for an entity (`build_document`): text, chunks and the
  allow-listed metadata fitted to the store's limits; which uids may never travel (`uid_withheld`).
- `summary`: the policy as people read it (the Policy page, `GET /api/v1/policy`).
- `display`: what of a node the dashboard may show (`shown_properties`, `WITHHELD`): the label's
  display allow-list, decided by the policy, never by property names.

May import: `sync.ids`, `sync.embedding`, `sync.stores.base`, `sync.models` (for `Priority`),
Django settings. Nothing else of the engine: everything that syncs asks this package, never the
other way round. The names below are re-exported for importers; modules inside the package
import each other directly.
"""

from sync.policy.display import WITHHELD, is_withheld, may_show, shown_properties, shown_value
from sync.policy.document import (
    FIELD_MAX_CHARS,
    LIST_ITEM_MAX_CHARS,
    LIST_MAX_ITEMS,
    MAX_UID_CHARS,
    METADATA_BUDGET_BYTES,
    METADATA_LIMIT_BYTES,
    SNIPPET_MAX_CHARS,
    Chunk,
    Document,
    allowed_metadata,
    build_document,
    build_text,
    text_and_hash,
    uid_withheld,
)
from sync.policy.labels import (
    ENGINE_KEYS,
    POLICY,
    SENSITIVE_KEY_TERMS,
    LabelPolicy,
    Priority,
    VectorFailure,
    WriteMode,
    is_sensitive_key,
    policy_for,
    synced_labels,
)
from sync.policy.redact import (
    REDACTED_EMAIL,
    REDACTED_PHONE,
    has_contact_details,
    phone_regions,
    redact_contacts,
)
from sync.policy.text import ELLIPSIS, clean_text, html_to_text, truncate

__all__ = [
    "ELLIPSIS", "ENGINE_KEYS", "FIELD_MAX_CHARS", "LIST_ITEM_MAX_CHARS", "LIST_MAX_ITEMS", "MAX_UID_CHARS",
    "METADATA_BUDGET_BYTES", "METADATA_LIMIT_BYTES", "POLICY", "REDACTED_EMAIL", "REDACTED_PHONE",
    "SENSITIVE_KEY_TERMS", "SNIPPET_MAX_CHARS", "Chunk", "Document", "LabelPolicy", "Priority",
    "VectorFailure", "WriteMode", "allowed_metadata", "build_document", "build_text", "clean_text",
    "has_contact_details", "html_to_text", "is_sensitive_key", "phone_regions", "policy_for",
    "redact_contacts", "synced_labels", "text_and_hash", "truncate", "uid_withheld", "WITHHELD", "is_withheld", "may_show",
    "shown_properties", "shown_value",
]
