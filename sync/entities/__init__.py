"""Entities as analysts look them up (read only).

- `lookup`: the list of sync records (search, filters, sort, pages) and one entity as each
  store holds it, the differences named.
- `timeline`: one entity's history across both stores, from what the engine records.

May import: `sync.models`, `sync.policy`, `sync.ids`, `sync.embedding`, `sync.stores`, `sync.audit`
(what of an audit entry people may read). Every property value they hand to a page has been through
the label's display allow-list (`sync.policy.display`): what the policy does not show is WITHHELD.
"""
