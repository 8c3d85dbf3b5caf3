"""The monitoring configs rendered at start, checked without starting anything: the JMX exporter agent's config
(a hash, never the password; the rules of monitoring/jmx), its JVM option (127.0.0.1 only) and Prometheus' jobs."""

from __future__ import annotations

import hashlib
import stat

import pytest
import yaml

from cryptopipe.settings import Settings
from ops import flink, monitoring, services
from ops.services import Connect, Kafka

from .helpers import SECRETS

PASSWORD = "Scrape-Secret-4711"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    # A stand-in for the agent's jar (`make setup` puts the real one in stack/lib/metrics).
    monkeypatch.setattr(services, "AGENT_DIR", tmp_path / "lib")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "jmx_prometheus_javaagent-1.0.1.jar").touch()
    return Settings(_env_file=None, **(SECRETS | {"metrics_password": PASSWORD}), var_dir=tmp_path / "var",
                    logs_dir=tmp_path / "logs", kafka_metrics_port=19404, connect_metrics_port=19405,
                    flink_jobmanager_metrics_port=19250, flink_taskmanager_metrics_port=19251)


@pytest.mark.parametrize("rules", ["kafka", "connect", "flink"])
def test_the_agent_config_holds_the_rules_and_a_hash_of_the_password_only(settings, rules):
    text = services.jmx_config(settings, rules)
    assert PASSWORD not in text
    config = yaml.safe_load(text)
    basic = config["httpServer"]["authentication"]["basic"]
    assert "password" not in basic
    assert basic["username"] == "prometheus" and basic["algorithm"] == "PBKDF2WithHmacSHA256"
    # What jmx_exporter 1.0.1 computes: PBKDF2 over the salt's UTF-8 bytes, keyLength in bytes, as hex.
    expected = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), basic["salt"].encode(), basic["iterations"],
                                   basic["keyLength"]).hex()
    assert basic["passwordHash"] == expected
    # Every rule of the repo's file, each explicit: no catch-all.
    repo = yaml.safe_load((services.JMX_RULES_DIR / f"{rules}.yml").read_text())
    assert config["rules"] == repo["rules"] and config["includeObjectNames"] == repo["includeObjectNames"]
    assert all(rule["name"] and rule["pattern"] not in ("", ".*", "(.*)") for rule in config["rules"])
    prefix = "flink_" if rules == "flink" else "kafka_connect_" if rules == "connect" else "kafka_"
    assert all(rule["name"].startswith(prefix) for rule in config["rules"])
    assert config.get("lowercaseOutputName", False) is (rules != "flink")


@pytest.mark.parametrize("service", [Kafka, Connect, flink.FlinkJobManager, flink.FlinkTaskManager])
def test_the_agent_listens_on_loopback_with_its_config_in_a_private_file(settings, service):
    svc = service(settings)
    [option] = svc.metrics_agent()
    jar, argument = option.removeprefix("-javaagent:").split("=", 1)
    host, port, path = argument.split(":", 2)
    assert jar.endswith("jmx_prometheus_javaagent-1.0.1.jar")
    assert (host, int(port)) == ("127.0.0.1", svc.metrics_port)
    rendered = settings.var_dir / "monitoring" / f"{svc.name}-jmx.yml"
    assert path == str(rendered)
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600
    assert PASSWORD not in rendered.read_text()


def test_only_the_broker_itself_carries_the_agent(settings, monkeypatch):
    monkeypatch.setattr(Kafka, "java", lambda self: "java")
    monkeypatch.setattr(Kafka, "classpath", lambda self: "broker/*")
    kafka = Kafka(settings)
    assert not any(arg.startswith("-javaagent:") for arg in kafka.jvm("kafka-storage", "256m"))
    assert sum(arg.startswith("-javaagent:") for arg in kafka.jvm("kafka", "768m", metrics=True)) == 1


def test_flink_reports_through_jmx_and_opens_no_reporter_port(settings):
    config = flink.config(settings)
    assert config["metrics.reporter.jmx.factory.class"] == "org.apache.flink.metrics.jmx.JMXReporterFactory"
    assert not any(key.startswith("metrics.reporter.") and key.endswith(".port") for key in config)
    assert "PrometheusReporter" not in " ".join(config.values())


def test_prometheus_scrapes_the_agents_with_the_scrapers_login(settings):
    text = monitoring.render(
        "prometheus.yml.j2", interval=10, timeout=10, rules_dir="rules", alertmanager_port=1, prometheus_port=2,
        monitoring_user="operator", scrape_user="prometheus", targets_dir="targets",
        monitoring_password_file="monitoring.password", metrics_password_file="metrics.password",
        redis_exporter_port=3, exporters=monitoring.exporters(settings))
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    for name, port in [("kafka", 19404), ("connect", 19405), ("flink-jobmanager", 19250), ("flink-taskmanager", 19251)]:
        assert jobs[name]["static_configs"] == [{"targets": [f"127.0.0.1:{port}"]}]
        assert jobs[name]["basic_auth"] == {"username": "prometheus", "password_file": "metrics.password"}
