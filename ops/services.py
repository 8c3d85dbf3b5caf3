"""The native stack's services, one class each: how to check it can start, start it, tell it is ready, stop it.

PostgreSQL lives in ops.postgres and Airflow's processes in ops.airflow; Redis, Kafka (KRaft, one node) and
Kafka Connect with the Debezium JDBC sink are here. Kafka and Connect come from Maven Central jars
(`make setup`), each on its own classpath, the JDBC plugin only under plugin.path. Their JVMs (and Flink's) carry
the Prometheus JMX exporter agent, which serves the metrics monitoring/jmx/<rules>.yml names on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import uuid
from pathlib import Path

import redis
import requests
from confluent_kafka.admin import AdminClient

from cryptopipe.metrics import SCRAPE_USER
from cryptopipe.settings import ROOT, Settings
from ops import redis_acl, supervise
from ops.process import StackError, pid_from_file, port_open, rotate_at_start, spawn, terminate

CONFIG_DIR = ROOT / "stack" / "config"
LIB_DIR = ROOT / "stack" / "lib"
PLUGIN_DIR = LIB_DIR / "plugins"
AGENT_DIR = LIB_DIR / "metrics"
JMX_RULES_DIR = ROOT / "monitoring" / "jmx"
# The agent's login check (jmx_exporter 1.0.1): PBKDF2 of the password, salted with the salt's UTF-8 bytes, its
# keyLength in bytes, compared as hex. 600,000 iterations is its own default for this algorithm; it keeps the
# logins it accepted in memory, so a scrape does not pay them again.
PBKDF2_ITERATIONS = 600_000
PBKDF2_KEY_BYTES = 32
JDBC_SINK_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"


class Service:
    """One process of the stack. Subclasses set the class attributes and implement start() and ready()."""

    name = ""
    port_var = ""  # the setting that moves its port, named in error messages
    marker = ""  # a string in the process's command line, so a recycled pid is never taken for ours
    # Independent of the services after it: start those without waiting, check this one at the end.
    wait_later = False
    # spawn() runs it under ops.supervise, which restarts it with backoff whenever it exits; the pid file
    # then holds the supervisor's pid, and its command line the service's, marker included.
    supervised = True

    def __init__(self, settings: Settings):
        self.s = settings
        self.run_dir = settings.var_dir / "run"

    @property
    def port(self) -> int | None:
        """Its own listening port; None for a process that listens nowhere."""
        return None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.port is not None else "-"

    @property
    def log_file(self) -> Path:
        return self.s.logs_dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    def pid(self) -> int | None:
        """The pid `up` recorded, if that process still runs and is this service."""
        return pid_from_file(self.pid_file, self.marker)

    def preflight(self) -> None:
        """Raise StackError naming the fix when something it needs is missing (a binary, jars)."""

    def start(self) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def is_up(self) -> bool:
        try:
            return self.ready()
        except Exception:  # a service that is down answers with any kind of connection error
            return False

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid, lambda: self.pid() is not None, timeout=60)

    def supervisor_status(self) -> dict | None:
        """The running supervisor's state (restarts, last exit; see ops.supervise), None when unsupervised."""
        status = supervise.read(self.s, self.name) if self.supervised else None
        pid = self.pid() if status else None
        return status if pid is not None and status.get("supervisor_pid") == pid else None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, stdout: Path | None = None) -> None:
        """Start the process under its supervisor; the output of both goes to its log (rotated at each start
        when large), or to `stdout`."""
        out = stdout or self.log_file
        rotate_at_start(out, self.s.log_max_bytes, self.s.log_backups)
        if self.supervised and not supervise.is_supervised(argv):
            argv = supervise.command(argv, self.name, self.s.var_dir)
        spawn(argv, out, self.pid_file, env)


def read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def write_properties(path: Path, props: dict[str, str], secret: bool = False) -> None:
    """Writes a .properties file; `secret` (it holds passwords): readable by this user only, from its creation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Written by ops.stack from stack/config; edit that, not this.\n" + "".join(
        f"{k}={v}\n" for k, v in props.items())
    if secret:
        write_private(path, text)
    else:
        path.write_text(text)


def write_private(path: Path, text: str) -> None:
    """Replaces `path` with a file of mode 0600 holding `text` (never readable by others, not for a moment)."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)


def monitoring_dir(settings: Settings) -> Path:
    """var/monitoring: the monitoring configs rendered at start, and the secret files they name."""
    return settings.var_dir / "monitoring"


def secret_file(settings: Settings, name: str, text: str) -> Path:
    """var/monitoring/`name`, mode 0600, holding `text`."""
    path = monitoring_dir(settings) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, text)
    return path


def agent_jar() -> Path:
    jars = sorted(AGENT_DIR.glob("jmx_prometheus_javaagent-*.jar"))
    if not jars:
        raise StackError("The JMX exporter agent is missing from stack/lib/metrics: run `make setup`.")
    return jars[-1]


def jmx_config(settings: Settings, rules: str) -> str:
    """monitoring/jmx/<rules>.yml with the agent's login added: the scrapers' (`prometheus`, METRICS_PASSWORD),
    its password as a salted PBKDF2 hash only."""
    text = (JMX_RULES_DIR / f"{rules}.yml").read_text()
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", settings.metrics_password.get_secret_value().encode(), salt.encode(),
                                 PBKDF2_ITERATIONS, PBKDF2_KEY_BYTES).hex()
    return (f"{text.rstrip()}\n\n# Added by ops.services at start: the scrapers' login, as a hash.\n"
            "httpServer:\n  authentication:\n    basic:\n"
            f"      username: {SCRAPE_USER}\n      algorithm: PBKDF2WithHmacSHA256\n"
            f"      iterations: {PBKDF2_ITERATIONS}\n      keyLength: {PBKDF2_KEY_BYTES}\n"
            f"      salt: {salt}\n      passwordHash: {digest}\n")


def jmx_agent(settings: Settings, name: str, rules: str, port: int) -> str:
    """The -javaagent option that serves this JVM's metrics on 127.0.0.1:`port` (the agent's default is every
    interface), its config rendered into var/monitoring/<name>-jmx.yml."""
    config = secret_file(settings, f"{name}-jmx.yml", jmx_config(settings, rules))
    return f"-javaagent:{agent_jar()}=127.0.0.1:{port}:{config}"


def plain_login_configs(settings: Settings, listeners: tuple[str, ...]) -> dict[str, str]:
    """The PLAIN JAAS config of the broker's listeners: `admin` is both the login the broker uses to reach itself and
    its controller, and the one PLAIN user those listeners accept."""
    password = settings.kafka_admin_password.get_secret_value()
    jaas = (f'org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" '
            f'password="{password}" user_admin="{password}";')
    return {f"listener.name.{name}.plain.sasl.jaas.config": jaas for name in listeners}


def plain_admin_config(settings: Settings) -> dict[str, str]:
    """A client login as `admin` over PLAIN, the broker's own: it works before any SCRAM credential exists."""
    return settings.kafka_config("admin") | {"sasl.mechanism": "PLAIN", "sasl.username": "admin",
                                             "sasl.password": settings.kafka_admin_password.get_secret_value()}


class Redis(Service):
    name, port_var, marker = "redis", "REDIS_PORT", "redis-server"

    @property
    def port(self) -> int:
        return self.s.redis_port

    def preflight(self) -> None:
        if shutil.which("redis-server") is None:
            raise StackError("redis-server not found: run `make setup` (as root it installs redis-server).")

    def start(self) -> None:
        data = self.s.var_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        # The users and their rules, rewritten from the settings at every start (passwords as SHA-256 only).
        acl = self.run_dir / "redis.acl"
        redis_acl.write_acl_file(self.s, acl)
        self.spawn([
            "redis-server", str(CONFIG_DIR / "redis.conf"), "--port", str(self.s.redis_port),
            "--bind", self.s.redis_host, "--dir", str(data), "--daemonize", "no", "--logfile", "",
            "--aclfile", str(acl),
        ])

    def ready(self) -> bool:
        return bool(redis.Redis.from_url(self.s.redis_url("admin"), socket_timeout=1).ping())


class JavaService(Service):
    """A JVM process from the jars `make setup` resolved into stack/lib/<jars>; with a metrics port, the JMX
    exporter agent in it serves what monitoring/jmx/<metrics_rules>.yml names."""

    jars = ""
    heap_setting = ""
    metrics_rules = ""
    metrics_port_var = ""

    @property
    def metrics_port(self) -> int | None:
        return None

    def java(self) -> str:
        java = shutil.which(self.s.java)
        if java is None:
            raise StackError(
                f"Java not found (JAVA={self.s.java}). Install Java 17+ (as root: apt-get install "
                "openjdk-17-jre-headless, or run `make setup`), or set JAVA to the java binary."
            )
        out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
        match = re.search(r'version "(\d+)', out)
        if match is None or int(match.group(1)) < 17:
            raise StackError(f"{java} is not Java 17 or newer ({out.strip().splitlines()[0]}); set JAVA to a newer one.")
        return java

    def classpath(self) -> str:
        if not list((LIB_DIR / self.jars).glob("*.jar")):
            raise StackError(f"No Kafka jars in stack/lib/{self.jars}: run `make setup` (it resolves them with Maven).")
        return str(LIB_DIR / self.jars / "*")

    def preflight(self) -> None:
        self.java()
        self.classpath()
        if self.metrics_port is not None:
            agent_jar()
            # The agent ends the JVM when its port is taken, and the supervisor would start it again and again.
            if port_open("127.0.0.1", self.metrics_port):
                raise StackError(f"Port {self.metrics_port} for the metrics of {self.name} is already in use: "
                                 f"stop that process, or set {self.metrics_port_var} in .env to a free port.")

    def metrics_agent(self) -> list[str]:
        """The JVM option that starts the JMX exporter agent, if this service has a metrics port."""
        if self.metrics_port is None:
            return []
        return [jmx_agent(self.s, self.name, self.metrics_rules, self.metrics_port)]

    def jvm(self, name: str, heap: str, metrics: bool = False) -> list[str]:
        """The JVM's options up to its main class; `metrics`: with the JMX exporter agent (the service itself,
        not a tool run with its jars)."""
        return [
            self.java(), "-Xms256m", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={CONFIG_DIR / 'log4j2.properties'}", f"-Dcryptopipe.service={name}",
            f"-Dcryptopipe.logs={self.s.logs_dir}", *(self.metrics_agent() if metrics else []),
            "-cp", self.classpath(),
        ]


class Kafka(JavaService):
    name, port_var, marker, jars = "kafka", "KAFKA_PORT", "kafka.Kafka", "broker"
    metrics_rules, metrics_port_var = "kafka", "KAFKA_METRICS_PORT"

    @property
    def port(self) -> int:
        return self.s.kafka_port

    @property
    def metrics_port(self) -> int:
        return self.s.kafka_metrics_port

    def format_storage(self, conf: Path, cluster_id: str) -> None:
        """Format the log folder of `conf` for a new cluster. The id goes as --cluster-id=ID: one random id in 64
        starts with "-" (URL-safe base64), which the tool's parser takes for an option (a CI run's `make up` died
        of it)."""
        subprocess.run([*self.jvm("kafka-storage", "256m"), "kafka.tools.StorageTool", "format",
                        f"--cluster-id={cluster_id}", "-c", str(conf), "-g"], check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        host, port, cport = self.s.kafka_host, self.s.kafka_port, self.s.kafka_controller_port
        if port_open(host, cport):
            raise StackError(f"Port {cport} for the Kafka controller is in use: set KAFKA_CONTROLLER_PORT in .env.")
        data = self.s.var_dir / "kafka"
        props = read_properties(CONFIG_DIR / "kafka.properties") | {
            "listeners": f"CLIENT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"CLIENT://{host}:{port}",
            "controller.quorum.voters": f"1@{host}:{cport}",
            "log.dirs": str(data),
        } | plain_login_configs(self.s, ("client", "controller"))
        conf = self.run_dir / "kafka.properties"
        write_properties(conf, props, secret=True)
        if not (data / "meta.properties").exists():
            # Formatting happens once; an existing log folder is never re-formatted.
            self.format_storage(conf, base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        # log4j2 writes and rolls logs/kafka.log itself.
        self.spawn([*self.jvm("kafka", self.s.kafka_heap, metrics=True), "kafka.Kafka", str(conf)],
                   stdout=self.s.logs_dir / "kafka.out")

    def ready(self) -> bool:
        if not port_open(self.s.kafka_host, self.s.kafka_port):
            return False
        # The broker's own login: the SCRAM users are made once it answers (ops.kafka_security).
        admin = AdminClient({**plain_admin_config(self.s), "socket.timeout.ms": 2000})
        return len(admin.list_topics(timeout=2).brokers) > 0


class Connect(JavaService):
    name, port_var, marker, jars = "connect", "CONNECT_PORT", "ConnectDistributed", "connect"
    metrics_rules, metrics_port_var = "connect", "CONNECT_METRICS_PORT"

    @property
    def port(self) -> int:
        return self.s.connect_port

    @property
    def metrics_port(self) -> int:
        return self.s.connect_metrics_port

    def preflight(self) -> None:
        super().preflight()
        if not list(PLUGIN_DIR.glob("debezium-connector-jdbc/*.jar")):
            raise StackError("The Debezium JDBC sink plugin is missing from stack/lib/plugins: run `make setup`.")

    def environment(self) -> dict[str, str]:
        """Secrets the connector configs reference as ${env:NAME}; Connect resolves them at deploy time."""
        return {
            "PG_WRITER_PASSWORD": self.s.pg_writer_password.get_secret_value(),
            "PG_JDBC_URL": self.s.jdbc_url(),
            "KAFKA_HEAP_OPTS": "",
        }

    def start(self) -> None:
        login = self.s.kafka_config("connect")
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{login["sasl.username"]}"'
                f' password="{login["sasl.password"]}";')
        # The worker, and the producers, consumers and admin clients it makes for the connectors, log in as
        # `kafka-connect` (whose ACLs allow the connectors' topics and groups only).
        sasl = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512", "sasl.jaas.config": jaas}
        props = read_properties(CONFIG_DIR / "connect-distributed.properties") | {
            "bootstrap.servers": self.s.kafka_bootstrap,
            "listeners": f"http://{self.s.connect_host}:{self.s.connect_port}",
            "rest.advertised.host.name": self.s.connect_host,
            "rest.advertised.port": str(self.s.connect_port),
            "plugin.path": str(PLUGIN_DIR),
        } | sasl | {f"{client}.{k}": v for client in ("producer", "consumer", "admin") for k, v in sasl.items()}
        conf = self.run_dir / "connect.properties"
        write_properties(conf, props, secret=True)
        # BasicAuthSecurityRestExtension reads its users from the file its JAAS login module names.
        users = self.run_dir / "connect-rest-users.properties"
        write_private(users, f"{self.s.connect_rest_user}: {self.s.connect_rest_password.get_secret_value()}\n")
        rest_jaas = self.run_dir / "connect-rest.jaas"
        write_private(rest_jaas, "KafkaConnect {\n  org.apache.kafka.connect.rest.basic.auth.extension."
                                 f'PropertyFileLoginModule required file="{users}";\n}};\n')
        jvm = self.jvm("connect", self.s.connect_heap, metrics=True)
        jvm.insert(1, f"-Djava.security.auth.login.config={rest_jaas}")
        self.spawn([*jvm, "org.apache.kafka.connect.cli.ConnectDistributed", str(conf)],
                   env=self.environment(), stdout=self.s.logs_dir / "connect.out")

    def ready(self) -> bool:
        # /connectors answers only once the worker has joined its group and read the config topic.
        return requests.get(f"{self.s.connect_url}/connectors", auth=self.s.connect_auth, timeout=2).status_code == 200

