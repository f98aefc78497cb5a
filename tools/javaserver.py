"""What tools/neo4j/neo4jctl.py and tools/kafka/kafkactl.py share: a Java server whose jars Maven
fetches from Maven Central, run in the background with a pid file and a console log, waited for
until it answers, stopped with SIGTERM (SIGKILL after a minute), and the command line around it.

Each tool describes its server with a `Layout` (`ServerLayout`'s fields: where its files live,
what it is called, where it answers) and supplies what differs: how to fetch and configure it,
the command that runs it, and the check that it answers. Standard library only: the tools run
before the project's virtualenv exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
STOP_SECONDS = 60  # SIGTERM's grace: a database checkpoint, a broker's controlled shutdown


class ServerLayout:
    """A server's directories under `root`: conf, data, logs (console.log) and run (<name>.pid)."""

    def __init__(self, name: str, root: Path, address: str, what: str):
        self.name = name  # what every message starts with: "neo4j: ..."
        self.root = root
        self.address = address  # where it answers, for messages: "bolt://127.0.0.1:7687"
        self.what = what  # what answers, for messages: "Bolt", "the broker"
        self.conf = root / "conf"
        self.data = root / "data"
        self.logs = root / "logs"
        self.run = root / "run"
        self.pid_file = self.run / f"{name}.pid"
        self.stdout = self.logs / "console.log"

    def fail(self, message: str) -> None:
        fail(self.name, message)


def fail(name: str, message: str) -> None:
    print(f"{name}: {message}", file=sys.stderr)
    sys.exit(1)


def data_dir() -> Path:
    """$DATA_DIR (relative to the project), default ./var."""
    path = Path(os.environ.get("DATA_DIR") or PROJECT / "var")
    return path if path.is_absolute() else PROJECT / path


def java_binary(layout: ServerLayout, *, java_home: str | None, accept: Callable[[int], bool],
                requirement: str) -> str:
    """A Java whose major version `accept`s: under `java_home` (the tool's own variable), $JAVA_HOME,
    Debian's 17, then PATH's."""
    java_home = java_home or os.environ.get("JAVA_HOME")
    candidates = [Path(java_home) / "bin" / "java"] if java_home else []
    candidates.append(Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java"))
    found = shutil.which("java")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        major = java_major(str(candidate)) if candidate.exists() else None
        if major is not None and accept(major):
            return str(candidate)
    layout.fail(requirement)
    raise AssertionError


def java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    for token in out.split():
        token = token.strip('"')
        if token[:1].isdigit():
            return int(token.split(".")[0])
    return None


def maven_package(layout: ServerLayout, pom: Path, properties: dict[str, Path], *, what: str, hint: str) -> None:
    """`mvn package` of a tool's pom.xml, which copies the server's jars where `properties` say
    (Maven's local repository caches them)."""
    mvn = shutil.which("mvn")
    if not mvn:
        layout.fail(f"Maven is required to fetch {what} from Maven Central: install maven, or {hint}")
    print(f"{layout.name}: fetching {what} from Maven Central ...", flush=True)
    result = subprocess.run(
        [mvn, "-B", "-q", "-f", str(pom), "package", *(f"-D{key}={value}" for key, value in properties.items())],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], file=sys.stderr)
        layout.fail(f"Maven could not fetch {what} (see above)")


def run_tool(layout: ServerLayout, command: Sequence[str], failure: str, env: dict[str, str] | None = None) -> str:
    """Run one of the server's own command-line tools to completion; its output, or fail saying `failure`."""
    result = subprocess.run(list(command), capture_output=True, text=True, env=env)
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
        layout.fail(failure)
    return result.stdout


def read_pid(layout: ServerLayout) -> int | None:
    """The pid in the pid file, if that process is alive."""
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


Answers = Callable[[float], "str | None"]  # None once the server answers (waiting up to the seconds given), else why not


def running_already(layout: ServerLayout, answers: Answers) -> bool:
    """True when the pid file's server answers; fails when its process lives but does not answer."""
    pid = read_pid(layout)
    if not pid:
        return False
    if answers(2) is None:
        print(f"{layout.name}: already running (pid {pid}) at {layout.address}")
        return True
    layout.fail(f"a process (pid {pid}) holds {layout.pid_file} but {layout.what} does not answer; run `stop` first")
    raise AssertionError


def launch(layout: ServerLayout, command: Sequence[str], answers: Answers, log_tail: Callable[[], str], *,
           timeout: float, env: dict[str, str] | None = None, poll: float = 0.3) -> None:
    """Start the server in a session of its own, its output appended to the console log, and wait
    until it answers; on an exit or a timeout, print its logs, stop it and fail."""
    started = time.monotonic()
    with open(layout.stdout, "ab") as console:
        process = subprocess.Popen(list(command), stdout=console, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    layout.pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    error = "not tried"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            layout.pid_file.unlink(missing_ok=True)
            print(log_tail(), file=sys.stderr)
            layout.fail(f"the server exited with code {process.returncode} during start-up (logs above)")
        error = answers(1)
        if error is None:
            print(f"{layout.name}: ready at {layout.address} in {time.monotonic() - started:.1f}s (pid {process.pid})")
            return
        time.sleep(poll)
    print(log_tail(), file=sys.stderr)
    stop(layout)
    layout.fail(f"{layout.what} did not answer within {timeout:.0f}s ({error}); logs above")


def stop(layout: ServerLayout) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it is still there after STOP_SECONDS."""
    pid = read_pid(layout)
    if not pid:
        print(f"{layout.name}: not running")
        layout.pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    layout.pid_file.unlink(missing_ok=True)
    print(f"{layout.name}: stopped (pid {pid})")


def status(layout: ServerLayout, answers: Answers) -> int:
    """0 running and answering, 1 running but not answering, 3 not running (as LSB init scripts)."""
    pid = read_pid(layout)
    if not pid:
        print(f"{layout.name}: not running (would serve {layout.address})")
        return 3
    error = answers(3)
    if error:
        print(f"{layout.name}: pid {pid} running but {layout.what} does not answer: {error}")
        return 1
    print(f"{layout.name}: running (pid {pid}) at {layout.address}")
    return 0


def main(argv: list[str], layout: ServerLayout, *, start: Callable[[], None], fetch: Callable[[], None],
         answers: Answers, usage: str) -> int:
    """start|stop|restart|status|fetch|wipe (status when none is given); 2 with the usage otherwise."""
    command = argv[1] if len(argv) > 1 else "status"
    if command == "start":
        start()
    elif command == "stop":
        stop(layout)
    elif command == "restart":
        stop(layout)
        start()
    elif command == "status":
        return status(layout, answers)
    elif command == "fetch":
        fetch()
    elif command == "wipe":
        stop(layout)
        shutil.rmtree(layout.data, ignore_errors=True)
        print(f"{layout.name}: removed {layout.data}")
    else:
        print(usage, file=sys.stderr)
        return 2
    return 0
