"""The APOC trigger that makes writes by other tools visible to change capture.

Installed by `Neo4jGraphStore.install_triggers` with `apoc.trigger.install` (run against the `system`
database; each database reloads its triggers every `apoc.trigger.refresh` ms, so a change takes
effect within ~1 s when that is set to 1000). It runs in the `before` phase, i.e. inside the writing
transaction just before it commits, so the stamps and tombstones commit or roll back with the write.

What APOC 5.26 hands a `before` trigger, as verified against the test server:
- `$createdNodes`, `$deletedNodes`: lists of nodes. A deleted node is a husk: `elementId(n)` works,
  but reading any property of it fails with "Node with id … has been deleted in this transaction"
  and that error aborts the user's transaction (TransactionHookFailed). So deleted nodes are
  filtered out with list comprehensions (evaluated in order) before anything reads a property.
- `$removedLabels` / `$assignedLabels`: {label: [node]} — deleted nodes appear under every label
  they had.
- `$removedNodeProperties`: {key: [{key, old, node}]} — a deleted node appears here with the old
  value of every property it had, which is where a tombstone's uid and version come from.
- `$assignedNodeProperties`: {key: [{key, old, new, node}]} — only for values that actually
  changed (`SET n.x = n.x` leaves no trace), including properties given at CREATE.
- The trigger's own writes do not fire triggers again, so there is no recursion to guard against;
  writes are still skipped when the transaction set `version` itself, which is how our own writes
  (which always set it) avoid being stamped twice.

Why the stamp may be `previous + 1µs` rather than `now`: the server clock ticks in milliseconds
here, and change capture reads strictly after `(updated_at, key)`. A second change to the same
node, or a delete/re-create of the same key, within one tick would otherwise reuse the stamp of
the row capture has already passed and be missed.
"""

from __future__ import annotations

TRIGGER_NAME = "nightingale_sync"

# `now` must be in scope. Microseconds because Python datetimes (our cursors) carry no more: a
# nanosecond stamp would never compare equal to the cursor that was read from it.
NOW = "datetime.truncate('microsecond', datetime())"
# The trigger's stamps read the real-time clock when they are computed, not `datetime()` (the
# statement's start): a stamp must come close before the commit that makes it visible, since
# capture re-reads only its overlap window behind the cursor, and the trigger runs last in the
# transaction. With the statement clock, the first write after a Neo4j start (which compiles the
# trigger: 9 s here) was stamped further back than the overlap and never captured
# (tests/faults/test_neo4j.py). Our own writes keep NOW (one stamp a statement: a bulk import is a
# tie) and are queued by the write path itself.
TRIGGER_NOW = "datetime.truncate('microsecond', datetime.realtime())"


def stamp_after(previous: str) -> str:
    """Cypher for a stamp that is `now`, but strictly later than `previous` when that is a datetime."""
    return (
        f"CASE WHEN {previous} IS :: ZONED DATETIME AND {previous} >= now "
        f"THEN {previous} + duration({{microseconds: 1}}) ELSE now END"
    )


def as_int(value: str) -> str:
    """Cypher for `value` if it is an integer, else 0: another tool's `version: "3"` would make
    `version + 1` a string concatenation ("31")."""
    return f"coalesce(CASE WHEN {value} IS :: INTEGER THEN {value} END, 0)"


def next_version(current: str, tombstone: str) -> str:
    """Cypher for the version after `current`, continuing past a tombstone of the same key."""
    return (
        f"CASE WHEN {as_int(tombstone)} > {as_int(current)} "
        f"THEN {as_int(tombstone)} ELSE {as_int(current)} END + 1"
    )


def later(a: str, b: str) -> str:
    """Cypher for the later (greater) of two possibly-null values."""
    return f"CASE WHEN {a} IS NULL OR {b} > {a} THEN {b} ELSE {a} END"


# Tombstones are looked up by key, one seek of the (label, uid) constraint each: tombstones are kept
# (for their versions), so a scan of them all would grow with every delete ever made — at 6,000 a
# 1,000-node DETACH DELETE ran out of transaction memory. (MERGE per key was slow in bulk — every
# MERGE walks the transaction state — but a MATCH seek is not: 3,000 deletes take about 1 s with
# 0 or 20,000 tombstones present.)

# Parameters: $labels (the synced labels) comes from the trigger's `params`; the $created…/$removed…
# maps are APOC's. The maps built first are keyed by element id, so lookups stay O(1) in bulk.
TRIGGER_STATEMENT = f"""
WITH apoc.map.fromPairs([n IN $deletedNodes | [elementId(n), true]]) AS deleted,
     apoc.map.fromPairs([e IN coalesce($assignedNodeProperties.version, []) | [elementId(e.node), true]])
       AS versioned,
     apoc.map.fromPairs([e IN coalesce($assignedNodeProperties.updated_at, []) | [elementId(e.node), true]])
       AS restamped,
     apoc.map.fromPairs(
       [n IN $createdNodes | [elementId(n), true]] +
       [e IN coalesce($assignedNodeProperties.uid, []) | [elementId(e.node), true]] +
       apoc.coll.flatten([l IN $labels | [n IN coalesce($assignedLabels[l], []) | [elementId(n), true]]])
     ) AS appeared,
     apoc.map.fromPairs(
       [e IN coalesce($removedNodeProperties.uid, []) | [elementId(e.node), e.old]] +
       [e IN coalesce($assignedNodeProperties.uid, []) WHERE e.old IS NOT NULL | [elementId(e.node), e.old]]
     ) AS oldUid,
     apoc.map.fromPairs(
       [e IN coalesce($removedNodeProperties.version, []) | [elementId(e.node), e.old]] +
       [e IN coalesce($assignedNodeProperties.version, []) WHERE e.old IS NOT NULL | [elementId(e.node), e.old]]
     ) AS oldVersion,
     apoc.map.fromPairs(
       [e IN coalesce($removedNodeProperties.updated_at, []) | [elementId(e.node), e.old]] +
       [e IN coalesce($assignedNodeProperties.updated_at, []) WHERE e.old IS NOT NULL | [elementId(e.node), e.old]]
     ) AS oldStamp

// Keys that stopped existing: a synced node deleted, a synced label removed from a live node, or the
// uid of a live synced node changed or removed. `version` is the tombstone's: the last one + 1.
CALL (deleted, oldUid, oldVersion, oldStamp) {{
  CALL (deleted, oldUid, oldVersion, oldStamp) {{
    UNWIND $labels AS label
    UNWIND [n IN coalesce($removedLabels[label], []) WHERE deleted[elementId(n)]] AS n
    RETURN label, oldUid[elementId(n)] AS uid, oldVersion[elementId(n)] AS version,
           oldStamp[elementId(n)] AS stamp
    UNION ALL
    UNWIND $labels AS label
    UNWIND [n IN coalesce($removedLabels[label], []) WHERE deleted[elementId(n)] IS NULL] AS n
    RETURN label, coalesce(oldUid[elementId(n)], n.uid) AS uid,
           coalesce(oldVersion[elementId(n)], n.version) AS version,
           coalesce(oldStamp[elementId(n)], n.updated_at) AS stamp
    UNION ALL
    UNWIND [e IN coalesce($assignedNodeProperties.uid, []) + coalesce($removedNodeProperties.uid, [])
            WHERE e.old IS NOT NULL AND deleted[elementId(e.node)] IS NULL] AS e
    WITH e WHERE e.new IS NULL OR e.old <> e.new
    UNWIND [l IN labels(e.node) WHERE l IN $labels] AS label
    RETURN label, e.old AS uid, coalesce(oldVersion[elementId(e.node)], e.node.version) AS version,
           coalesce(oldStamp[elementId(e.node)], e.node.updated_at) AS stamp
  }}
  WITH label, uid, max(version) AS version, max(stamp) AS stamp
  WHERE uid IS :: STRING AND uid <> ''
  RETURN collect({{label: label, uid: uid, key: label + ':' + uid, version: {as_int("version")} + 1,
                  stamp: stamp}}) AS gone
}}

// Live nodes of synced labels this transaction touched without setting `version` (our own writes
// always set it), with the keys that appeared (created, labelled or renamed) and may supersede a
// tombstone.
CALL (deleted, versioned, appeared) {{
  WITH deleted, versioned, appeared,
       $createdNodes
       + apoc.coll.flatten([k IN keys($assignedNodeProperties) | [e IN $assignedNodeProperties[k] | e.node]])
       + apoc.coll.flatten([k IN keys($removedNodeProperties) | [e IN $removedNodeProperties[k] | e.node]])
       + apoc.coll.flatten([k IN keys($assignedLabels) | $assignedLabels[k]])
       + apoc.coll.flatten([k IN keys($removedLabels) | $removedLabels[k]]) AS touched
  // toSet, not WITH DISTINCT: a DISTINCT row would hold (and be charged for) the whole `appeared` map,
  // which ran a 3000-node CREATE past the server's transaction memory limit.
  UNWIND apoc.coll.toSet([n IN touched WHERE deleted[elementId(n)] IS NULL AND versioned[elementId(n)] IS NULL])
    AS n
  WITH n, appeared, [l IN labels(n) WHERE l IN $labels] AS synced
  WHERE size(synced) > 0
  WITH n, CASE WHEN appeared[elementId(n)] AND n.uid IS :: STRING THEN synced ELSE [] END AS appearedAs
  RETURN collect({{node: n, keys: [l IN appearedAs | l + ':' + n.uid]}}) AS stamped,
         apoc.coll.flatten(collect([l IN appearedAs | [l, n.uid]])) AS appearing
}}

// Existing tombstones of every key involved, looked up once.
WITH restamped, oldStamp, gone, stamped,
     apoc.map.fromPairs([key IN appearing | [key[0] + ':' + key[1], true]]) AS appearing,
     [g IN gone | [g.label, g.uid]] + appearing AS wanted
CALL (wanted) {{
  CALL (wanted) {{
    UNWIND wanted AS key
    MATCH (t:_SyncTombstone {{label: key[0], uid: key[1]}})
    RETURN t
  }}
  RETURN apoc.map.fromPairs(collect([t.label + ':' + t.uid, t])) AS tombs
}}

// Record the tombstones. A key deleted and re-created in this same transaction is an update, not a
// delete. Our own delete_entity has recorded the same tombstone already: keep its stamp.
CALL (gone, appearing, tombs) {{
  UNWIND [g IN gone WHERE appearing[g.key] IS NULL] AS g
  WITH g, tombs[g.key] AS t, {TRIGGER_NOW} AS now
  CALL (g, t, now) {{
    WITH g, t, now WHERE t IS NULL
    CREATE (x:_SyncTombstone {{label: g.label, uid: g.uid, version: g.version}})
    SET x.updated_at = {stamp_after("g.stamp")}
  }}
  CALL (g, t, now) {{
    WITH g, t, now, {later("g.stamp", "t.updated_at")} AS previous
    WHERE t IS NOT NULL AND coalesce(t.version, -1) <> g.version
    SET t.updated_at = {stamp_after("previous")}, t.version = g.version
  }}
}}

// Stamp. A node whose key appeared supersedes (deletes) the key's tombstone and continues its
// version; a foreign writer's own updated_at is not trusted as the base of the stamp.
CALL (stamped, tombs, gone, restamped, oldStamp) {{
  WITH stamped, tombs, restamped, oldStamp, apoc.map.fromPairs([g IN gone | [g.key, g]]) AS goneByKey
  UNWIND stamped AS s
  WITH s.node AS n, restamped, oldStamp,
       [k IN s.keys WHERE tombs[k] IS NOT NULL | tombs[k]] AS superseded,
       [k IN s.keys WHERE goneByKey[k] IS NOT NULL | goneByKey[k]] AS replaced
  WITH n, superseded,
       reduce(v = null, x IN [t IN superseded | t.version] + [g IN replaced | g.version] |
              {later("v", "x")}) AS tombVersion,
       reduce(v = CASE WHEN restamped[elementId(n)] THEN oldStamp[elementId(n)] ELSE n.updated_at END,
              x IN [t IN superseded | t.updated_at] + [g IN replaced | g.stamp] | {later("v", "x")}) AS previous,
       {TRIGGER_NOW} AS now
  SET n.version = {next_version("n.version", "tombVersion")},
      n.updated_at = {stamp_after("previous")}
  FOREACH (t IN superseded | DELETE t)
}}
"""
