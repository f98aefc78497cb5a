"""Servers the fault suite stops and starts itself: a Neo4j and a PostgreSQL of its own (the shared
test servers keep running whatever happens here) and a tiny filesystem for LanceDB.

The Neo4j is run by tools/neo4j/neo4jctl.py on a free port, in a directory under DATA_DIR; it
borrows the jars of bin/test's Neo4j (var/test-neo4j, or $NEO4J_LOCAL_DIR) when they are there,
else neo4jctl fetches them with Maven. The PostgreSQL is run by bin/postgres-for-tests on a free
port in a directory of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
NEO4J_PASSWORD = "faults-neo4j-test"
TRIGGER_WAIT = 30.0  # seconds for a started Neo4j to load the APOC trigger it stores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, timeout: float = 60.0, every: float = 0.1, show=None):
    """Poll `condition` until it returns something true (returned), or fail naming `what` (and
    what `show()` says then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; found {show()}" if show is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{seen}")
        time.sleep(every)


class Neo4jServer:
    """A Neo4j of the suite's own: `start`, `kill` (SIGKILL, as a crash or the OOM killer would),
    `stop` (a clean shutdown)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.uri = f"bolt://127.0.0.1:{self.port}"
        self.password = NEO4J_PASSWORD
        home = directory / "home"
        shared = Path(os.environ.get("NEO4J_LOCAL_DIR") or ROOT / "var" / "test-neo4j") / "home"
        if not home.exists() and (shared / "lib").is_dir():
            home.parent.mkdir(parents=True, exist_ok=True)
            home.symlink_to(shared.resolve())
        self.env = {**os.environ, "NEO4J_URI": self.uri, "NEO4J_PASSWORD": self.password,
                    "NEO4J_LOCAL_DIR": str(directory), "NEO4J_HEAP": "384m"}

    def _ctl(self, command: str) -> str:
        done = subprocess.run([sys.executable, "tools/neo4j/neo4jctl.py", command], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"neo4jctl {command}: {done.stderr}{done.stdout}"
        return done.stdout

    @property
    def pid(self) -> int | None:
        try:
            return int((self.directory / "run" / "neo4j.pid").read_text())
        except (OSError, ValueError):
            return None

    def start(self, graph=None) -> None:
        """Start the server; with `graph` (a store on it), wait until it runs the APOC trigger too."""
        self._ctl("start")
        if graph is not None:
            assert graph.wait_for_triggers(TRIGGER_WAIT), "the APOC trigger did not load"

    def stop(self) -> None:
        self._ctl("stop")

    def kill(self) -> None:
        """SIGKILL the server and wait until it is gone (its port closed, nothing flushed)."""
        pid = self.pid
        if pid is None:
            return
        try:
            ours = f"--config-dir={self.directory.resolve() / 'conf'}" in Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            ours = False  # gone already
        if ours:  # not a process that took the pid of one a previous run left behind
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), f"Neo4j (pid {pid}) to die")
        (self.directory / "run" / "neo4j.pid").unlink(missing_ok=True)

    def store(self, retry_time: float = 2.0):
        """A graph store on this server. `retry_time` bounds how long a call retries while the server
        is down (production's 15 s would only make the cases slower: the driver
        behaves the same)."""
        from sync.stores.neo4j_graph import Neo4jGraphStore

        return Neo4jGraphStore(self.uri, "neo4j", self.password, retry_time=retry_time)


def _alive(pid: int) -> bool:
    """A zombie (killed, not yet reaped by whoever adopted it) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class PostgresServer:
    """A PostgreSQL of the suite's own (bin/postgres-for-tests on a free port and directory)."""

    def __init__(self):
        # Not under pytest's tmp_path: as root the server runs as `postgres`, which cannot enter it.
        self.directory = Path(tempfile.mkdtemp(prefix="nightingale-faults-pg-"))
        self.directory.chmod(0o755)
        self.port = free_port()
        self.env = {**os.environ, "TEST_PG_PORT": str(self.port), "TEST_PG_DIR": str(self.directory)}
        self.url = ""

    def _script(self, command: str) -> str:
        done = subprocess.run(["bin/postgres-for-tests", command], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"postgres-for-tests {command}: {done.stderr}{done.stdout}"
        return done.stdout.strip()

    def start(self) -> str:
        self.url = self._script("start")
        return self.url

    def stop(self) -> None:
        self._script("stop")

    def restart(self) -> None:
        """A fast shutdown (open connections are terminated) and a start on the same port."""
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class TinyFilesystem:
    """A tmpfs of `size` mounted at `path`: filled to the last byte with a ballast file, made
    read-only and writable again, for real (root cannot write through either)."""

    def __init__(self, path: Path, size: str = "8m"):
        self.path = path
        self.size = size
        self.ballast = path / ".ballast"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs",
                               str(self.path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise PermissionError(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

    def fill(self) -> None:
        """Write the ballast until the filesystem refuses another byte (ENOSPC)."""
        with open(self.ballast, "ab", buffering=0) as ballast, contextlib.suppress(OSError):
            while ballast.write(b"\0" * 65536):  # short writes near the end, then ENOSPC
                pass

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def _remount(self, mode: str) -> None:
        done = subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def read_only(self) -> None:
        self._remount("ro")

    def writable(self) -> None:
        self._remount("rw")


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str = "8m") -> Iterator[TinyFilesystem]:
    filesystem = TinyFilesystem(path, size)
    filesystem.mount()
    try:
        yield filesystem
    finally:
        filesystem.unmount()
