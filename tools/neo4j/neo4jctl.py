#!/usr/bin/env python3
"""Run a local Neo4j 5.26 LTS Community (+ APOC core) fetched from Maven Central.

    python tools/neo4j/neo4jctl.py start|stop|status|restart|wipe

Bolt only, on 127.0.0.1 at the port of NEO4J_URI (default 7687), authentication on with
NEO4J_USER/NEO4J_PASSWORD, HTTP and routing connectors off, usage reporting off, small memory,
APOC triggers enabled. Everything lives under $NEO4J_LOCAL_DIR (default $DATA_DIR/neo4j, where
DATA_DIR defaults to ./var). Needs Java 17 and Maven on PATH; with a Neo4j elsewhere, point
NEO4J_URI at it and skip this tool.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import javaserver  # noqa: E402 — tools/javaserver.py, beside this tool's folder

DEFAULT_PASSWORD = "nightingale-local"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
JVM_FLAGS = [
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--enable-native-access=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Djdk.nio.maxCachedBufferSize=1024",
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
    "-XX:+ExitOnOutOfMemoryError",
    "-Dlog4j2.disable.jmx=true",
    "-Dfile.encoding=UTF-8",
]
ELSEWHERE = "point NEO4J_URI at an existing Neo4j server"


class Layout(javaserver.ServerLayout):
    def __init__(self) -> None:
        uri = os.environ.get("NEO4J_URI") or "bolt://127.0.0.1:7687"
        root = Path(os.environ.get("NEO4J_LOCAL_DIR") or javaserver.data_dir() / "neo4j").resolve()
        super().__init__("neo4j", root, uri, "Bolt")
        self.home = self.root / "home"
        parts = urlsplit(uri)
        self.uri = uri
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 7687
        self.user = os.environ.get("NEO4J_USER") or "neo4j"
        self.password = os.environ.get("NEO4J_PASSWORD") or DEFAULT_PASSWORD
        self.heap = os.environ.get("NEO4J_HEAP") or "512m"
        self.pagecache = os.environ.get("NEO4J_PAGECACHE") or "64m"
        self.env = dict(os.environ, NEO4J_HOME=str(self.home), NEO4J_CONF=str(self.conf))


def fetch(layout: Layout) -> None:
    """Copy the server and APOC jars from Maven Central."""
    lib = layout.home / "lib"
    if lib.is_dir() and any(lib.glob("neo4j-5.26.*.jar")) and any((layout.home / "plugins").glob("apoc-core-*.jar")):
        return
    javaserver.maven_package(layout, HERE / "pom.xml", {"neo4j.home": layout.home},
                             what="Neo4j 5.26 Community and APOC core", hint=ELSEWHERE)


def write_config(layout: Layout) -> None:
    for directory in (layout.conf, layout.data, layout.logs, layout.run, layout.home / "plugins",
                      layout.root / "import"):
        directory.mkdir(parents=True, exist_ok=True)
    settings = {
        "server.directories.data": layout.data,
        "server.directories.logs": layout.logs,
        "server.directories.plugins": layout.home / "plugins",
        "server.directories.run": layout.run,
        "server.directories.import": layout.root / "import",
        "server.default_listen_address": "127.0.0.1",
        "server.bolt.enabled": "true",
        "server.bolt.listen_address": f"127.0.0.1:{layout.port}",
        "server.bolt.advertised_address": f"127.0.0.1:{layout.port}",
        "server.bolt.tls_level": "DISABLED",
        "server.http.enabled": "false",
        "server.https.enabled": "false",
        "dbms.routing.enabled": "false",
        "dbms.usage_report.enabled": "false",
        "dbms.security.auth_enabled": "true",
        "dbms.security.procedures.unrestricted": "apoc.*",
        "dbms.security.procedures.allowlist": "apoc.*",
        "server.memory.pagecache.size": layout.pagecache,
        "server.memory.heap.initial_size": "256m",
        "server.memory.heap.max_size": layout.heap,
        "db.tx_log.preallocate": "false",
        "db.tx_log.rotation.retention_policy": "1 files",
        "server.jvm.additional": "-XX:+ExitOnOutOfMemoryError",
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    (layout.conf / "neo4j.conf").write_text(
        "# Written by tools/neo4j/neo4jctl.py on every start; edit that file, not this one.\n"
        + "\n".join(lines) + "\n"
    )
    # APOC reads its own file; strict validation rejects apoc.* keys in neo4j.conf.
    (layout.conf / "apoc.conf").write_text(
        "apoc.trigger.enabled=true\n"
        "apoc.trigger.refresh=1000\n"
    )


def set_initial_password(layout: Layout, java: str) -> None:
    auth_file = layout.data / "dbms" / "auth.ini"
    if auth_file.exists() or (layout.data / "databases" / "system").exists():
        return
    if len(layout.password) < 8:
        layout.fail("NEO4J_PASSWORD must be at least 8 characters long")
    javaserver.run_tool(layout, [java, "-cp", f"{layout.home}/lib/*", "org.neo4j.cli.AdminTool",
                                 "dbms", "set-initial-password", layout.password],
                        "could not set the initial password", env=layout.env)


def connectivity(layout: Layout, timeout: float) -> str | None:
    """Return None once the driver can log in, else the last error."""
    try:
        from neo4j import GraphDatabase
    except ImportError:
        layout.fail("the `neo4j` Python driver is not installed; run this with the project's virtualenv")
    deadline = time.monotonic() + timeout
    error = "not tried"
    while True:
        try:
            with GraphDatabase.driver(layout.uri, auth=(layout.user, layout.password),
                                      connection_timeout=5) as driver:
                driver.verify_connectivity()
                return None
        except Exception as exc:  # noqa: BLE001 — "not up yet" until the deadline
            error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            return error
        time.sleep(0.5)


def log_tail(layout: Layout, lines: int = 60) -> str:
    out = []
    for name in ("console.log", "neo4j.log", "debug.log"):
        path = layout.logs / name
        if path.exists():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path} ---\n" + "\n".join(text))
    return "\n".join(out) or "(no logs written)"


def start(layout: Layout) -> None:
    if layout.host not in LOCAL_HOSTS:
        layout.fail(f"NEO4J_URI points at {layout.host}, not this machine: nothing to start")
    answers = lambda timeout: connectivity(layout, timeout)  # noqa: E731
    if javaserver.running_already(layout, answers):
        return
    java = javaserver.java_binary(layout, java_home=os.environ.get("NEO4J_JAVA_HOME"), accept=lambda major: major in (17, 21),
                                  requirement=f"Java 17 (or 21) is required: install openjdk-17-jre-headless, or {ELSEWHERE}")
    fetch(layout)
    write_config(layout)
    set_initial_password(layout, java)
    command = [java, "-Xms256m", f"-Xmx{layout.heap}", *JVM_FLAGS,
               "-cp", f"{layout.home}/lib/*:{layout.home}/plugins/*",
               "org.neo4j.server.CommunityEntryPoint",
               f"--home-dir={layout.home}", f"--config-dir={layout.conf}"]
    javaserver.launch(layout, command, answers, lambda: log_tail(layout), env=layout.env, poll=0.5,
                      timeout=float(os.environ.get("NEO4J_START_TIMEOUT", "120")))


def main(argv: list[str]) -> int:
    layout = Layout()
    return javaserver.main(argv, layout, start=lambda: start(layout), fetch=lambda: fetch(layout),
                           answers=lambda timeout: connectivity(layout, timeout), usage=__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
