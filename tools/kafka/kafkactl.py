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
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import javaserver  # noqa: E402 — tools/javaserver.py, beside this tool's folder

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
ELSEWHERE = "point KAFKA_BOOTSTRAP_SERVERS at an existing Kafka"


class Layout(javaserver.ServerLayout):
    def __init__(self) -> None:
        servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
        first = servers.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        if not host or not port.isdigit():
            javaserver.fail("kafka", f"KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...], not {servers!r}")
        root = Path(os.environ.get("KAFKA_LOCAL_DIR") or javaserver.data_dir() / "kafka").resolve()
        super().__init__("kafka", root, f"127.0.0.1:{port}", "the broker")
        self.home = Path(os.environ.get("KAFKA_HOME") or javaserver.PROJECT / "var" / "kafka" / "home").resolve()
        self.properties = self.conf / "server.properties"
        self.host = host
        self.port = int(port)
        controller = os.environ.get("KAFKA_CONTROLLER_PORT") or str(self.port + 1)
        if not controller.isdigit():
            self.fail(f"KAFKA_CONTROLLER_PORT must be a port number, not {controller!r}")
        self.controller_port = int(controller)
        self.bootstrap = self.address
        self.heap = os.environ.get("KAFKA_HEAP") or "256m"


def fetch(layout: Layout) -> None:
    """Copy the broker's jars from Maven Central; one fetch at a time, since several data
    directories share the jars."""
    lib = layout.home / "lib"
    layout.home.mkdir(parents=True, exist_ok=True)
    with open(layout.home / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.is_dir() and any(lib.glob("kafka_2.13-4.*.jar")) and any(lib.glob("slf4j-simple-*.jar")):
            return
        javaserver.maven_package(layout, HERE / "pom.xml", {"kafka.home": layout.home},
                                 what="Apache Kafka 4", hint=ELSEWHERE)


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
    out = javaserver.run_tool(layout, [*base, "random-uuid"],
                              "could not make a cluster id (kafka.tools.StorageTool random-uuid)").strip()
    if not out:
        layout.fail("kafka.tools.StorageTool random-uuid printed no cluster id")
    cluster_id = out.splitlines()[-1]
    javaserver.run_tool(layout, [*base, "format", "--standalone", "-t", cluster_id, "-c", str(layout.properties)],
                        "could not format the log directory (kafka.tools.StorageTool format)")


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
        layout.fail(f"KAFKA_BOOTSTRAP_SERVERS points at {layout.host}, not this machine: nothing to start")
    ready = lambda timeout: answers(layout, timeout)  # noqa: E731
    if javaserver.running_already(layout, ready):
        return
    java = javaserver.java_binary(layout, java_home=os.environ.get("KAFKA_JAVA_HOME"), accept=lambda major: major >= 17,
                                  requirement=f"Java 17 or later is required: install openjdk-17-jre-headless, or {ELSEWHERE}")
    fetch(layout)
    write_config(layout)
    format_storage(layout, java)
    command = [java, "-Xms64m", f"-Xmx{layout.heap}", *JVM_FLAGS, "-cp", classpath(layout),
               "kafka.Kafka", str(layout.properties)]
    javaserver.launch(layout, command, ready, lambda: log_tail(layout),
                      timeout=float(os.environ.get("KAFKA_START_TIMEOUT", "90")))


def main(argv: list[str]) -> int:
    layout = Layout()
    return javaserver.main(argv, layout, start=lambda: start(layout), fetch=lambda: fetch(layout),
                           answers=lambda timeout: answers(layout, timeout), usage=__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
