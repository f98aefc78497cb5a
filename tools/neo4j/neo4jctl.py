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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
DEFAULT_PASSWORD = "nightingale-local"
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


class Layout:
    def __init__(self) -> None:
        data_dir = Path(os.environ.get("DATA_DIR") or PROJECT / "var")
        if not data_dir.is_absolute():
            data_dir = PROJECT / data_dir
        self.root = Path(os.environ.get("NEO4J_LOCAL_DIR") or data_dir / "neo4j").resolve()
        self.home = self.root / "home"
        self.conf = self.root / "conf"
        self.data = self.root / "data"
        self.logs = self.root / "logs"
        self.run = self.root / "run"
        self.pid_file = self.run / "neo4j.pid"
        self.stdout = self.logs / "console.log"

        uri = os.environ.get("NEO4J_URI") or "bolt://127.0.0.1:7687"
        parts = urlsplit(uri)
        self.uri = uri
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 7687
        self.user = os.environ.get("NEO4J_USER") or "neo4j"
        self.password = os.environ.get("NEO4J_PASSWORD") or DEFAULT_PASSWORD
        self.heap = os.environ.get("NEO4J_HEAP") or "512m"
        self.pagecache = os.environ.get("NEO4J_PAGECACHE") or "64m"


def fail(message: str) -> None:
    print(f"neo4j: {message}", file=sys.stderr)
    sys.exit(1)


def java_binary() -> str:
    java_home = os.environ.get("NEO4J_JAVA_HOME") or os.environ.get("JAVA_HOME")
    candidates = [Path(java_home) / "bin" / "java"] if java_home else []
    candidates.append(Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java"))
    for candidate in candidates:
        if candidate.exists() and _java_major(str(candidate)) in (17, 21):
            return str(candidate)
    found = shutil.which("java")
    if found and _java_major(found) in (17, 21):
        return found
    fail("Java 17 (or 21) is required: install openjdk-17-jre-headless, "
         "or point NEO4J_URI at an existing Neo4j server")
    raise AssertionError


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    for token in out.split():
        token = token.strip('"')
        if token[:1].isdigit():
            return int(token.split(".")[0])
    return None


def fetch(layout: Layout) -> None:
    """Copy the server and APOC jars from Maven Central (Maven's local repository caches them)."""
    lib = layout.home / "lib"
    if lib.is_dir() and any(lib.glob("neo4j-5.26.*.jar")) and any((layout.home / "plugins").glob("apoc-core-*.jar")):
        return
    mvn = shutil.which("mvn")
    if not mvn:
        fail("Maven is required to fetch Neo4j from Maven Central: install maven, "
             "or point NEO4J_URI at an existing Neo4j server")
    print("neo4j: fetching Neo4j 5.26 Community and APOC core from Maven Central ...", flush=True)
    result = subprocess.run(
        [mvn, "-B", "-q", "-f", str(HERE / "pom.xml"), "package", f"-Dneo4j.home={layout.home}"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], file=sys.stderr)
        fail("Maven could not fetch Neo4j (see above)")


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


def read_pid(layout: Layout) -> int | None:
    try:
        pid = int(layout.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def set_initial_password(layout: Layout, java: str) -> None:
    auth_file = layout.data / "dbms" / "auth.ini"
    if auth_file.exists() or (layout.data / "databases" / "system").exists():
        return
    if len(layout.password) < 8:
        fail("NEO4J_PASSWORD must be at least 8 characters long")
    env = dict(os.environ, NEO4J_HOME=str(layout.home), NEO4J_CONF=str(layout.conf))
    result = subprocess.run(
        [java, "-cp", f"{layout.home}/lib/*", "org.neo4j.cli.AdminTool",
         "dbms", "set-initial-password", layout.password],
        capture_output=True, text=True, env=env,
    )
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
        fail("could not set the initial password")


def connectivity(layout: Layout, timeout: float) -> str | None:
    """Return None once the driver can log in, else the last error."""
    try:
        from neo4j import GraphDatabase
    except ImportError:
        fail("the `neo4j` Python driver is not installed; run this with the project's virtualenv")
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
    if layout.host not in ("127.0.0.1", "localhost", "::1"):
        fail(f"NEO4J_URI points at {layout.host}, not this machine: nothing to start")
    pid = read_pid(layout)
    if pid:
        if connectivity(layout, 1) is None:
            print(f"neo4j: already running (pid {pid}) at {layout.uri}")
            return
        fail(f"a process (pid {pid}) holds {layout.pid_file} but Bolt does not answer; run `stop` first")
    java = java_binary()
    fetch(layout)
    write_config(layout)
    set_initial_password(layout, java)
    heap = ["-Xms256m", f"-Xmx{layout.heap}"]
    command = [java, *heap, *JVM_FLAGS,
               "-cp", f"{layout.home}/lib/*:{layout.home}/plugins/*",
               "org.neo4j.server.CommunityEntryPoint",
               f"--home-dir={layout.home}", f"--config-dir={layout.conf}"]
    env = dict(os.environ, NEO4J_HOME=str(layout.home), NEO4J_CONF=str(layout.conf))
    started = time.monotonic()
    with open(layout.stdout, "ab") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    layout.pid_file.write_text(str(process.pid))
    timeout = float(os.environ.get("NEO4J_START_TIMEOUT", "120"))
    deadline = time.monotonic() + timeout
    error = "not tried"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            layout.pid_file.unlink(missing_ok=True)
            print(log_tail(layout), file=sys.stderr)
            fail(f"the server exited with code {process.returncode} during start-up (logs above)")
        error = connectivity(layout, 1)
        if error is None:
            print(f"neo4j: ready at {layout.uri} in {time.monotonic() - started:.1f}s (pid {process.pid})")
            return
        time.sleep(0.5)
    print(log_tail(layout), file=sys.stderr)
    stop(layout)
    fail(f"no Bolt answer within {timeout:.0f}s ({error}); logs above")


def stop(layout: Layout) -> None:
    pid = read_pid(layout)
    if not pid:
        print("neo4j: not running")
        layout.pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)  # a clean database shutdown
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.3)
    else:
        os.kill(pid, signal.SIGKILL)
    layout.pid_file.unlink(missing_ok=True)
    print(f"neo4j: stopped (pid {pid})")


def status(layout: Layout) -> int:
    pid = read_pid(layout)
    if not pid:
        print(f"neo4j: not running (would serve {layout.uri})")
        return 3
    error = connectivity(layout, 2)
    if error:
        print(f"neo4j: pid {pid} running but Bolt does not answer: {error}")
        return 1
    print(f"neo4j: running (pid {pid}) at {layout.uri}")
    return 0


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    layout = Layout()
    if command == "start":
        start(layout)
    elif command == "stop":
        stop(layout)
    elif command == "restart":
        stop(layout)
        start(layout)
    elif command == "status":
        return status(layout)
    elif command == "fetch":
        fetch(layout)
    elif command == "wipe":
        stop(layout)
        shutil.rmtree(layout.data, ignore_errors=True)
        print(f"neo4j: removed {layout.data}")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
