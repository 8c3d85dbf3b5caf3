"""docker-compose.yaml, checked without Docker: valid against the Compose specification, and the same
services, ports, variables, config files and logins as the native stack, each container getting only its secrets."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import bcrypt
import pytest
import yaml
from pydantic import SecretStr

from cryptopipe.metrics import SCRAPE_USER, metric_name
from cryptopipe.settings import ROOT, Settings, user_field
from ops import monitoring, redis_acl
from ops.services import plain_login_configs, read_properties
from ops.stack import NativeStack

COMPOSE = ROOT / "docker-compose.yaml"
SERVICES = {"kafka", "connect", "ksqldb-server", "ksqldb-cli", "postgres", "redis", "kafka-ui", "init",
            "airflow-init", "airflow", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            "source", "redis-sink", "alert-notifier", "replay",
            "flink-tls", "flink-jobmanager", "flink-taskmanager", "flink-sql-gateway", "flink-deploy", "flink-ui",
            "prometheus", "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter", "monitor"}
ONE_SHOT = {"init", "airflow-init", "flink-tls"}
# The functions that serve metrics (each on its <name>_metrics_port) and so are scraped.
FUNCTIONS = ("source", "redis-sink", "alert-notifier")
# The JVMs with the JMX exporter agent: service -> (rules in monitoring/jmx/, the setting of its port).
JVMS = {"kafka": ("kafka", "kafka_metrics_port"), "connect": ("connect", "connect_metrics_port"),
        "flink-jobmanager": ("flink", "flink_jobmanager_metrics_port"),
        "flink-taskmanager": ("flink", "flink_taskmanager_metrics_port")}
# Every character the settings allow in a password that YAML would read otherwise unquoted.
JMX_PASSWORD = "a:b#c{d}[e],f%g!h*i?j@k&"


def assert_agent(option: str, rules: str, port: int, config_dir: Path) -> None:
    """`option` starts the agent from its images' path on `port` with `rules` and the scrapers' login, in a file
    of config_dir only its owner reads."""
    jar, spec = option.removeprefix("-javaagent:").split("=", 1)
    listen, config = spec.split(":", 1)
    assert (jar, int(listen)) == ("/opt/jmx/jmx_prometheus_javaagent.jar", port)
    config = Path(config)
    assert config.parent == config_dir and stat.S_IMODE(config.stat().st_mode) == 0o600
    loaded = yaml.safe_load(config.read_text())
    assert loaded["httpServer"] == {"authentication": {"basic": {"username": SCRAPE_USER, "password": JMX_PASSWORD}}}
    assert {k: v for k, v in loaded.items() if k != "httpServer"} == yaml.safe_load(
        (ROOT / "monitoring/jmx" / f"{rules}.yml").read_text())


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
        ("prometheus", "PROMETHEUS_PORT", "prometheus_port"),
        ("alertmanager", "ALERTMANAGER_PORT", "alertmanager_port"),
        ("node-exporter", "NODE_EXPORTER_PORT", "node_exporter_port"),
        ("postgres-exporter", "POSTGRES_EXPORTER_PORT", "postgres_exporter_port"),
        ("redis-exporter", "REDIS_EXPORTER_PORT", "redis_exporter_port"),
        ("monitor", "MONITOR_PORT", "monitor_port"),
        ("source", "SOURCE_METRICS_PORT", "source_metrics_port"),
        ("redis-sink", "REDIS_SINK_METRICS_PORT", "redis_sink_metrics_port"),
        ("alert-notifier", "ALERT_NOTIFIER_METRICS_PORT", "alert_notifier_metrics_port"),
        ("flink-ui", "FLINK_UI_PORT", "flink_ui_port"),
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
        # A base image the build takes (Kafka's, with the JMX exporter agent added, is KAFKA_IMAGE still).
        for arg, value in (service.get("build") or {}).get("args", {}).items():
            var, default = re.fullmatch(r"\$\{(\w+):-(\S+)\}", value).groups()
            assert defined.get(var, default) == default, (name, arg)
    assert compose["services"]["kafka"]["build"]["args"]["KAFKA_BASE_IMAGE"].startswith("${KAFKA_IMAGE:-")


def test_every_image_is_pinned(compose):
    # A tag that names a release, never `latest` or none: the same `up` runs the same versions.
    images = [s["image"] for s in compose["services"].values() if "build" not in s]
    images += [s["build"]["args"][arg] for s in compose["services"].values()
               for arg in (s.get("build") or {}).get("args", {}) if arg.endswith("_IMAGE")]
    for image in images:
        tag = re.fullmatch(r"\$\{\w+:-([^}]+)\}", image).group(1).rsplit(":", 1)
        assert len(tag) == 2 and re.match(r"v?\d", tag[1]), image


def test_shares_the_native_config_files(compose):
    mounts = [v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", []) if v.startswith("./")]
    assert "./stack/config/kafka.properties" in mounts
    assert "./stack/config/redis.conf" in mounts
    assert "./dags" in mounts
    assert {"./monitoring/rules", "./monitoring/consoles", "./monitoring/jmx"} <= set(mounts)
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
        script = service["command"][0]
        assert script in scripts, name
        module = scripts[script].split(":")[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
        assert service["build"]["dockerfile"] == "docker/python/Dockerfile"
    dockerfile = (ROOT / "docker/python/Dockerfile").read_text()
    for folder in ("functions", "replay", "connectors", "ksql", "flink", "monitoring", "docker/monitoring"):
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
    # The JVMs' JMX exporter agents ask for the scrapers' login.
    "kafka": {"KAFKA_ADMIN_PASSWORD", "METRICS_PASSWORD"},
    "postgres": {"POSTGRES_SUPERUSER_PASSWORD", "AIRFLOW_DB_PASSWORD"},
    "redis": set(),
    # Creates every Kafka user, PostgreSQL role and Redis user; deploys the connectors through Connect's REST API;
    # writes the monitoring services' logins and Alertmanager's webhook into their volumes.
    "init": {"POSTGRES_SUPERUSER_PASSWORD", "CONNECT_REST_PASSWORD", "MONITORING_PASSWORD", "METRICS_PASSWORD",
             "ALERT_WEBHOOK_URL"} | KAFKA_ALL | PG_ALL | REDIS_ALL,
    "connect": {"KAFKA_CONNECT_PASSWORD", "CONNECT_REST_PASSWORD", "PG_WRITER_PASSWORD", "METRICS_PASSWORD"},
    "ksqldb-server": {"KAFKA_KSQLDB_PASSWORD"},
    "ksqldb-cli": set(),
    "kafka-ui": {"KAFKA_KAFKA_UI_PASSWORD", "CONNECT_REST_PASSWORD"},
    # The functions' metrics ask for the scrapers' login.
    "source": {"KAFKA_SOURCE_PASSWORD", "METRICS_PASSWORD"},
    "redis-sink": {"KAFKA_REDIS_SINK_PASSWORD", "REDIS_SINK_PASSWORD", "METRICS_PASSWORD"},
    "alert-notifier": {"KAFKA_ALERT_NOTIFIER_PASSWORD", "REDIS_NOTIFIER_PASSWORD", "ALERT_WEBHOOK_URL",
                       "METRICS_PASSWORD"},
    "replay": {"REPLAY_TOKEN"},
    # Makes Flink's TLS material; its stores' password is one it generates, in a file.
    "flink-tls": set(),
    "flink-deploy": {"KAFKA_STREAM_PASSWORD"},
    "flink-jobmanager": {"METRICS_PASSWORD"},
    "flink-taskmanager": {"METRICS_PASSWORD"},
    "flink-sql-gateway": set(),
    # Its login is the hash init writes into its volume.
    "flink-ui": set(),
    "airflow-init": AIRFLOW,
    "airflow": AIRFLOW | {"AIRFLOW_ADMIN_PASSWORD"},
    "airflow-scheduler": AIRFLOW,
    "airflow-dag-processor": AIRFLOW,
    "airflow-triggerer": AIRFLOW,
    # Their logins are files init writes into their volumes (bcrypt hashes, password files).
    "prometheus": set(),
    "alertmanager": set(),
    "node-exporter": set(),
    "postgres-exporter": {"PG_MONITOR_PASSWORD"},
    # Its login takes the password itself (no hash), and its Redis password is init's file.
    "redis-exporter": {"METRICS_PASSWORD"},
    # What ops.monitor reads natively, with the same logins (ServiceDown's probes of Kafka and Redis as admin).
    "monitor": {"KAFKA_ADMIN_PASSWORD", "CONNECT_REST_PASSWORD", "PG_READER_PASSWORD", "REDIS_ADMIN_PASSWORD",
                "REDIS_READER_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "METRICS_PASSWORD"},
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


def test_no_secret_is_written_in_the_file(compose):
    # Every variable holding a password, secret or token gets one from .env, or the withheld placeholder.
    placeholder = next(iter(compose["x-withheld"].values()))
    for name, service in compose["services"].items():
        for var, value in (service.get("environment") or {}).items():
            if re.search(r"(PASSWORD|PASS|SECRET|TOKEN)$", var):
                assert value in (None, placeholder) or re.fullmatch(r"\$\{(\w+):\?set it in \.env\}", value) and \
                    value[2:].split(":")[0] in SECRETS, (name, var)
    definitions = json.dumps(compose)
    assert "change-me" not in definitions
    assert not re.search(r"\$2[aby]\$\d\d\$", definitions)  # no bcrypt hash either


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
    shutil.copy(ROOT / "docker/monitoring/jmx-agent.sh", etc)  # where docker/connect/Dockerfile puts it
    fake = home / "bin/connect-distributed.sh"
    fake.write_text('#!/bin/bash\necho "$1"\necho "$KAFKA_OPTS"\n'
                    'echo "${KAFKA_CONNECT_PASSWORD:-unset}${METRICS_PASSWORD:-unset}"\n')
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "CONNECT_ETC_DIR": str(etc), "CONNECT_RUN_DIR": str(run),
           "CONNECT_KAFKA_HOME": str(home), "CONNECT_BOOTSTRAP_SERVERS": "kafka:29092",
           "KAFKA_CONNECT_PASSWORD": "k@fka:pw!", "CONNECT_REST_USER": "connect-admin",
           "CONNECT_REST_PASSWORD": "r=st#pw", "CONNECT_METRICS_PORT": "9405", "METRICS_PASSWORD": JMX_PASSWORD,
           "JMX_RULES_DIR": str(ROOT / "monitoring/jmx")}
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
    assert connect_started.password_left == "unsetunset"


def test_connect_rest_users_are_written_owner_only(connect_started):
    run = connect_started.run
    users, jaas = run / "connect-rest-users.properties", run / "connect-rest.jaas"
    assert users.read_text() == "connect-admin: r=st#pw\n"
    assert "PropertyFileLoginModule required" in jaas.read_text() and f'file="{users}";' in jaas.read_text()
    assert f"-Djava.security.auth.login.config={jaas}" in connect_started.opts.split()
    for path in run.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_connect_serves_its_metrics_through_the_agent(connect_started, compose):
    [agent] = [opt for opt in connect_started.opts.split() if opt.startswith("-javaagent:")]
    assert_agent(agent, "connect", Settings.model_fields["connect_metrics_port"].default, connect_started.run)
    connect = compose["services"]["connect"]
    assert connect["environment"]["CONNECT_METRICS_PORT"] == str(Settings.model_fields["connect_metrics_port"].default)
    assert "./monitoring/jmx:/etc/crypto/jmx:ro" in connect["volumes"]


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


# ---- monitoring: the native services, configs and logins ------------------------------------------------

MONITORING = ("prometheus", "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter")
PEOPLE_PASSWORD, SCRAPE_PASSWORD, WEBHOOK = "people-Pa55word", "scrape-Pa55word", "https://hooks.example/T0/B0/x"


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"compose_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def render():
    return load_module(ROOT / "docker/monitoring/render.py")


def test_render_takes_no_option_for_its_folder(render, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (["render.py", "--help"], ["render.py", "-h"], ["render.py"]):
        assert render.main(argv) == 2
    assert list(tmp_path.iterdir()) == []  # nothing written, no folder named --help


def monitoring_settings(**values) -> Settings:
    """The settings init loads: every secret withheld but the monitoring ones."""
    secrets = {name.lower(): "withheld-from-this-container" for name in REQUIRED}
    return Settings(_env_file=None, **{**secrets, "monitoring_password": PEOPLE_PASSWORD,
                                       "metrics_password": SCRAPE_PASSWORD, **values})


@pytest.fixture(scope="module")
def rendered(render, tmp_path_factory) -> Path:
    """What init writes: one folder per volume."""
    root = tmp_path_factory.mktemp("monitoring")
    render.render_all(monitoring_settings(alert_webhook_url=WEBHOOK), root)
    return root


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> dict:
    """The native stack's Prometheus and Alertmanager configs, as ops.monitoring writes them at start."""
    settings = monitoring_settings(alert_webhook_url=WEBHOOK, var_dir=tmp_path_factory.mktemp("var"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(monitoring, "debian_binary", lambda name: name)
        for service in (monitoring.Prometheus, monitoring.Alertmanager):
            patch.setattr(service, "spawn", lambda *args, **kwargs: None)
            service(settings).start()
    folder = settings.var_dir / "monitoring"
    return {name: yaml.safe_load((folder / f"{name}.yml").read_text()) for name in ("prometheus", "alertmanager")}


def flag(service: dict, name: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in service["command"] if arg.startswith(f"{name}=")]
    return value


def test_monitoring_images_are_exact_releases(compose):
    for name in MONITORING:
        image = compose["services"][name]["image"]
        assert re.fullmatch(r"\$\{\w+_IMAGE:-[\w./-]+:v\d+\.\d+\.\d+\}", image), image


def test_monitoring_listens_on_the_native_ports_inside_too(compose):
    # The container ports are the native defaults: Prometheus' targets use them.
    fields = {name: f"{name.replace('-', '_')}_port" for name in (*MONITORING, "monitor")}
    fields.update({f: f"{metric_name(f)}_metrics_port" for f in FUNCTIONS})
    for name, field in fields.items():
        [(_, _, container)] = published(compose["services"][name])
        assert container == Settings.model_fields[field].default, name
        if name in MONITORING:
            address = flag(compose["services"][name], "-web.listen-address" if name == "redis-exporter"
                           else "--web.listen-address")
            assert address == f":{container}", name


def test_alertmanager_is_not_on_kafkas_controller_port(compose):
    alertmanager = compose["services"]["alertmanager"]
    [(_, host, container)] = published(alertmanager)
    controller = Settings.model_fields["kafka_controller_port"].default
    listeners = compose["services"]["kafka"]["environment"]["KAFKA_LISTENERS"]
    assert controller == 9093 and "CONTROLLER://0.0.0.0:9093" in listeners
    assert container != controller and not host.endswith(f":-{controller}}}")
    # No cluster: its gossip port would listen on every interface (9094 by default).
    assert flag(alertmanager, "--cluster.listen-address") == ""


def test_prometheus_keeps_its_data_as_natively(compose):
    prometheus = compose["services"]["prometheus"]
    for limit in ("time", "size"):
        value = flag(prometheus, f"--storage.tsdb.retention.{limit}")
        field = f"prometheus_retention_{limit}"
        assert value == f"${{{field.upper()}:-{Settings.model_fields[field].default}}}"
    assert f"prometheus-data:{flag(prometheus, '--storage.tsdb.path')}" in prometheus["volumes"]
    assert "alertmanager-data:/alertmanager" in compose["services"]["alertmanager"]["volumes"]


def test_prometheus_reads_the_native_rules(compose, render, rendered):
    assert f"./monitoring/rules:{render.RULES_DIR}:ro" in compose["services"]["prometheus"]["volumes"]
    config = yaml.safe_load((rendered / "prometheus/prometheus.yml").read_text())
    [pattern] = config["rule_files"]
    assert pattern.startswith(render.RULES_DIR + "/")
    # The rules, not their unit tests (pipeline.test.yml).
    matched = sorted(p.name for p in (ROOT / "monitoring/rules").glob(Path(pattern).name))
    assert matched == ["pipeline.rules.yml"]


def test_prometheus_serves_the_native_console_pages(compose):
    prometheus = compose["services"]["prometheus"]
    for option, native_dir in (("templates", monitoring.CONSOLES_DIR), ("libraries", monitoring.CONSOLE_LIBRARIES)):
        folder = flag(prometheus, f"--web.console.{option}")
        mounts = [v.split(":") for v in prometheus["volumes"] if v.startswith("./")]
        [source] = [f"{host}{folder.removeprefix(target)}" for host, target, _ in mounts
                    if folder == target or folder.startswith(target + "/")]
        assert ROOT / source == native_dir, option


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) not installed")
def test_the_prometheus_config_passes_promtool(render, rendered, tmp_path):
    # The rules at their place in the repository; promtool then checks them with the config.
    config = tmp_path / "prometheus.yml"
    config.write_text((rendered / "prometheus/prometheus.yml").read_text().replace(
        render.RULES_DIR, str(ROOT / "monitoring/rules")))
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    # The oracle can fail: an action Prometheus does not know.
    config.write_text(config.read_text().replace("action: labeldrop", "action: labelforget"))
    assert subprocess.run(["promtool", "check", "config", str(config)], capture_output=True).returncode != 0


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool (Debian's prometheus-alertmanager) not installed")
def test_the_alertmanager_config_passes_amtool(rendered):
    result = subprocess.run(["amtool", "check-config", str(rendered / "alertmanager/alertmanager.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def jobs(config: dict) -> dict[str, dict]:
    """Each job as Prometheus labels what it scrapes; the native `functions` job is one job per function (each
    writes its target file with its own `job` label)."""
    out = {}
    for job in config["scrape_configs"]:
        if "file_sd_configs" in job:
            out.update({name: job for name in FUNCTIONS})
        else:
            out[job["job_name"]] = job
    return out


def test_prometheus_scrapes_the_native_jobs_at_compose_services(compose, rendered, native):
    config = yaml.safe_load((rendered / "prometheus/prometheus.yml").read_text())
    ours, theirs = jobs(config), jobs(native["prometheus"])
    assert set(ours) == set(theirs)
    for name, job in ours.items():
        # The same login; Redis' exporter has one here (Debian's 1.45 has none).
        expected = (theirs[name].get("basic_auth") or {"username": SCRAPE_USER})["username"]
        assert job["basic_auth"]["username"] == expected, name
        assert job["basic_auth"]["password_file"].startswith("/etc/crypto/"), name
        # At a compose service, on the port it listens on: the one it publishes, or its JMX exporter agent's.
        if "dns_sd_configs" in job:
            [discovery] = job["dns_sd_configs"]
            [host], port = discovery["names"], discovery["port"]
        else:
            [[target]] = [c["targets"] for c in job["static_configs"]]
            host, port = target.split(":")
        service = "prometheus" if host == "localhost" else host
        listens = [Settings.model_fields[JVMS[service][1]].default] if name in JVMS else \
            [container for _, _, container in published(compose["services"][service])]
        assert listens == [int(port)], name
    assert {f: ours[f]["static_configs"][0]["targets"][0].split(":")[0] for f in FUNCTIONS} == {f: f for f in FUNCTIONS}
    # Only with `--profile flink`: found by name, no target without it.
    assert {n for n, j in ours.items() if "dns_sd_configs" in j} == {
        n for n, s in compose["services"].items() if "flink" in s.get("profiles", []) and n in JVMS}
    [alertmanager] = config["alerting"]["alertmanagers"]
    port = published(compose["services"]["alertmanager"])[0][2]
    assert alertmanager["static_configs"] == [{"targets": [f"alertmanager:{port}"]}]


def test_the_monitor_reports_only_services_it_can_probe(render, rendered):
    # Its services metrics keep those it reaches from its container, all of them native services' names.
    names = {service.name for service in NativeStack(monitoring_settings()).services}
    assert set(render.PROBED_SERVICES) <= names
    [monitor] = [j for j in yaml.safe_load((rendered / "prometheus/prometheus.yml").read_text())["scrape_configs"]
                 if j["job_name"] == "monitor"]
    keep, drop, _ = monitor["metric_relabel_configs"]
    assert keep["regex"] == "|".join(render.PROBED_SERVICES)
    assert drop["action"] == "drop" and drop["regex"].startswith("cryptopipe_service_")


def normalized(value):
    """A config with its file paths by file name only, and the monitor's address as `monitor`."""
    if isinstance(value, dict):
        return {k: Path(v).name if k.endswith("_file") else normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"^http://(127\.0\.0\.1|monitor):(\d+)/alerts$", r"http://monitor:\2/alerts", value)
    return value


def test_alertmanager_is_configured_as_natively(compose, rendered, native):
    ours = yaml.safe_load((rendered / "alertmanager/alertmanager.yml").read_text())
    assert normalized(ours) == normalized(native["alertmanager"])
    [receiver] = ours["receivers"]
    [webhook] = receiver["webhook_configs"]
    assert webhook["url"] == f"http://monitor:{published(compose['services']['monitor'])[0][2]}/alerts"
    assert webhook["http_config"]["basic_auth"]["username"] == SCRAPE_USER


def test_without_a_webhook_alertmanager_only_notifies_the_monitor(render, tmp_path):
    render.render_all(monitoring_settings(alert_webhook_url=WEBHOOK), tmp_path)
    render.render_all(monitoring_settings(), tmp_path)
    assert not (tmp_path / "alertmanager/webhook.url").exists()
    [receiver] = yaml.safe_load((tmp_path / "alertmanager/alertmanager.yml").read_text())["receivers"]
    assert "slack_configs" not in receiver


def test_init_writes_each_monitoring_service_its_own_volume(compose, render):
    init = compose["services"]["init"]
    [folder] = re.findall(r"python docker/monitoring/render\.py (\S+)", init["command"][-1])
    assert init["command"][-1].index("render.py") < init["command"][-1].index("ops.stack prepare")
    # The volume init writes each folder into, and its mount point, owned by the image's user so init may write.
    volumes = {target.removeprefix(f"{folder}/"): volume
               for volume, target in (v.split(":") for v in init["volumes"]) if target.startswith(f"{folder}/")}
    assert set(volumes) == set(render.VOLUMES.values())
    dockerfile = (ROOT / "docker/python/Dockerfile").read_text().replace("\\\n", " ")
    for volume_folder in volumes:
        assert re.search(rf"chown nobody [^\n]*{folder}/{volume_folder}\b", dockerfile), volume_folder
    for name, volume_folder in render.VOLUMES.items():
        service = compose["services"][name]
        # Its own volume, read-only, and none of another service's.
        assert f"{volumes[volume_folder]}:{render.SECRETS_DIR}:ro" in service["volumes"], name
        assert {v.split(":")[0] for v in service["volumes"]} & set(volumes.values()) == {volumes[volume_folder]}, name
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
    for name in ("prometheus", "alertmanager", "node-exporter", "postgres-exporter"):
        assert flag(compose["services"][name], "--web.config.file") == f"{render.SECRETS_DIR}/web.yml", name
    assert flag(compose["services"]["prometheus"], "--config.file") == f"{render.SECRETS_DIR}/prometheus.yml"
    assert flag(compose["services"]["alertmanager"], "--config.file") == f"{render.SECRETS_DIR}/alertmanager.yml"


def test_the_logins_init_writes(rendered):
    settings = monitoring_settings()
    logins = {"prometheus": (settings.monitoring_user, PEOPLE_PASSWORD),
              "alertmanager": (settings.monitoring_user, PEOPLE_PASSWORD), "exporters": (SCRAPE_USER, SCRAPE_PASSWORD)}
    for folder, (user, password) in logins.items():
        [(name, digest)] = yaml.safe_load((rendered / folder / "web.yml").read_text())["basic_auth_users"].items()
        assert name == user and bcrypt.checkpw(password.encode(), digest.encode()), folder
    assert (rendered / "prometheus/monitoring.password").read_text() == PEOPLE_PASSWORD
    for folder in ("prometheus", "alertmanager"):
        assert (rendered / folder / "metrics.password").read_text() == SCRAPE_PASSWORD
    assert (rendered / "alertmanager/webhook.url").read_text() == WEBHOOK
    for path in rendered.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            if path.suffix == ".yml":
                assert PEOPLE_PASSWORD not in path.read_text() and SCRAPE_PASSWORD not in path.read_text(), path


def test_the_exporters_log_in_as_their_own_users(compose, render, rendered):
    postgres = compose["services"]["postgres-exporter"]["environment"]
    assert postgres["DATA_SOURCE_USER"] == Settings.PG_ROLES["monitor"]
    assert postgres["DATA_SOURCE_PASS"] == "${PG_MONITOR_PASSWORD:?set it in .env}"
    assert postgres["DATA_SOURCE_URI"].startswith(f"postgres:5432/{Settings.model_fields['pg_database'].default}?")
    redis = compose["services"]["redis-exporter"]
    assert flag(redis, "-redis.user") == Settings.REDIS_USERS["monitor"]
    # Its Redis password only for our Redis' address, from init's file, readable by the user it runs as.
    passwords = json.loads((rendered / "redis-exporter/passwords.json").read_text())
    assert list(passwords) == [flag(redis, "-redis.addr")] == [render.REDIS_ADDRESS]
    assert flag(redis, "-redis.password-file") == f"{render.SECRETS_DIR}/passwords.json"
    assert not any(arg.startswith("-redis.password=") for arg in redis["command"])
    assert redis["user"] == "65534:65534" and flag(redis, "-config-command") == "-"
    assert redis["environment"] == {"REDIS_EXPORTER_BASIC_AUTH_USERNAME": SCRAPE_USER,
                                    "REDIS_EXPORTER_BASIC_AUTH_PASSWORD": "${METRICS_PASSWORD:?set it in .env}"}


# The Python containers that serve metrics, and their plain commands (as natively: no wrapper).
METRICS_COMMANDS = {"source": ["binance-source"], "redis-sink": ["redis-sink"], "alert-notifier": ["alert-notifier"],
                    "monitor": ["python", "-m", "ops.monitor"]}


def test_the_python_containers_serve_their_metrics_on_the_container_network(compose):
    assert set(METRICS_COMMANDS) == {*FUNCTIONS, "monitor"}
    fields = {"monitor": "monitor_port", **{f: f"{metric_name(f)}_metrics_port" for f in FUNCTIONS}}
    for name, command in METRICS_COMMANDS.items():
        service = compose["services"][name]
        assert service["command"] == command, name
        # The process itself listens on the container's interfaces, so Prometheus (another container) reaches it;
        # still behind the scrapers' login.
        assert service["environment"]["METRICS_HOST"] == "0.0.0.0", name
        assert service["environment"]["METRICS_PASSWORD"] == "${METRICS_PASSWORD:?set it in .env}", name
        # On its native port, published to the host on 127.0.0.1 only.
        [(ip, _, container)] = published(service)
        assert (ip, container) == ("127.0.0.1", Settings.model_fields[fields[name]].default), name
    # No other container opens its metrics to the network, and no setting passes it through to all.
    others = {name for name, s in compose["services"].items() if "METRICS_HOST" in (s.get("environment") or {})}
    assert others == set(METRICS_COMMANDS)
    assert "METRICS_HOST" not in compose["x-settings"]
    assert monitoring_settings(metrics_host="0.0.0.0").metrics_host == "0.0.0.0"  # a value the settings accept
    # The monitor reads the source's status (the symbols it follows) where the source writes it.
    source, monitor = compose["services"]["source"], compose["services"]["monitor"]
    run_dir = f"{source['environment']['VAR_DIR']}/run"
    assert monitor["environment"]["VAR_DIR"] == source["environment"]["VAR_DIR"]
    assert f"function-status:{run_dir}" in source["volumes"] and f"function-status:{run_dir}:ro" in monitor["volumes"]
    assert re.search(rf"chown nobody [^\n]*{run_dir}\b", (ROOT / "docker/python/Dockerfile").read_text()
                     .replace("\\\n", " "))


@pytest.mark.parametrize("service", ["kafka", "flink-jobmanager", "flink-taskmanager"])
def test_the_jvms_start_with_the_agent(compose, service, tmp_path):
    # The service's command as its shell gets it, run here with the script from the repository; the image's own
    # start script replaced by one that shows what it would start with.
    definition = compose["services"][service]
    command = local_flink_command(definition["command"][-1], tmp_path)
    start, args = re.search(r"exec (\S+)(.*)$", command).groups()
    command = command.replace(f"exec {start}", "exec env #")
    env = {"PATH": os.environ["PATH"], "METRICS_PASSWORD": JMX_PASSWORD, "JMX_RULES_DIR": str(ROOT / "monitoring/jmx"),
           "JMX_CONFIG_DIR": str(tmp_path), "FLINK_PROPERTIES": "parallelism.default: 1\n"}
    shown = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, check=True).stdout
    assert f"{JMX_PASSWORD}" not in shown  # no process of the service keeps it in its environment
    rules, field = JVMS[service]
    [agent] = re.findall(r"-javaagent:\S+", shown)
    assert_agent(agent, rules, Settings.model_fields[field].default, tmp_path)
    assert definition["environment"]["METRICS_PASSWORD"] == "${METRICS_PASSWORD:?set it in .env}"
    assert "./monitoring/jmx:/etc/crypto/jmx:ro" in definition["volumes"]
    if service == "kafka":
        assert (start, args) == ("/etc/kafka/docker/run", "") and re.search(r"^KAFKA_OPTS=-javaagent:", shown, re.M)
    else:
        role = service.removeprefix("flink-")
        assert (start, args) == ("/docker-entrypoint.sh", f" {role}")
        # A line of its own in the config the entrypoint writes, after the shared ones.
        assert re.search(rf"^FLINK_PROPERTIES=parallelism.default: 1\n\nenv.java.opts.{role}: -javaagent:", shown, re.M)


def test_the_jvm_images_carry_the_agent_of_the_native_pom():
    for image in ("kafka", "connect", "flink"):
        dockerfile = (ROOT / f"docker/{image}/Dockerfile").read_text()
        assert "-f stack/java/pom.xml -P metrics package" in dockerfile, image
        assert "/opt/jmx/jmx_prometheus_javaagent.jar" in dockerfile and "docker/monitoring/jmx-agent.sh" in dockerfile
    ignore = (ROOT / "docker/flink/Dockerfile.dockerignore").read_text().split()
    assert {"!stack/java/pom.xml", "!docker/monitoring/jmx-agent.sh"} <= set(ignore)
    # Flink publishes its metrics as MBeans for the agent, as natively.
    assert "metrics.reporter.jmx.factory.class: org.apache.flink.metrics.jmx.JMXReporterFactory" in (
        ROOT / "docker-compose.yaml").read_text()


# ---- Flink: mutual TLS as natively, with the material of the flink-tls step ------------------------------------

FLINK_CLUSTER = ("flink-jobmanager", "flink-taskmanager", "flink-sql-gateway")
# Where the TLS material is in every container that reads it (FLINK_TLS_DIR), and Flink's config folder.
FLINK_TLS_DIR = "/var/lib/crypto/tls/flink"
FLINK_CONF = "/opt/flink/conf"
IMAGE_CONFIG = "rest:\n  bind-address: 0.0.0.0\n"
OPTIONS_TEXT = '\nsecurity.ssl.rest.enabled: "true"\n'


@pytest.fixture(scope="module")
def tls_step():
    return load_module(ROOT / "docker/flink/tls.py")


@pytest.fixture(scope="module")
def ui_step():
    return load_module(ROOT / "docker/flink/ui.py")


@pytest.fixture(scope="module")
def tls_made(tls_step, tmp_path_factory):
    """What flink-tls writes: the material in a folder of the flink-tls volume, the client's copy in one of
    flink-client-tls."""
    if shutil.which("openssl") is None or shutil.which("keytool") is None:
        pytest.skip("openssl and keytool (make setup) make Flink's TLS material")
    root = tmp_path_factory.mktemp("flink-tls")
    tls = tls_step.make(root / "tls" / "flink", root / "client-tls" / "flink", "java")
    return SimpleNamespace(tls=tls, client=root / "client-tls" / "flink")


def local_flink_command(command: str, tmp_path: Path) -> str:
    """A service's shell command as its shell gets it, runnable here: the JMX agent's script from the repository, and
    Flink's config folder and the TLS folder in tmp_path, with an image config and an options file in them."""
    conf, tls = tmp_path / "conf", tmp_path / "tls"
    conf.mkdir(exist_ok=True)
    tls.mkdir(exist_ok=True)
    (conf / "config.image.yaml").write_text(IMAGE_CONFIG)
    (tls / "flink-ssl.yaml").write_text(OPTIONS_TEXT)
    return (command.replace("$$", "$").replace("/etc/crypto/jmx-agent.sh", str(ROOT / "docker/monitoring/jmx-agent.sh"))
            .replace(FLINK_CONF, str(conf)).replace(FLINK_TLS_DIR, str(tls)))


def mounts(service: dict) -> dict[str, str]:
    """volume name -> mount (with `:ro` when read-only) of a service's named volumes."""
    return {v.split(":", 1)[0]: v.split(":", 1)[1] for v in service.get("volumes", []) if not v.startswith(("./", "/"))}


def test_the_tls_step_makes_the_native_material_naming_the_jobmanager(tls_step, tls_made):
    from ops import flink_tls

    tls = tls_made.tls
    assert stat.S_IMODE(tls.dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in tls.dir.iterdir()) == sorted([*flink_tls.FILES, tls_step.OPTIONS_FILE])
    for path in tls.dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    text = subprocess.run(["openssl", "x509", "-in", "server.crt", "-noout", "-text"], cwd=tls.dir,
                          capture_output=True, text=True, check=True).stdout
    # The native names, and the service's, which the containers reach the JobManager and the gateway by.
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text and "DNS:flink-jobmanager" in text
    check = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "server.crt", "client.crt"], cwd=tls.dir,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # The client's copy: the CA and the client certificate, no CA key, server key or store.
    client = tls_made.client
    assert stat.S_IMODE(client.stat().st_mode) == 0o700
    assert sorted(p.name for p in client.iterdir()) == sorted(tls_step.CLIENT_FILES)
    for name in tls_step.CLIENT_FILES:
        assert (client / name).read_bytes() == (tls.dir / name).read_bytes()
        assert stat.S_IMODE((client / name).stat().st_mode) == 0o600, name


def test_the_options_file_holds_the_native_options_with_stores_on_the_volume(tls_step, tls_made):
    tls = tls_made.tls
    options = yaml.safe_load((tls.dir / tls_step.OPTIONS_FILE).read_text())
    assert options == tls.flink_options()  # every value a string, as natively
    for scope in ("rest", "internal"):
        assert options[f"security.ssl.{scope}.enabled"] == "true"
        assert options[f"security.ssl.{scope}.keystore"] == str(tls.dir / "rest.keystore.p12")
        assert options[f"security.ssl.{scope}.truststore"] == str(tls.dir / "rest.truststore.p12")
    assert options["security.ssl.rest.authentication-enabled"] == "true"
    # The file other files are appended to starts on a line of its own.
    assert (tls.dir / tls_step.OPTIONS_FILE).read_text().startswith("\n")


def test_the_tls_step_hands_the_material_to_its_readers(compose, tls_step, tls_made, monkeypatch):
    step = compose["services"]["flink-tls"]
    assert step["build"] == {"context": ".", "dockerfile": "docker/python/Dockerfile", "target": "flink-tls"}
    assert step["profiles"] == ["flink"] and step["user"] == "0:0" and step["restart"] == "no"
    assert step["environment"]["FLINK_TLS_DIR"] == FLINK_TLS_DIR
    python, script, client_dir = step["command"]
    assert (python, script) == ("python", "docker/flink/tls.py")
    # Both folders on their volumes, which only it writes.
    assert mounts(step) == {"flink-tls": str(Path(FLINK_TLS_DIR).parent),
                            "flink-client-tls": str(Path(client_dir).parent)}
    # Run as in the container (the material exists: it is kept), owners recorded instead of set.
    owners = {}
    monkeypatch.setattr(os, "chown", lambda path, uid, gid: owners.__setitem__(Path(path), (uid, gid)))
    monkeypatch.setattr(tls_step, "load_settings", lambda: SimpleNamespace(flink_tls_dir=tls_made.tls.dir,
                                                                           java="java"))
    assert tls_step.main(["tls.py", str(tls_made.client)]) == 0
    flink, nobody = (tls_step.FLINK_UID,) * 2, (tls_step.NOBODY_UID,) * 2
    assert owners == {**{p: flink for p in (tls_made.tls.dir, *tls_made.tls.dir.iterdir())},
                      **{p: nobody for p in (tls_made.client, *tls_made.client.iterdir())}}
    assert tls_step.main(["tls.py"]) == 2
    # Those are the accounts that read them: Flink's image's user, as flink-deploy runs, and nobody.
    assert compose["services"]["flink-deploy"]["user"] == f"{tls_step.FLINK_UID}:{tls_step.FLINK_UID}"
    assert compose["services"]["flink-ui"]["user"] == f"{tls_step.NOBODY_UID}:{tls_step.NOBODY_UID}"


def test_only_the_tls_stage_of_the_python_image_has_java():
    dockerfile = (ROOT / "docker/python/Dockerfile").read_text()
    stages = re.findall(r"^FROM (.+)$", dockerfile, flags=re.M)
    # The default (last) stage is the plain image every other Python service runs.
    assert stages == ["python:3.11-slim-bookworm AS pipeline", "pipeline AS flink-tls", "pipeline"]
    tls_stage = dockerfile.split("FROM pipeline AS flink-tls")[1].split("\nFROM ")[0]
    assert "openjdk-17-jre-headless" in tls_stage and "openjdk" not in dockerfile.split("FROM pipeline AS flink-tls")[0]
    assert "COPY docker/flink/tls.py docker/flink/ui.py docker/flink/" in dockerfile


@pytest.mark.parametrize("service", FLINK_CLUSTER)
def test_the_flink_cluster_starts_with_the_tls_options_from_the_volume(compose, service, tmp_path):
    definition = compose["services"][service]
    assert mounts(definition)["flink-tls"] == f"{Path(FLINK_TLS_DIR).parent}:ro"
    assert definition["depends_on"]["flink-tls"]["condition"] == "service_completed_successfully"
    # Run here: config.yaml is the image's, then the options file, before the image's entrypoint adds
    # FLINK_PROPERTIES to it.
    command = local_flink_command(definition["command"][-1], tmp_path)
    assert definition["command"][:2] == ["bash", "-c"]
    assert f"cat {FLINK_CONF}/config.image.yaml {FLINK_TLS_DIR}/flink-ssl.yaml > {FLINK_CONF}/config.yaml" in \
        definition["command"][-1]
    assert command.count("exec /docker-entrypoint.sh ") == 1
    env = {"PATH": os.environ["PATH"], "METRICS_PASSWORD": JMX_PASSWORD, "JMX_RULES_DIR": str(ROOT / "monitoring/jmx"),
           "JMX_CONFIG_DIR": str(tmp_path), "FLINK_PROPERTIES": "parallelism.default: 1\n"}
    subprocess.run(["bash", "-c", command.replace("exec /docker-entrypoint.sh ", "exec true ")], env=env,
                   check=True)
    assert (tmp_path / "conf/config.yaml").read_text() == IMAGE_CONFIG + OPTIONS_TEXT
    # No TLS option, password included, goes through the compose file: FLINK_PROPERTIES reaches Flink's config as
    # -D arguments of a command line.
    assert "security.ssl" not in json.dumps(definition) and "-password" not in json.dumps(definition)


def test_the_flink_image_starts_from_its_own_config_kept_owner_only():
    dockerfile = (ROOT / "docker/flink/Dockerfile").read_text().replace("\\\n", " ")
    assert f"cp -p {FLINK_CONF}/config.yaml {FLINK_CONF}/config.image.yaml" in dockerfile
    assert f"chmod 600 {FLINK_CONF}/config.yaml" in dockerfile
    assert re.findall(r"^USER (\w+)", dockerfile, flags=re.M)[-1] == "flink"


def test_the_gateway_calls_the_jobmanager_by_a_name_its_certificate_carries(compose):
    from ops import flink_tls

    command = compose["services"]["flink-sql-gateway"]["command"][-1]
    assert "-Drest.address=localhost -Drest.port=8081" in command
    assert "DNS:localhost" in flink_tls.SERVER_EXT


def test_flink_runs_read_only_and_upload_free_as_natively(compose):
    from ops.flink import read_flat_yaml

    native = read_flat_yaml(ROOT / "stack/config/flink.yaml")
    ours = read_flat_yaml_text(compose["x-flink"]["environment"]["FLINK_PROPERTIES"])
    for key in ("web.submit.enable", "web.cancel.enable"):
        assert ours[key] == native[key] == "false", key


def read_flat_yaml_text(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


FLINK_URL = re.compile(r"(\w+)://([\w.-]+):(8081|8082)\b")


def strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_no_flink_client_in_compose_speaks_plain_http(compose):
    calls = 0
    for name, service in compose["services"].items():
        for part in ("healthcheck", "command", "entrypoint", "environment"):
            for text in strings(service.get(part)):
                for scheme, _, _ in FLINK_URL.findall(text):
                    assert scheme == "https", (name, text)
                    calls += 1
                    # Curl with the client certificate and the CA, from the TLS folder the service mounts.
                    for flag, file in (("--cacert", "ca.crt"), ("--cert", "client.crt"), ("--key", "client.key")):
                        assert f"{flag} {FLINK_TLS_DIR}/{file}" in text, (name, flag)
                    assert mounts(service)["flink-tls"] == f"{Path(FLINK_TLS_DIR).parent}:ro", name
    assert calls == 3  # the healthchecks of the JobManager, the TaskManager and the gateway


def test_the_python_clients_of_flink_hold_the_client_certificate(compose):
    # Each reaches Flink by the settings (FLINK_HOST: https, ops.flink_tls.session) with the client certificate on a
    # volume whose files its own account owns: Flink's for flink-deploy, nobody's (the image's) for the monitor.
    volumes = {"flink-deploy": "flink-tls", "monitor": "flink-client-tls"}
    clients = {name for name, s in compose["services"].items() if "FLINK_HOST" in (s.get("environment") or {})}
    assert clients == set(volumes)
    for name, volume in volumes.items():
        env = compose["services"][name]["environment"]
        assert env["FLINK_HOST"] == "flink-jobmanager" and env["FLINK_TLS_DIR"] == FLINK_TLS_DIR, name
        assert mounts(compose["services"][name])[volume] == f"{Path(FLINK_TLS_DIR).parent}:ro", name
    assert "user" not in compose["services"]["monitor"]  # the Python image's, nobody
    # Who mounts which: the CA's key and the stores only where Flink's account runs.
    holders = {v: {n for n, s in compose["services"].items() if v in mounts(s)}
               for v in ("flink-tls", "flink-client-tls", "flink-ui")}
    assert holders == {"flink-tls": {"flink-tls", *FLINK_CLUSTER, "flink-deploy"},
                       "flink-client-tls": {"flink-tls", "monitor", "flink-ui"},
                       "flink-ui": {"init", "flink-ui"}}


# ---- flink-ui: the native nginx front door, rendered by init ---------------------------------------------------

@pytest.fixture()
def ui_rendered(ui_step, tmp_path, monkeypatch):
    """init's flink-ui files (as nobody, init's user), with the client certificate at tls_dir."""
    from ops import flink_ui

    # As root (which runs these tests on some machines) ops.flink_ui would name root as nginx's user; init is nobody.
    monkeypatch.setattr(flink_ui.os, "getuid", lambda: 65534)
    settings = monitoring_settings()

    def render(tls_dir: Path = ui_step.TLS_DIR) -> Path:
        return ui_step.render(settings, tmp_path / "var", tls_dir)

    return SimpleNamespace(render=render, settings=settings, prefix=tmp_path / "var/run/flink-ui")


def test_flink_ui_renders_the_native_template_with_three_lines_changed(ui_step, ui_rendered):
    from ops.flink_ui import FlinkUi

    ui = FlinkUi(ui_step.compose_settings(ui_rendered.settings, ui_rendered.prefix.parent.parent, ui_step.TLS_DIR))
    native = ui.write_config().read_text().splitlines()
    ours = ui_rendered.render().read_text().splitlines()
    differ = [(a.strip(), b.strip()) for a, b in zip(native, ours) if a != b]
    logs = ui.s.logs_dir
    assert len(native) == len(ours) and sorted(differ) == sorted([
        (f"listen 127.0.0.1:{ui.port};", f"listen {ui.port};"),
        (f"error_log {logs}/flink-ui.log warn;", "error_log stderr warn;"),
        (f"access_log {logs}/flink-ui.access.log;", "access_log /dev/stdout;")])


def test_flink_ui_config_is_get_only_through_the_client_certificate(compose, ui_step, ui_rendered):
    text = ui_rendered.render().read_text()
    port = Settings.model_fields["flink_ui_port"].default
    [(_, _, container)] = published(compose["services"]["flink-ui"])
    assert re.findall(r"^\s*listen (\S+);", text, flags=re.M) == [str(port)] and container == port
    assert re.search(r"limit_except GET \{\s*deny all;\s*\}", text)
    assert re.search(r"location ~ /yarn-\(cancel\|stop\) \{\s*return 403;\s*\}", text)
    assert "proxy_pass https://flink-jobmanager:8081;" in text and "proxy_ssl_verify on;" in text
    tls = ui_step.TLS_DIR
    for directive, file in (("proxy_ssl_certificate", "client.crt"), ("proxy_ssl_certificate_key", "client.key"),
                            ("proxy_ssl_trusted_certificate", "ca.crt")):
        assert f"{directive} {tls}/{file};" in text, directive
    # nobody runs it all (no `user`), logging to the container's output; its login from the file init wrote.
    assert not re.search(r"^\s*user ", text, flags=re.M) and "127.0.0.1" not in text
    assert "error_log stderr warn;" in text and "access_log /dev/stdout;" in text
    assert f"auth_basic_user_file {ui_rendered.prefix}/htpasswd;" in text


def test_flink_ui_login_is_a_crypt_hash_init_writes_owner_only(ui_rendered):
    ui_rendered.render()
    prefix = ui_rendered.prefix
    [line] = (prefix / "htpasswd").read_text().splitlines()
    user, digest = line.split(":", 1)
    assert user == ui_rendered.settings.monitoring_user and digest.startswith("$6$")
    salt = digest.split("$")[2]
    again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=PEOPLE_PASSWORD + "\n",
                           capture_output=True, text=True, check=True).stdout.strip()
    assert again == digest
    assert stat.S_IMODE((prefix / "htpasswd").stat().st_mode) == 0o600
    assert stat.S_IMODE(prefix.stat().st_mode) == 0o700
    assert PEOPLE_PASSWORD not in (prefix / "nginx.conf").read_text()


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="nginx (make setup) not installed")
def test_flink_ui_config_passes_nginx_t(ui_rendered, tls_made):
    from .helpers import free_port

    conf = ui_rendered.render(tls_made.client)
    # The JobManager's name resolves only on the compose network, and the port here is any free one.
    text = conf.read_text().replace("flink-jobmanager", "127.0.0.1")
    conf.write_text(re.sub(r"listen \d+;", f"listen 127.0.0.1:{free_port()};", text))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [nginx, "-t", "-q", "-p", str(ui_rendered.prefix), "-c", str(conf), "-e", "stderr"]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # The oracle can fail: a method nginx does not know.
    conf.write_text(conf.read_text().replace("limit_except GET", "limit_except FETCH"))
    assert subprocess.run(argv, capture_output=True).returncode != 0


def test_the_flink_ui_service(compose, ui_step):
    service = compose["services"]["flink-ui"]
    assert re.fullmatch(r"\$\{FLINK_UI_IMAGE:-nginx:\d+\.\d+\.\d+-alpine\}", service["image"])
    assert service["profiles"] == ["flink"]
    prefix = str(ui_step.PREFIX)
    assert service["command"] == ["nginx", "-p", prefix, "-c", f"{prefix}/nginx.conf", "-e", "stderr"]
    # Its volume read-write (its pid and temporary files go there too), the client certificate read-only.
    assert mounts(service) == {"flink-ui": prefix, "flink-client-tls": f"{ui_step.TLS_DIR.parent}:ro"}
    assert {dep: c["condition"] for dep, c in service["depends_on"].items()} == {
        "init": "service_completed_successfully", "flink-tls": "service_completed_successfully",
        "flink-jobmanager": "service_healthy"}
    # Up is a 401 without the login, on the port it listens on.
    [(_, _, container)] = published(service)
    assert f"http://127.0.0.1:{container}/" in service["healthcheck"]["test"][1] and "401" in \
        service["healthcheck"]["test"][1]
    # init writes its files where it reads them, before anything else starts.
    init = compose["services"]["init"]
    assert mounts(init)["flink-ui"] == prefix
    assert init["command"][-1].index("python docker/flink/ui.py") < init["command"][-1].index("ops.stack prepare")
    assert "MONITORING_PASSWORD" in init["environment"]
    dockerfile = (ROOT / "docker/python/Dockerfile").read_text().replace("\\\n", " ")
    assert re.search(rf"chown nobody [^\n]*{prefix}\b", dockerfile)
