"""Neo4j, the source of truth, behind the GraphStore protocol (see sync.stores.base)."""

from __future__ import annotations

from neo4j import GraphDatabase
from neo4j.exceptions import AuthError, Neo4jError, ServiceUnavailable, SessionExpired

from sync.stores.base import PermanentStoreError, RetryableStoreError


class Neo4jGraphStore:
    def __init__(self, uri: str, user: str, password: str, database: str = "neo4j"):
        self.uri = uri
        self.database = database
        self.driver = GraphDatabase.driver(
            uri, auth=(user, password), connection_timeout=5, max_transaction_retry_time=15,
        )

    def close(self) -> None:
        self.driver.close()

    def ping(self) -> str:
        try:
            records, _, _ = self.driver.execute_query(
                "CALL dbms.components() YIELD name, versions, edition "
                "RETURN versions[0] AS version, edition",
                database_=self.database,
            )
        except AuthError as exc:
            raise PermanentStoreError(f"Neo4j refused the credentials: {exc.message}") from exc
        except (ServiceUnavailable, SessionExpired, OSError) as exc:
            raise RetryableStoreError(f"Neo4j at {self.uri} is unreachable: {exc}") from exc
        except Neo4jError as exc:
            raise PermanentStoreError(f"Neo4j error: {exc.message}") from exc
        row = records[0]
        return f"Neo4j {row['version']} {row['edition']}"
