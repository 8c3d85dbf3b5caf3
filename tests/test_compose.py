"""docker-compose.yaml, checked without Docker: valid against the Compose specification, and the same
services, ports, variables and config files as the native stack."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cryptopipe.settings import ROOT, Settings

COMPOSE = ROOT / "docker-compose.yaml"
SERVICES = {"kafka", "connect", "ksqldb-server", "ksqldb-cli", "postgres", "redis", "kafka-ui", "init",
            "airflow-init", "airflow", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            "source", "redis-sink", "alert-notifier", "replay",
            "flink-jobmanager", "flink-taskmanager", "flink-sql-gateway", "flink-deploy"}
ONE_SHOT = {"init", "airflow-init"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_valid_against_the_compose_specification():
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_broken_file(tmp_path):
    # The oracle must be able to fail: an unknown key in a service is rejected.
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    hostname: kafka\n", "    hostnme: kafka\n", 1))
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(broken)],
                            capture_output=True, text=True)
    assert result.returncode != 0


def test_services_are_the_platform(compose):
    assert set(compose["services"]) == SERVICES


def published(service: dict) -> list[tuple[str, str, int]]:
    """(host ip, host port expression, container port) of each published port."""
    out = []
    for spec in service.get("ports", []):
        ip, host, container = re.fullmatch(r"([\d.]+):(.+):(\d+)", spec).groups()
        out.append((ip, host, int(container)))
    return out


@pytest.mark.parametrize(
    ("service", "variable", "field"),
    [
        ("kafka", "KAFKA_PORT", "kafka_port"),
        ("connect", "CONNECT_PORT", "connect_port"),
        ("postgres", "PG_PORT", "pg_port"),
        ("redis", "REDIS_PORT", "redis_port"),
        ("airflow", "AIRFLOW_PORT", "airflow_port"),
        ("ksqldb-server", "KSQLDB_PORT", "ksqldb_port"),
        ("kafka-ui", "KAFKA_UI_PORT", "kafka_ui_port"),
    ],
)
def test_ports_match_the_native_settings(compose, service, variable, field):
    [(ip, host, _)] = published(compose["services"][service])
    assert ip == "127.0.0.1"
    match = re.fullmatch(r"\$\{(\w+):-(\d+)\}", host)
    assert match, f"{service} publishes {host}, not ${{{variable}:-<default>}}"
    assert match.group(1) == variable
    assert int(match.group(2)) == Settings.model_fields[field].default


def test_every_port_is_loopback_only(compose):
    for name, service in compose["services"].items():
        for ip, _, _ in published(service):
            assert ip == "127.0.0.1", name


def test_healthchecks_and_healthy_dependencies(compose):
    for name, service in compose["services"].items():
        for dep, cond in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond["condition"] == wanted, f"{name} -> {dep}"
            if wanted == "service_healthy":
                assert "healthcheck" in compose["services"][dep], dep


def test_image_tags_come_from_env_example(compose):
    example = (ROOT / ".env.example").read_text()
    defined = dict(re.findall(r"^(\w+_IMAGE)=(\S+)$", example, flags=re.M))
    for name, service in compose["services"].items():
        if "image" in service and "build" not in service:
            var, default = re.fullmatch(r"\$\{(\w+):-(\S+)\}", service["image"]).groups()
            assert defined[var] == default, name


def test_shares_the_native_config_files(compose):
    mounts = [v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", []) if v.startswith("./")]
    assert "./stack/config/kafka.properties" in mounts
    assert "./stack/config/redis.conf" in mounts
    assert "./dags" in mounts
    for mount in mounts:
        # reports/ is an output folder (gitignored); Docker creates it.
        assert mount == "./reports" or (ROOT / mount).exists(), mount
    dockerfile = (ROOT / "docker/connect/Dockerfile").read_text()
    assert "stack/java/pom.xml" in dockerfile and "stack/config/connect-distributed.properties" in dockerfile


def test_functions_run_the_console_scripts_the_project_installs(compose):
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("source", "redis-sink", "alert-notifier", "replay"):
        service = compose["services"][name]
        assert service["command"][0] in scripts, name
        module = scripts[service["command"][0]].split(":")[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
        assert service["build"]["dockerfile"] == "docker/python/Dockerfile"
    dockerfile = (ROOT / "docker/python/Dockerfile").read_text()
    for folder in ("functions", "replay", "connectors", "ksql", "flink"):
        assert f"COPY {folder} {folder}" in dockerfile


def test_airflow_runs_the_same_dags_with_the_same_connections(compose):
    from ops.airflow_env import CONNECTIONS

    for name in ("airflow", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        service = compose["services"][name]
        assert "./dags:/opt/airflow/dags:ro" in service["volumes"], name
        env = service["environment"]
        assert {f"AIRFLOW_CONN_{c}" for c in CONNECTIONS} <= set(env), name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        # Every process signs and checks task tokens with the same secret.
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "${AIRFLOW_JWT_SECRET:?set it in .env}"
    assert compose["services"]["airflow"]["command"][-1].endswith("exec airflow api-server")
