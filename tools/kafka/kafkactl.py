#!/usr/bin/env python3
"""Run a local Apache Kafka 4.x broker (KRaft mode: one node, broker and controller) fetched from
Maven Central.

    python tools/kafka/kafkactl.py start|stop|status|restart|wipe|fetch

Listens on 127.0.0.1 only: clients at the port of KAFKA_BOOTSTRAP_SERVERS (default
127.0.0.1:9092, PLAINTEXT), its controller at KAFKA_CONTROLLER_PORT (default that port + 1).
The jars live in $KAFKA_HOME (default ./var/kafka/home, shared by every data directory); the
configuration, log directory (the topics' data), console log and pid file under $KAFKA_LOCAL_DIR
(default $DATA_DIR/kafka, where DATA_DIR defaults to ./var). The log directory is formatted once
(`kafka.tools.StorageTool format --standalone`). Small heap (KAFKA_HEAP, default 256m). Needs
Java 17+ and Maven on PATH; with a Kafka elsewhere (MSK, Confluent Cloud), point
KAFKA_BOOTSTRAP_SERVERS at it and skip this tool.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
LOCAL_HOSTS = ("127.0.0.1", "localhost")
JVM_FLAGS = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
    # slf4j-simple (tools/kafka/pom.xml): warnings and errors only, to the console log.
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.logFile=System.out",
]


def fail(message: str) -> None:
    print(f"kafka: {message}", file=sys.stderr)
    sys.exit(1)


class Layout:
    def __init__(self) -> None:
        data_dir = Path(os.environ.get("DATA_DIR") or PROJECT / "var")
        if not data_dir.is_absolute():
            data_dir = PROJECT / data_dir
        self.root = Path(os.environ.get("KAFKA_LOCAL_DIR") or data_dir / "kafka").resolve()
        self.home = Path(os.environ.get("KAFKA_HOME") or PROJECT / "var" / "kafka" / "home").resolve()
        self.conf = self.root / "conf"
        self.data = self.root / "data"
        self.logs = self.root / "logs"
        self.run = self.root / "run"
        self.pid_file = self.run / "kafka.pid"
        self.stdout = self.logs / "console.log"
        self.properties = self.conf / "server.properties"

        servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
        first = servers.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        if not host or not port.isdigit():
            fail(f"KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...], not {servers!r}")
        self.host = host
        self.port = int(port)
        controller = os.environ.get("KAFKA_CONTROLLER_PORT") or str(self.port + 1)
        if not controller.isdigit():
            fail(f"KAFKA_CONTROLLER_PORT must be a port number, not {controller!r}")
        self.controller_port = int(controller)
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.heap = os.environ.get("KAFKA_HEAP") or "256m"


def java_binary() -> str:
    java_home = os.environ.get("KAFKA_JAVA_HOME") or os.environ.get("JAVA_HOME")
    candidates = [Path(java_home) / "bin" / "java"] if java_home else []
    candidates.append(Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java"))
    found = shutil.which("java")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.exists() and (_java_major(str(candidate)) or 0) >= 17:
            return str(candidate)
    fail("Java 17 or later is required: install openjdk-17-jre-headless, "
         "or point KAFKA_BOOTSTRAP_SERVERS at an existing Kafka")
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
    """Copy the broker's jars from Maven Central (Maven's local repository caches them); one fetch
    at a time, since several data directories share the jars."""
    lib = layout.home / "lib"
    layout.home.mkdir(parents=True, exist_ok=True)
    with open(layout.home / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.is_dir() and any(lib.glob("kafka_2.13-4.*.jar")) and any(lib.glob("slf4j-simple-*.jar")):
            return
        mvn = shutil.which("mvn")
        if not mvn:
            fail("Maven is required to fetch Kafka from Maven Central: install maven, "
                 "or point KAFKA_BOOTSTRAP_SERVERS at an existing Kafka")
        print("kafka: fetching Apache Kafka 4 from Maven Central ...", flush=True)
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(HERE / "pom.xml"), "package", f"-Dkafka.home={layout.home}"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            print(result.stdout[-4000:], result.stderr[-4000:], file=sys.stderr)
            fail("Maven could not fetch Kafka (see above)")


def write_config(layout: Layout) -> None:
    for directory in (layout.conf, layout.data, layout.logs, layout.run):
        directory.mkdir(parents=True, exist_ok=True)
    controller = f"127.0.0.1:{layout.controller_port}"
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": controller,
        "listeners": f"PLAINTEXT://127.0.0.1:{layout.port},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{layout.port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": layout.data,
        "num.partitions": "3",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
    }
    layout.properties.write_text(
        "# Written by tools/kafka/kafkactl.py on every start; edit that file, not this one.\n"
        + "\n".join(f"{key}={value}" for key, value in settings.items()) + "\n"
    )


def classpath(layout: Layout) -> str:
    return f"{layout.home}/lib/*"


def format_storage(layout: Layout, java: str) -> None:
    """Format the log directory once (KRaft needs a cluster id and the quorum's first voter)."""
    if (layout.data / "meta.properties").exists():
        return
    base = [java, "-Xmx128m", *JVM_FLAGS, "-cp", classpath(layout), "kafka.tools.StorageTool"]
    cluster = subprocess.run([*base, "random-uuid"], capture_output=True, text=True)
    cluster_id = cluster.stdout.strip().splitlines()[-1] if cluster.returncode == 0 and cluster.stdout.strip() else ""
    if not cluster_id:
        print(cluster.stdout[-2000:], cluster.stderr[-2000:], file=sys.stderr)
        fail("could not make a cluster id (kafka.tools.StorageTool random-uuid)")
    result = subprocess.run([*base, "format", "--standalone", "-t", cluster_id, "-c", str(layout.properties)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
        fail("could not format the log directory (kafka.tools.StorageTool format)")


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


def answers(layout: Layout, timeout: float) -> str | None:
    """None once the broker answers a metadata request, else the last error."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:  # the bare script without the project's virtualenv: a TCP connect will do
        try:
            with socket.create_connection(("127.0.0.1", layout.port), timeout=timeout):
                return None
        except OSError as exc:
            return str(exc)
    try:
        admin = AdminClient({"bootstrap.servers": layout.bootstrap, "socket.connection.setup.timeout.ms": 2000,
                             "log_level": 0, "logger": _Quiet()})
        metadata = admin.list_topics(timeout=timeout)
        return None if metadata.brokers else "no broker in the metadata yet"
    except Exception as exc:  # noqa: BLE001 — "not up yet" until the deadline
        return f"{type(exc).__name__}: {exc}"


class _Quiet:
    """A logger for librdkafka that drops its 'connection refused' chatter while we wait."""

    def log(self, *args, **kwargs) -> None:
        pass

    debug = info = warning = error = critical = exception = log


def log_tail(layout: Layout, lines: int = 60) -> str:
    if not layout.stdout.exists():
        return "(no logs written)"
    text = layout.stdout.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {layout.stdout} ---\n" + "\n".join(text)


def start(layout: Layout) -> None:
    if layout.host not in LOCAL_HOSTS:
        fail(f"KAFKA_BOOTSTRAP_SERVERS points at {layout.host}, not this machine: nothing to start")
    pid = read_pid(layout)
    if pid:
        if answers(layout, 2) is None:
            print(f"kafka: already running (pid {pid}) at {layout.bootstrap}")
            return
        fail(f"a process (pid {pid}) holds {layout.pid_file} but the broker does not answer; run `stop` first")
    java = java_binary()
    fetch(layout)
    write_config(layout)
    format_storage(layout, java)
    command = [java, "-Xms64m", f"-Xmx{layout.heap}", *JVM_FLAGS, "-cp", classpath(layout),
               "kafka.Kafka", str(layout.properties)]
    started = time.monotonic()
    with open(layout.stdout, "ab") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    layout.pid_file.write_text(str(process.pid))
    timeout = float(os.environ.get("KAFKA_START_TIMEOUT", "90"))
    deadline = time.monotonic() + timeout
    error = "not tried"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            layout.pid_file.unlink(missing_ok=True)
            print(log_tail(layout), file=sys.stderr)
            fail(f"the broker exited with code {process.returncode} during start-up (logs above)")
        error = answers(layout, 1)
        if error is None:
            print(f"kafka: ready at {layout.bootstrap} in {time.monotonic() - started:.1f}s (pid {process.pid})")
            return
        time.sleep(0.3)
    print(log_tail(layout), file=sys.stderr)
    stop(layout)
    fail(f"no answer within {timeout:.0f}s ({error}); logs above")


def stop(layout: Layout) -> None:
    pid = read_pid(layout)
    if not pid:
        print("kafka: not running")
        layout.pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)  # a controlled shutdown: logs flushed, clean restart
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    layout.pid_file.unlink(missing_ok=True)
    print(f"kafka: stopped (pid {pid})")


def status(layout: Layout) -> int:
    pid = read_pid(layout)
    if not pid:
        print(f"kafka: not running (would serve {layout.bootstrap})")
        return 3
    error = answers(layout, 3)
    if error:
        print(f"kafka: pid {pid} running but the broker does not answer: {error}")
        return 1
    print(f"kafka: running (pid {pid}) at {layout.bootstrap}")
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
        print(f"kafka: removed {layout.data}")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
