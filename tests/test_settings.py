"""Settings come from the environment; a bad value stops start-up naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_check(tmp_path, **env):
    environment = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("VECTOR_", "PINECONE_", "DATABASE_", "SECURE_", "DEBUG"))
    }
    environment.update(DJANGO_SETTINGS_MODULE="nightingale.settings", DATA_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=environment,
        capture_output=True, text=True, timeout=120,
    )


def test_it_stops_on_an_unknown_vector_store(tmp_path):
    result = run_check(tmp_path, VECTOR_STORE="elasticsearch")
    assert result.returncode != 0
    assert "VECTOR_STORE must be one of local, pinecone, got 'elasticsearch'" in result.stderr


def test_it_requires_pinecone_credentials_without_printing_them(tmp_path):
    result = run_check(tmp_path, VECTOR_STORE="pinecone", PINECONE_HOST="http://127.0.0.1:9")
    assert result.returncode != 0
    assert "PINECONE_API_KEY must be set when VECTOR_STORE=pinecone" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SYNC_BATCH_SIZE", "lots", "SYNC_BATCH_SIZE must be an integer, got 'lots'"),
        ("SYNC_BATCH_SIZE", "0", "SYNC_BATCH_SIZE must be at least 1"),
        ("SYNC_MAX_BATCH_SIZE", "50", "SYNC_MAX_BATCH_SIZE (50) must be at least SYNC_BATCH_SIZE (100)"),
        ("SYNC_DRAIN_WORKERS", "3", "Q_WORKERS (4) must be at least SYNC_DRAIN_WORKERS + 2 (5)"),
        ("DEBUG", "maybe", "DEBUG must be one of true/false"),
        ("NEO4J_URI", "http://127.0.0.1:7474", "NEO4J_URI must start with bolt://"),
        ("DATABASE_URL", "mysql://u:p@h/db", "DATABASE_URL must be a sqlite:// or postgres:// URL"),
        ("SECRET_KEY", "short", "SECRET_KEY must be at least 32 characters long"),
        ("CONTACT_PHONE_REGIONS", "US,XX", "CONTACT_PHONE_REGIONS must list ISO 3166 region codes"),
        ("CONTACT_PHONE_REGIONS", ",", "CONTACT_PHONE_REGIONS must list ISO 3166 region codes"),
    ],
)
def test_it_names_the_bad_variable(tmp_path, variable, value, message):
    result = run_check(tmp_path, **{variable: value})
    assert result.returncode != 0
    assert message in result.stderr
    if variable == "DATABASE_URL":
        assert "u:p" not in result.stderr  # credentials never echoed


def test_it_starts_with_the_embedded_defaults(tmp_path):
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_deploy_settings_follow_the_environment(tmp_path):
    environment = dict(
        SECURE_SSL_REDIRECT="true", SECURE_HSTS_SECONDS="31536000", SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        SECURE_HSTS_PRELOAD="true", ALLOWED_HOSTS="sync.example.org",
        SECRET_KEY="x" * 20 + "a-long-random-deploy-key-9f8e7d6c5b4a",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "nightingale.settings", "DATA_DIR": str(tmp_path),
             **environment},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def numeric_reads():
    """Every `env_int`/`env_float` read in the settings module, found in its source."""
    import ast

    tree = ast.parse((ROOT / "nightingale" / "settings.py").read_text())
    reads = sorted({
        (node.args[0].value, node.func.id) for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in ("env_int", "env_float")
        and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    })
    assert len(reads) >= 20 and any(kind == "env_float" for _, kind in reads)  # the search found them
    return reads


# Variables read only when another setting asks for them, and what it takes.
READ_ONLY_WITH = {"SQS_WAIT_SECONDS": {"Q_BROKER": "sqs", "AWS_REGION": "us-east-1"}}


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize(("variable", "reader"), numeric_reads())
def test_it_refuses_non_finite_numbers(tmp_path, monkeypatch, variable, reader, value):
    """Start-up reads the settings module with the variable set: it stops, naming the variable."""
    import runpy

    from django.core.exceptions import ImproperlyConfigured

    for key in [k for k in os.environ if k.startswith(("VECTOR_", "PINECONE_", "DATABASE_", "REDIS_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    for name, needed in READ_ONLY_WITH.get(variable, {}).items():
        monkeypatch.setenv(name, needed)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ImproperlyConfigured, match=rf"^{variable} must be a"):
        runpy.run_path(str(ROOT / "nightingale" / "settings.py"))


def test_a_nan_interval_stops_start_up(tmp_path):
    result = run_check(tmp_path, CAPTURE_INTERVAL="nan")
    assert result.returncode != 0
    assert "CAPTURE_INTERVAL must be a finite number, got 'nan'" in result.stderr
