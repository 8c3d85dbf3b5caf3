"""docker-compose.yaml, checked without Docker: valid against the Compose specification, and the same
services, ports, variables, config files and logins as the native stack, each container getting only its secrets."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pydantic import SecretStr

from cryptopipe.settings import ROOT, Settings, user_field
from ops import redis_acl
from ops.services import plain_login_configs, read_properties

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


# ---- secrets: who gets which ------------------------------------------------------------------------

# Every secret the settings require, by its variable; the PostgreSQL superuser's (compose only); the webhook URL,
# which carries a token.
REQUIRED = {name.upper() for name, field in Settings.model_fields.items() if field.is_required()}
SECRETS = REQUIRED | {"POSTGRES_SUPERUSER_PASSWORD", "ALERT_WEBHOOK_URL"}
KAFKA_ALL = {f"KAFKA_{user.replace('-', '_').upper()}_PASSWORD" for user in Settings.KAFKA_USERS}
PG_ALL = {f"PG_{role.upper()}_PASSWORD" for role in Settings.PG_ROLES}
REDIS_ALL = {f"REDIS_{user_field(user).upper()}_PASSWORD" for user in Settings.REDIS_USERS}
AIRFLOW = {"AIRFLOW_DB_PASSWORD", "AIRFLOW_JWT_SECRET", "PG_READER_PASSWORD", "PG_AIRFLOW_PASSWORD",
           "PG_RETENTION_PASSWORD", "PG_BACKFILL_PASSWORD", "KAFKA_AIRFLOW_PASSWORD"}
# What each service needs, and so all it may get.
NEEDS = {
    "kafka": {"KAFKA_ADMIN_PASSWORD"},
    "postgres": {"POSTGRES_SUPERUSER_PASSWORD", "AIRFLOW_DB_PASSWORD"},
    "redis": set(),
    # Creates every Kafka user, PostgreSQL role and Redis user; deploys the connectors through Connect's REST API.
    "init": {"POSTGRES_SUPERUSER_PASSWORD", "CONNECT_REST_PASSWORD"} | KAFKA_ALL | PG_ALL | REDIS_ALL,
    "connect": {"KAFKA_CONNECT_PASSWORD", "CONNECT_REST_PASSWORD", "PG_WRITER_PASSWORD"},
    "ksqldb-server": {"KAFKA_KSQLDB_PASSWORD"},
    "ksqldb-cli": set(),
    "kafka-ui": {"KAFKA_KAFKA_UI_PASSWORD", "CONNECT_REST_PASSWORD"},
    "source": {"KAFKA_SOURCE_PASSWORD"},
    "redis-sink": {"KAFKA_REDIS_SINK_PASSWORD", "REDIS_SINK_PASSWORD"},
    "alert-notifier": {"KAFKA_ALERT_NOTIFIER_PASSWORD", "REDIS_NOTIFIER_PASSWORD", "ALERT_WEBHOOK_URL"},
    "replay": {"REPLAY_TOKEN"},
    "flink-deploy": {"KAFKA_STREAM_PASSWORD"},
    "flink-jobmanager": set(),
    "flink-taskmanager": set(),
    "flink-sql-gateway": set(),
    "airflow-init": AIRFLOW,
    "airflow": AIRFLOW | {"AIRFLOW_ADMIN_PASSWORD"},
    "airflow-scheduler": AIRFLOW,
    "airflow-dag-processor": AIRFLOW,
    "airflow-triggerer": AIRFLOW,
}


def secrets_given(service: dict) -> set[str]:
    """The secrets a service's definition reads: ${VAR...} anywhere in it, or VAR passed through without a value."""
    referenced = set(re.findall(r"\$\{(\w+)", json.dumps(service)))
    passed = {name for name, value in (service.get("environment") or {}).items() if value is None}
    return (referenced | passed) & SECRETS


def python_services(compose: dict) -> list[str]:
    return [name for name, s in compose["services"].items()
            if s.get("build", {}).get("dockerfile") == "docker/python/Dockerfile"]


def test_no_service_reads_an_env_file(compose):
    # Compose gives each container only the variables it needs.
    for name, service in compose["services"].items():
        assert "env_file" not in service, name


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_each_service_gets_the_secrets_it_needs_and_no_other(compose, name):
    assert secrets_given(compose["services"][name]) == NEEDS[name]


def test_the_table_covers_every_service_and_only_init_has_the_superuser(compose):
    assert set(NEEDS) == set(compose["services"])
    holders = {name for name, s in compose["services"].items()
               if "POSTGRES_SUPERUSER_PASSWORD" in secrets_given(s)}
    assert holders == {"init", "postgres"}


def test_no_secret_has_a_default():
    # `${VAR:?...}` stops `docker compose` when .env lacks it; `:-` or `-` would start with a guessable one.
    for match in re.finditer(r"\$\{(\w+)([^}]*)\}", COMPOSE.read_text()):
        if match.group(1) in SECRETS:
            assert match.group(2).startswith(":?"), match.group(0)


def test_python_containers_load_their_settings_with_the_rest_withheld(compose):
    withheld = compose["x-withheld"]
    assert set(withheld) == REQUIRED
    [placeholder] = set(withheld.values())
    Settings(_env_file=None, **{name.lower(): placeholder for name in withheld})  # passes every validator
    for name in python_services(compose):
        env = compose["services"][name]["environment"]
        for var in REQUIRED:
            assert env[var] in (placeholder, f"${{{var}:?set it in .env}}"), (name, var)


def test_passed_through_settings_are_settings_and_not_secrets_or_addresses(compose):
    for var, value in compose["x-settings"].items():
        assert value is None, var
        assert var.lower() in Settings.model_fields, var
        assert var not in SECRETS and not var.endswith(("_HOST", "_PORT", "_DIR")), var


def test_the_connect_login_user_defaults_as_the_settings():
    default = Settings.model_fields["connect_rest_user"].default
    for user in re.findall(r"\$\{CONNECT_REST_USER:-([^}]*)\}", COMPOSE.read_text()):
        assert user == default


# ---- Kafka: every listener asks for a login ---------------------------------------------------------

def kafka_property(variable: str) -> str:
    """The broker property the apache/kafka image makes of a KAFKA_* variable (its KafkaDockerWrapper)."""
    return variable.removeprefix("KAFKA_").lower().replace("_", ".").replace("...", "-").replace("..", "_")


def broker_properties(compose: dict, admin_password: str) -> dict[str, str]:
    """server.properties as the image writes it: the mounted file, then the KAFKA_* variables."""
    env = compose["services"]["kafka"]["environment"]
    props = read_properties(ROOT / "stack/config/kafka.properties")
    for var, value in env.items():
        if var.startswith("KAFKA_"):
            props[kafka_property(var)] = str(value).replace("${KAFKA_ADMIN_PASSWORD:?set it in .env}", admin_password)
    return props


def test_the_image_mapping_of_variables_to_properties():
    assert kafka_property("KAFKA_LISTENER_NAME_EXTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG") == \
        "listener.name.external.scram-sha-512.sasl.jaas.config"
    assert kafka_property("KAFKA_LOG_DIRS") == "log.dirs"


def test_every_kafka_listener_is_sasl_with_a_login_module_per_mechanism(compose):
    props = broker_properties(compose, "admin-secret")
    protocols = dict(pair.split(":") for pair in props["listener.security.protocol.map"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}
    listeners = [entry.split("://")[0] for key in ("listeners", "advertised.listeners")
                 for entry in props[key].split(",")]
    assert set(listeners) == set(protocols) == {"CLIENT", "EXTERNAL", "CONTROLLER"}
    for listener in protocols:
        prefix = f"listener.name.{listener.lower()}"
        mechanisms = props[f"{prefix}.sasl.enabled.mechanisms"].split(",")
        for mechanism in mechanisms:
            assert f"{prefix}.{mechanism.lower()}.sasl.jaas.config" in props, (listener, mechanism)
    # The components' SCRAM users, on the host's listener too.
    assert "SCRAM-SHA-512" in props["listener.name.external.sasl.enabled.mechanisms"]
    # The native base file asks for a login on its listeners as well.
    native = read_properties(ROOT / "stack/config/kafka.properties")["listener.security.protocol.map"]
    assert {pair.split(":")[1] for pair in native.split(",")} == {"SASL_PLAINTEXT"}


def test_the_broker_logs_in_to_itself_as_natively(compose):
    props = broker_properties(compose, "admin-secret")
    settings = SimpleNamespace(kafka_admin_password=SecretStr("admin-secret"))
    for key, value in plain_login_configs(settings, ("client", "controller")).items():
        assert props[key] == value


def test_the_admin_password_is_in_no_other_broker_property(compose):
    kafka = compose["services"]["kafka"]
    for var, value in kafka["environment"].items():
        if var.startswith("KAFKA_") and "KAFKA_ADMIN_PASSWORD" in str(value):
            assert var.endswith("_SASL_JAAS_CONFIG"), var
    # The healthcheck logs in with a copy under a name the image does not turn into a property.
    [login] = re.findall(r"\$\$(\w+)", kafka["healthcheck"]["test"][1])
    assert not login.startswith("KAFKA_") and kafka["environment"][login] == "${KAFKA_ADMIN_PASSWORD:?set it in .env}"


@pytest.mark.parametrize(("service", "variable", "user"), [
    ("ksqldb-server", "KSQL_SASL_JAAS_CONFIG", "ksqldb"),
    ("kafka-ui", "KAFKA_CLUSTERS_0_PROPERTIES_SASL_JAAS_CONFIG", "kafka-ui"),
])
def test_clients_log_in_as_their_own_scram_user(compose, service, variable, user):
    env = compose["services"][service]["environment"]
    password_var = f"KAFKA_{user.replace('-', '_').upper()}_PASSWORD"
    assert Settings.KAFKA_USERS[user] == user
    assert env[variable] == ('org.apache.kafka.common.security.scram.ScramLoginModule required '
                             f'username="{user}" password="${{{password_var}:?set it in .env}}";')
    protocol, mechanism = (v for k, v in env.items() if k.endswith(("SECURITY_PROTOCOL", "SASL_MECHANISM")))
    assert (protocol, mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")


# ---- Kafka Connect: its logins, written by its start script -----------------------------------------

@pytest.fixture()
def connect_started(tmp_path):
    """docker/connect/start-connect.sh run outside the image, with a connect-distributed.sh that reports."""
    etc, run, home = tmp_path / "etc", tmp_path / "run", tmp_path / "kafka"
    etc.mkdir(), run.mkdir(), (home / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "stack/config/connect-distributed.properties", etc)
    fake = home / "bin/connect-distributed.sh"
    fake.write_text('#!/bin/bash\necho "$1"\necho "$KAFKA_OPTS"\necho "${KAFKA_CONNECT_PASSWORD:-unset}"\n')
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "CONNECT_ETC_DIR": str(etc), "CONNECT_RUN_DIR": str(run),
           "CONNECT_KAFKA_HOME": str(home), "CONNECT_BOOTSTRAP_SERVERS": "kafka:29092",
           "KAFKA_CONNECT_PASSWORD": "k@fka:pw!", "CONNECT_REST_USER": "connect-admin",
           "CONNECT_REST_PASSWORD": "r=st#pw"}
    result = subprocess.run(["bash", str(ROOT / "docker/connect/start-connect.sh")], env=env, capture_output=True,
                            text=True, check=True)
    conf, opts, password_left = result.stdout.splitlines()
    return SimpleNamespace(run=run, conf=Path(conf), opts=opts, password_left=password_left)


def test_connect_logs_in_to_kafka_as_natively(connect_started):
    props = read_properties(connect_started.conf)
    jaas = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
            f'username="{Settings.KAFKA_USERS["connect"]}" password="k@fka:pw!";')
    # The worker, and the producers, consumers and admin clients it makes (ops/services.py's Connect.start).
    for prefix in ("", "producer.", "consumer.", "admin."):
        assert props[f"{prefix}security.protocol"] == "SASL_PLAINTEXT"
        assert props[f"{prefix}sasl.mechanism"] == "SCRAM-SHA-512"
        assert props[f"{prefix}sasl.jaas.config"] == jaas
    assert props["bootstrap.servers"] == "kafka:29092"
    assert props["rest.extension.classes"].endswith("BasicAuthSecurityRestExtension")
    assert connect_started.password_left == "unset"


def test_connect_rest_users_are_written_owner_only(connect_started):
    run = connect_started.run
    users, jaas = run / "connect-rest-users.properties", run / "connect-rest.jaas"
    assert users.read_text() == "connect-admin: r=st#pw\n"
    assert "PropertyFileLoginModule required" in jaas.read_text() and f'file="{users}";' in jaas.read_text()
    assert f"-Djava.security.auth.login.config={jaas}" in connect_started.opts.split()
    for path in run.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_connect_and_its_users_log_in_to_the_rest_api(compose):
    connect = compose["services"]["connect"]
    assert "$$CONNECT_REST_USER:$$CONNECT_REST_PASSWORD" in connect["healthcheck"]["test"][1]
    ui = compose["services"]["kafka-ui"]["environment"]
    assert ui["KAFKA_CLUSTERS_0_KAFKACONNECT_0_PASSWORD"] == "${CONNECT_REST_PASSWORD:?set it in .env}"
    assert "CONNECT_REST_PASSWORD" in compose["services"]["init"]["environment"]  # make compose-up: ops.connectors


# ---- Redis: users from init's file ------------------------------------------------------------------

def test_redis_reads_the_users_init_writes(compose):
    init, redis = compose["services"]["init"], compose["services"]["redis"]
    [written] = re.findall(r"ops\.redis_acl (\S+)", init["command"][-1])
    copied_from, copied_to = re.search(r"install -o redis -g redis -m 600 (\S+) (\S+)",
                                       redis["command"][-1]).groups()
    assert copied_from == written
    assert f"--aclfile {copied_to}" in redis["command"][-1]
    assert "exec docker-entrypoint.sh redis-server" in redis["command"][-1]
    folder = str(Path(written).parent)
    assert f"redis-acl:{folder}" in init["volumes"] and f"redis-acl:{folder}:ro" in redis["volumes"]
    assert redis["depends_on"]["init"]["condition"] == "service_completed_successfully"
    # The volume's mount point belongs to the image's user, so init may write there.
    assert f"chown nobody {folder}" in (ROOT / "docker/python/Dockerfile").read_text()
    # init writes the users before anything else may log in anywhere.
    assert init["command"][-1].index("ops.kafka_security") < init["command"][-1].index("ops.stack prepare")


def test_the_redis_acl_command_writes_the_file(tmp_path, monkeypatch, compose):
    placeholder = next(iter(compose["x-withheld"].values()))
    settings = Settings(_env_file=None, **{name.lower(): placeholder for name in REQUIRED})
    monkeypatch.setattr(redis_acl, "load_settings", lambda: settings)
    path = tmp_path / "users.acl"
    assert redis_acl.main(["redis_acl", str(path)]) == 0
    assert path.read_text().splitlines() == redis_acl.acl_lines(settings)
    assert redis_acl.main(["redis_acl"]) == 2
