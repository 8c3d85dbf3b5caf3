"""docker-compose's `init` step for monitoring: what ops.monitoring renders into var/monitoring natively, rendered
from the settings into one volume per monitoring service.

    python docker/monitoring/render.py /var/lib/crypto/monitoring

Under that folder init mounts each service's volume (VOLUMES); the service mounts it read-only at SECRETS_DIR, so a
file written to <folder>/prometheus/x is /etc/crypto/x in Prometheus. Logins as bcrypt hashes (monitoring/web.yml.j2),
passwords only in files of mode 0600 owned by init's user, nobody, which the monitoring images run as too.
Alertmanager's config is monitoring/alertmanager.yml.j2 itself, posting to the monitor's container; Prometheus' is
docker/monitoring/prometheus.yml.j2, the native jobs at compose's service names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import bcrypt
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from cryptopipe.metrics import SCRAPE_USER
from cryptopipe.settings import Settings, load_settings
from ops.monitoring import INHIBITIONS, render
from ops.services import write_private

HERE = Path(__file__).resolve().parent
# Where each monitoring service finds its volume, and Prometheus the rules (monitoring/rules/).
SECRETS_DIR = "/etc/crypto"
RULES_DIR = "/etc/prometheus/rules"
# The folder (volume) of each service under init's folder.
VOLUMES = {"prometheus": "prometheus", "alertmanager": "alertmanager", "node-exporter": "exporters",
           "postgres-exporter": "exporters", "redis-exporter": "redis-exporter"}
REDIS_ADDRESS = "redis://redis:6379"
# The native stack's services ops.monitor can probe from its container (see prometheus.yml.j2).
PROBED_SERVICES = ("kafka", "redis", "connect", "airflow-api", "airflow-scheduler", "airflow-dag-processor",
                   "airflow-triggerer")


def web_yml(user: str, password: str) -> str:
    """A --web.config.file asking for `user`'s login, as ops.monitoring.web_config writes it."""
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    return render("web.yml.j2", user=user, hash=digest)


def scraped(s: Settings) -> list[tuple[str, str]]:
    """(job, target) behind the scrapers' login: the native jobs, each at its compose service on its native port; the
    functions (found natively by the target file each writes at start) have a job each, named after them as
    natively."""
    return [("node", f"node-exporter:{s.node_exporter_port}"),
            ("postgres", f"postgres-exporter:{s.postgres_exporter_port}"),
            ("monitor", f"monitor:{s.monitor_port}"),
            ("kafka", f"kafka:{s.kafka_metrics_port}"),
            ("connect", f"connect:{s.connect_metrics_port}"),
            ("redis", f"redis-exporter:{s.redis_exporter_port}"),
            ("source", f"source:{s.source_metrics_port}"),
            ("redis-sink", f"redis-sink:{s.redis_sink_metrics_port}"),
            ("alert-notifier", f"alert-notifier:{s.alert_notifier_metrics_port}")]


def discovered(s: Settings) -> list[tuple[str, str, int]]:
    """(job, service, port) of the JVMs of `--profile flink`, found by their service's name when they run."""
    return [("flink-jobmanager", "flink-jobmanager", s.flink_jobmanager_metrics_port),
            ("flink-taskmanager", "flink-taskmanager", s.flink_taskmanager_metrics_port)]


def prometheus_yml(s: Settings) -> str:
    env = Environment(loader=FileSystemLoader(HERE), undefined=StrictUndefined, keep_trailing_newline=True,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("prometheus.yml.j2").render(
        interval=s.scrape_interval_s, timeout=min(10, s.scrape_interval_s), rules_dir=RULES_DIR,
        secrets_dir=SECRETS_DIR, monitoring_user=s.monitoring_user, scrape_user=SCRAPE_USER,
        prometheus_port=s.prometheus_port, alertmanager_port=s.alertmanager_port, targets=scraped(s),
        discovered=discovered(s), probed_services=PROBED_SERVICES)


def alertmanager_yml(s: Settings) -> str:
    """monitoring/alertmanager.yml.j2 with the monitor's container instead of 127.0.0.1."""
    text = render("alertmanager.yml.j2", monitor_port=s.monitor_port, scrape_user=SCRAPE_USER,
                  metrics_password_file=f"{SECRETS_DIR}/metrics.password",
                  webhook_url_file=f"{SECRETS_DIR}/webhook.url" if s.alert_webhook_url else None,
                  inhibitions=list(INHIBITIONS.items()))
    native = f"http://127.0.0.1:{s.monitor_port}/alerts"
    if text.count(native) != 1:
        raise SystemExit(f"monitoring/alertmanager.yml.j2 no longer posts to {native} once: update {__file__}")
    return ("# docker-compose: written by init (docker/monitoring/render.py), posting to the monitor's container.\n"
            + text.replace(native, f"http://monitor:{s.monitor_port}/alerts"))


def render_all(s: Settings, root: Path) -> None:
    """Every monitoring service's files, into root/<its volume>."""
    monitoring, metrics = s.monitoring_password.get_secret_value(), s.metrics_password.get_secret_value()
    files = {  # by volume (VOLUMES)
        "prometheus": {"prometheus.yml": prometheus_yml(s), "web.yml": web_yml(s.monitoring_user, monitoring),
                       "monitoring.password": monitoring, "metrics.password": metrics},
        "alertmanager": {"alertmanager.yml": alertmanager_yml(s), "web.yml": web_yml(s.monitoring_user, monitoring),
                         "metrics.password": metrics,
                         **({"webhook.url": s.alert_webhook_url} if s.alert_webhook_url else {})},
        "exporters": {"web.yml": web_yml(SCRAPE_USER, metrics)},
        # A password per address, as natively: its /scrape?target= endpoint hands it to no other.
        "redis-exporter": {"passwords.json": json.dumps({REDIS_ADDRESS: s.redis_monitor_password.get_secret_value()})},
    }
    for folder, texts in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            write_private(root / folder / name, text)
        # A webhook URL removed from .env must not stay in use.
        if folder == "alertmanager" and "webhook.url" not in texts:
            (root / folder / "webhook.url").unlink(missing_ok=True)
        print(f"monitoring: wrote {', '.join(sorted(texts))} for {folder}")


def main(argv: list[str]) -> int:
    # Anything else (`--help`, a typo) would otherwise be taken for the folder and written into.
    if len(argv) != 2 or argv[1].startswith("-"):
        print(f"usage: python {argv[0]} <folder>", file=sys.stderr)
        return 2
    render_all(load_settings(), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
