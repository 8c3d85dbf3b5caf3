"""Monitoring services of the native stack: Prometheus, Alertmanager, the node, PostgreSQL and Redis exporters,
and the pipeline's own exporter (ops.monitor). All from Debian's packages (`make setup`), on 127.0.0.1. The JVMs'
metrics (Kafka, Connect, Flink) come from the JMX exporter agent inside each (ops.services).

Their configs are rendered from monitoring/*.j2 into var/monitoring at every start, from the settings:
Prometheus and Alertmanager ask for the people's login (MONITORING_USER), every exporter but Redis's for the
scrapers' (`prometheus`, METRICS_PASSWORD); the logins are given to them as bcrypt hashes only, and passwords
reach the processes in files of mode 0600, never on a command line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

import bcrypt
import requests
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from cryptopipe.logs import LOG_FILE_VAR
from cryptopipe.metrics import SCRAPE_USER, targets_dir
from cryptopipe.settings import ROOT, Settings
from ops.process import StackError
from ops.services import Service, monitoring_dir, secret_file

MONITORING_DIR = ROOT / "monitoring"
RULES_DIR = MONITORING_DIR / "rules"
CONSOLES_DIR = MONITORING_DIR / "consoles"
# The consoles' own library (head, menu, tables): Debian's example libraries link to pages we do not ship and load
# a script the package lacks.
CONSOLE_LIBRARIES = CONSOLES_DIR / "lib"

# ServiceDown of a service (key) silences the alerts of the parts that cannot work without it (value: a regex
# on the rules' `component` label), so Kafka down pages once, not once per connector, group and function.
INHIBITIONS = {
    "kafka": "connect|flink|source|redis-sink|alert-notifier|lag|dlq|freshness",
    "postgres": "connect|freshness|airflow",
    "redis": "redis-sink|alert-notifier|freshness",
    "connect": "connect|lag|freshness",
    "flink-jobmanager": "flink|lag|freshness",
    "flink-taskmanager": "flink|lag|freshness",
}


def render(template: str, **values) -> str:
    env = Environment(loader=FileSystemLoader(MONITORING_DIR), undefined=StrictUndefined, keep_trailing_newline=True,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template(template).render(**values)


def web_config(settings: Settings, name: str, user: str, password: str) -> Path:
    """A --web.config.file asking for `user`'s login, its password as a bcrypt hash."""
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    return secret_file(settings, f"{name}-web.yml", render("web.yml.j2", user=user, hash=digest))


def scrape_login(settings: Settings) -> tuple[str, str]:
    """requests' `auth` for the exporters and the functions' metrics."""
    return SCRAPE_USER, settings.metrics_password.get_secret_value()


def metrics_password_file(settings: Settings) -> Path:
    """The scrapers' password in a file of mode 0600, for Prometheus' scrapes and Alertmanager's webhook."""
    return secret_file(settings, "metrics.password", settings.metrics_password.get_secret_value())


def people_login(settings: Settings) -> tuple[str, str]:
    """The people's login (requests' `auth`) for Prometheus, Alertmanager and the Flink UI's front door."""
    return settings.monitoring_user, settings.monitoring_password.get_secret_value()


def prometheus_api(settings: Settings, path: str, params: dict | None = None, timeout: float = 10) -> dict:
    """The `data` of Prometheus' HTTP API answer for `path` (e.g. "alerts", "rules", "query"), as people log in."""
    answer = requests.get(f"http://127.0.0.1:{settings.prometheus_port}/api/v1/{path}", params=params,
                          auth=people_login(settings), timeout=timeout)
    answer.raise_for_status()
    return answer.json()["data"]


def alert_holds(settings: Settings) -> dict[str, float]:
    """{alert name: its rule's `for:` in seconds}, as the running Prometheus loaded the rules."""
    return {rule["name"]: float(rule.get("duration", 0))
            for group in prometheus_api(settings, "rules", {"type": "alert"})["groups"] for rule in group["rules"]}


def debian_binary(name: str) -> str:
    # Daemons such as nginx install into /usr/sbin, which is not on every user's PATH.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if path is None:
        raise StackError(f"{name} not found: run `make setup` (as root it installs Debian's {name} package).")
    return path


class MonitoringService(Service):
    """A Debian-packaged server answering GET `probe` once ready, behind `login`."""

    binary = ""
    probe = "/metrics"
    wait_later = True

    def preflight(self) -> None:
        debian_binary(self.binary)

    def login(self) -> tuple[str, str] | None:
        return scrape_login(self.s)

    def ready(self) -> bool:
        resp = requests.get(f"http://127.0.0.1:{self.port}{self.probe}", auth=self.login(), timeout=2)
        return resp.status_code == 200


class NodeExporter(MonitoringService):
    name, port_var, marker, binary = "node-exporter", "NODE_EXPORTER_PORT", "prometheus-node-exporter", \
        "prometheus-node-exporter"

    @property
    def port(self) -> int:
        return self.s.node_exporter_port

    def start(self) -> None:
        web = web_config(self.s, self.name, SCRAPE_USER, self.s.metrics_password.get_secret_value())
        self.spawn([debian_binary(self.binary), f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--web.config.file={web}"])


class PostgresExporter(MonitoringService):
    name, port_var, marker, binary = "postgres-exporter", "POSTGRES_EXPORTER_PORT", "prometheus-postgres-exporter", \
        "prometheus-postgres-exporter"

    @property
    def port(self) -> int:
        return self.s.postgres_exporter_port

    def start(self) -> None:
        web = web_config(self.s, self.name, SCRAPE_USER, self.s.metrics_password.get_secret_value())
        p = self.s.pg_params("monitor")
        # In its environment, readable by this user only (never on a command line, which every user sees).
        dsn = (f"postgresql://{quote(str(p['user']), safe='')}:{quote(str(p['password']), safe='')}@{p['host']}:"
               f"{p['port']}/{quote(str(p['dbname']), safe='')}?sslmode=disable")
        self.spawn([debian_binary(self.binary), f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--web.config.file={web}"], env={"DATA_SOURCE_NAME": dsn})


class RedisExporter(MonitoringService):
    name, port_var, marker, binary = "redis-exporter", "REDIS_EXPORTER_PORT", "prometheus-redis-exporter", \
        "prometheus-redis-exporter"

    @property
    def port(self) -> int:
        return self.s.redis_exporter_port

    def login(self) -> None:
        return None  # redis_exporter 1.45 has no login of its own: 127.0.0.1 only, INFO's numbers only

    def start(self) -> None:
        address = f"redis://{self.s.redis_host}:{self.s.redis_port}"
        # A password per address: its /scrape?target= endpoint sends a configured -redis.password to any address
        # it is asked to, so the password is tied to ours alone.
        passwords = secret_file(self.s, "redis-exporter-passwords.json",
                                json.dumps({address: self.s.redis_monitor_password.get_secret_value()}))
        self.spawn([debian_binary(self.binary), "-web.listen-address", f"127.0.0.1:{self.port}",
                    "-redis.addr", address, "-redis.user", self.s.REDIS_USERS["monitor"],
                    "-redis.password-file", str(passwords), "-config-command", "-"])


class Monitor(Service):
    """ops.monitor: what `make status` shows, as metrics; Alertmanager's notifications into logs/alerts.log."""

    name, port_var, marker = "monitor", "MONITOR_PORT", "ops.monitor"
    wait_later = True

    @property
    def port(self) -> int:
        return self.s.monitor_port

    def start(self) -> None:
        # Its log rotates itself (cryptopipe.logs); what it prints outside logging goes to monitor.out.
        self.spawn([sys.executable, "-m", "ops.monitor"], env={LOG_FILE_VAR: str(self.log_file)},
                   stdout=self.s.logs_dir / "monitor.out")

    def ready(self) -> bool:
        resp = requests.get(f"http://127.0.0.1:{self.port}/metrics", auth=scrape_login(self.s), timeout=2)
        return resp.status_code == 200


class Alertmanager(MonitoringService):
    name, port_var, marker, binary = "alertmanager", "ALERTMANAGER_PORT", "monitoring/alertmanager.yml", \
        "prometheus-alertmanager"
    probe = "/-/ready"

    @property
    def port(self) -> int:
        return self.s.alertmanager_port

    def login(self) -> tuple[str, str]:
        return people_login(self.s)

    def start(self) -> None:
        s = self.s
        web = web_config(s, self.name, s.monitoring_user, s.monitoring_password.get_secret_value())
        webhook = secret_file(s, "webhook.url", s.alert_webhook_url) if s.alert_webhook_url else None
        conf = monitoring_dir(s) / "alertmanager.yml"
        conf.write_text(render("alertmanager.yml.j2", monitor_port=s.monitor_port, scrape_user=SCRAPE_USER,
                               metrics_password_file=metrics_password_file(s), webhook_url_file=webhook,
                               inhibitions=list(INHIBITIONS.items())))
        data = s.var_dir / "alertmanager"
        data.mkdir(parents=True, exist_ok=True)
        # No cluster: its gossip port would listen on every interface.
        self.spawn([debian_binary(self.binary), f"--config.file={conf}", f"--web.config.file={web}",
                    f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.path={data}",
                    "--cluster.listen-address=", "--data.retention=120h"])


class Prometheus(MonitoringService):
    name, port_var, marker, binary = "prometheus", "PROMETHEUS_PORT", "monitoring/prometheus.yml", "prometheus"
    probe = "/-/ready"

    @property
    def port(self) -> int:
        return self.s.prometheus_port

    def login(self) -> tuple[str, str]:
        return people_login(self.s)

    def preflight(self) -> None:
        super().preflight()
        debian_binary("promtool")

    def start(self) -> None:
        s = self.s
        web = web_config(s, self.name, s.monitoring_user, s.monitoring_password.get_secret_value())
        conf = monitoring_dir(s) / "prometheus.yml"
        targets_dir(s).mkdir(parents=True, exist_ok=True)
        conf.write_text(render(
            "prometheus.yml.j2", interval=s.scrape_interval_s, timeout=min(10, s.scrape_interval_s),
            rules_dir=RULES_DIR, alertmanager_port=s.alertmanager_port, prometheus_port=s.prometheus_port,
            monitoring_user=s.monitoring_user, scrape_user=SCRAPE_USER, targets_dir=targets_dir(s),
            monitoring_password_file=secret_file(s, "monitoring.password", s.monitoring_password.get_secret_value()),
            metrics_password_file=metrics_password_file(s), redis_exporter_port=s.redis_exporter_port,
            exporters=exporters(s)))
        data = s.var_dir / "prometheus"
        data.mkdir(parents=True, exist_ok=True)
        self.spawn([debian_binary(self.binary), f"--config.file={conf}", f"--web.config.file={web}",
                    f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.path={data}",
                    f"--storage.tsdb.retention.time={s.prometheus_retention_time}",
                    f"--storage.tsdb.retention.size={s.prometheus_retention_size}",
                    f"--web.console.templates={CONSOLES_DIR}", f"--web.console.libraries={CONSOLE_LIBRARIES}"])


def exporters(settings: Settings) -> list[tuple[str, int]]:
    """(job, port) of every target on a fixed port behind the scrapers' login: the exporters, and the JMX exporter
    agent in Kafka, Connect and Flink's two processes (each job named after its service)."""
    s = settings
    return [("node", s.node_exporter_port), ("postgres", s.postgres_exporter_port), ("monitor", s.monitor_port),
            ("kafka", s.kafka_metrics_port), ("connect", s.connect_metrics_port),
            ("flink-jobmanager", s.flink_jobmanager_metrics_port),
            ("flink-taskmanager", s.flink_taskmanager_metrics_port)]


def services(settings: Settings) -> list[Service]:
    return [NodeExporter(settings), PostgresExporter(settings), RedisExporter(settings), Monitor(settings),
            Alertmanager(settings), Prometheus(settings)]
