"""Monitoring on the running stack: every endpoint asks for its login, Prometheus scrapes every part, the monitor's
numbers agree with plain readings, and a real fault travels from the supervisor through a rule and Alertmanager
into logs/alerts.log and `make status`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import psutil
import psycopg2
import requests
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from chaos.faults import worker_of
from cryptopipe.run import read_status
from cryptopipe.settings import ROOT
from ops import flink_deploy, flink_tls
from ops.monitor import CHECKPOINT_CONFIRM_S, DeadLetterCounter
from ops.monitoring import people_login, scrape_login

from .helpers import create_topics, delete_topics, wait_for

SCRAPED_JOBS = {"prometheus", "alertmanager", "node", "postgres", "redis", "monitor", "kafka", "connect",
                "flink-jobmanager", "flink-taskmanager"}
READ_PARTS = ("services", "lag", "dead_letters", "connectors", "flink", "freshness", "airflow")


def endpoints(settings) -> dict[str, tuple[str, tuple[str, str]]]:
    """name -> (URL, the login it asks for)."""
    people, scraper = people_login(settings), scrape_login(settings)
    return {
        "prometheus": (f"http://127.0.0.1:{settings.prometheus_port}/api/v1/query?query=up", people),
        "prometheus console": (f"http://127.0.0.1:{settings.prometheus_port}/graph", people),
        "alertmanager": (f"http://127.0.0.1:{settings.alertmanager_port}/api/v2/alerts", people),
        "node-exporter": (f"http://127.0.0.1:{settings.node_exporter_port}/metrics", scraper),
        "postgres-exporter": (f"http://127.0.0.1:{settings.postgres_exporter_port}/metrics", scraper),
        "monitor": (f"http://127.0.0.1:{settings.monitor_port}/metrics", scraper),
        "monitor's alert receiver": (f"http://127.0.0.1:{settings.monitor_port}/alerts", scraper),
        # The JMX agents inside the Kafka, Connect and Flink JVMs.
        "kafka": (f"http://127.0.0.1:{settings.kafka_metrics_port}/metrics", scraper),
        "connect": (f"http://127.0.0.1:{settings.connect_metrics_port}/metrics", scraper),
        "flink-jobmanager": (f"http://127.0.0.1:{settings.flink_jobmanager_metrics_port}/metrics", scraper),
        "flink-taskmanager": (f"http://127.0.0.1:{settings.flink_taskmanager_metrics_port}/metrics", scraper),
    }


def query(settings, expr: str) -> list[dict]:
    resp = requests.get(f"http://127.0.0.1:{settings.prometheus_port}/api/v1/query", params={"query": expr},
                        auth=people_login(settings), timeout=10)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def monitor_samples(settings) -> list:
    resp = requests.get(f"http://127.0.0.1:{settings.monitor_port}/metrics", auth=scrape_login(settings), timeout=10)
    resp.raise_for_status()
    return [s for family in text_string_to_metric_families(resp.text) for s in family.samples]


def test_every_monitoring_endpoint_refuses_a_request_without_its_login(stack, settings):
    people, scraper = people_login(settings), scrape_login(settings)
    for name, (url, login) in endpoints(settings).items():
        for wrong in (None, (login[0], login[1] + "x"), (login[0] + "x", login[1]),
                      scraper if login == people else people):
            resp = requests.get(url, auth=wrong, timeout=10)
            assert resp.status_code == 401, f"{name} answered {resp.status_code} to {wrong and wrong[0]!r}"
            assert "# HELP" not in resp.text and '"data"' not in resp.text, name
        method = requests.post if "receiver" in name else requests.get
        resp = method(url, auth=login, timeout=10)
        # The receiver takes only Alertmanager's notifications: an empty POST is refused, but past the login.
        assert resp.status_code == (413 if "receiver" in name else 200), f"{name}: {resp.status_code} {resp.text[:200]}"


def test_every_monitoring_port_listens_on_loopback_only(stack, settings):
    ports = {settings.prometheus_port, settings.alertmanager_port, settings.node_exporter_port,
             settings.postgres_exporter_port, settings.redis_exporter_port, settings.monitor_port,
             settings.kafka_metrics_port, settings.connect_metrics_port, settings.flink_jobmanager_metrics_port,
             settings.flink_taskmanager_metrics_port}
    # A JVM listens through an IPv6 socket bound to the IPv4 loopback address, ::ffff:127.0.0.1: the same address.
    listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    for port in ports:
        addresses = {ip for ip, p in listening if p == port}
        assert addresses == {"127.0.0.1"}, f"port {port} listens on {addresses}"
    # Alertmanager's cluster gossip (9094 by default, every interface) is off.
    assert not any(p == 9094 for _, p in listening)


def test_the_redis_exporter_without_a_login_shows_no_secret(stack, settings):
    """redis_exporter 1.45 cannot ask for a login: it must show Redis' numbers and nothing a password could be
    learned from, and its /scrape endpoint must not hand our password to a server someone else names."""
    text = requests.get(f"http://127.0.0.1:{settings.redis_exporter_port}/metrics", timeout=10).text
    assert "redis_up 1" in text
    assert "redis_connected_clients" in text  # INFO's numbers are there
    secrets = [v.get_secret_value() for v in settings.model_dump().values() if hasattr(v, "get_secret_value")]
    assert len(secrets) > 20
    for secret in secrets:
        assert secret not in text
    # A fake Redis on a port of ours records what the exporter sends it when asked to scrape it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    target = f"redis://127.0.0.1:{listener.getsockname()[1]}"
    threading.Thread(target=lambda: requests.get(f"http://127.0.0.1:{settings.redis_exporter_port}/scrape",
                                                 params={"target": target}, timeout=30), daemon=True).start()
    received = b""
    try:
        conn, _ = listener.accept()
        conn.settimeout(3)
        try:
            while chunk := conn.recv(4096):
                received += chunk
        except TimeoutError:
            pass  # it waits for an answer that never comes
        conn.close()
    finally:
        listener.close()
    assert received  # it did connect and speak
    assert settings.redis_monitor_password.get_secret_value().encode() not in received


def test_prometheus_scrapes_every_part(stack, settings):
    def healthy() -> dict | None:
        resp = requests.get(f"http://127.0.0.1:{settings.prometheus_port}/api/v1/targets",
                            auth=people_login(settings), timeout=10).json()
        health = {t["labels"]["job"]: t["health"] for t in resp["data"]["activeTargets"]}
        if not (SCRAPED_JOBS <= set(health) and all(health[j] == "up" for j in SCRAPED_JOBS)):
            return None
        # and a full reading of the monitor's scraped (one started a moment ago has not read every part yet)
        return health if len(query(settings, "cryptopipe_monitor_read_ok")) == len(READ_PARTS) else None

    wait_for(healthy, 4 * settings.scrape_interval_s + 10, "every scrape target up")
    expected = {
        "pg_up": {(): "1"}, "redis_up": {(): "1"}, "cryptopipe_flink_job_running": {(): "1"},
        # every service but the monitor itself (it is what answers), seen up: the stack is up
        "cryptopipe_service_up": {(("service", svc.name),): "1" for svc in stack.services if svc.name != "monitor"},
        "cryptopipe_monitor_read_ok": {(("part", p),): "1" for p in READ_PARTS},
        "cryptopipe_airflow_healthy": {(("component", c),): "1" for c in ("metadatabase", "scheduler", "triggerer",
                                                                         "dag_processor")},
    }

    def seen() -> dict:
        out = {}
        for expr in expected:
            out[expr] = {tuple((k, v) for k, v in sorted(r["metric"].items()) if k in ("service", "part", "component")):
                         r["value"][1] for r in query(settings, expr)}
        return out

    # A service a test before this one restarted may still be on its way back: a few readings' time.
    state: dict = {}

    def as_expected() -> bool:
        state.update(seen())
        return state == expected

    try:
        wait_for(as_expected, 6 * settings.scrape_interval_s, "every series as expected")
    except AssertionError as err:
        raise AssertionError(f"{err}; last seen: {state}") from None
    assert query(settings, 'node_filesystem_avail_bytes{mountpoint="/"}')
    # The JVMs' own numbers, through their JMX agents: the broker's count of records into a topic (seven written
    # here), each connector's state, the stream job's operators.
    topic = f"test.jmx-{uuid.uuid4().hex[:8]}"
    create_topics(settings, topic, partitions=1)
    try:
        producer = Producer(settings.kafka_config())
        for i in range(7):
            producer.produce(topic, value=b"%d" % i)
        assert producer.flush(30) == 0
        counted = f'kafka_topic_messages_in_total{{topic="{topic}"}}'
        wait_for(lambda: [r["value"][1] for r in query(settings, counted)] == ["7"], 4 * settings.scrape_interval_s,
                 f"{counted} at 7")
    finally:
        delete_topics(settings, topic)
    assert {r["metric"].get("connector") for r in query(settings, "kafka_connect_connector_status")} >= {"jdbc-trades"}
    assert query(settings, "flink_taskmanager_job_task_operator_numRecordsOutPerSecond")


def test_the_monitor_counts_dead_letters_by_kind(stack, settings, unique):
    own = settings.model_copy(update={"dlq_topic_prefix": f"test.{unique}.dlq."})
    stream, sink = own.dlq_topic("stream"), own.dlq_topic("redis-sink")
    create_topics(settings, stream, sink, partitions=2)
    producer = Producer(settings.kafka_config())
    for i in range(2):
        producer.produce(stream, value=b"{}", partition=i % 2, headers={"error.reason": b"late trade: in its candle"})
    for i in range(3):
        producer.produce(stream, value=b"x", partition=i % 2, headers={"error.reason": b"not JSON: x"})
    for i in range(4):
        producer.produce(sink, value=b"\xff" * i)  # no headers at all
    assert producer.flush(10) == 0
    counter = DeadLetterCounter(own)
    try:
        expected = {(stream, "late"): 2, (stream, "rejected"): 3, (sink, "late"): 0, (sink, "rejected"): 4}

        def counted():
            counter.read(1.0)
            return {k: v for k, v in counter.counts.items() if k[0] in (stream, sink)} == expected

        wait_for(counted, 30, "the dead letters counted by kind")
        assert all(v == 0 for k, v in counter.counts.items() if k[0] not in (stream, sink))
    finally:
        counter.close()
        delete_topics(settings, stream, sink)


def test_the_monitor_counts_dead_letters_of_topics_made_after_it_started(stack, settings, unique):
    """A fresh stack starts the monitor before `make up` creates the topics: their dead letters count too."""
    own = settings.model_copy(update={"dlq_topic_prefix": f"test.{unique}.dlq."})
    stream = own.dlq_topic("stream")
    counter = DeadLetterCounter(own)
    try:
        counter.read(1.0)  # no topic of its prefix yet
        create_topics(settings, stream, partitions=2)
        producer = Producer(settings.kafka_config())
        for i in range(5):
            producer.produce(stream, value=b"x", partition=i % 2, headers={"error.reason": b"not JSON: x"})
        assert producer.flush(10) == 0

        def counted():
            counter.read(1.0)
            return counter.counts[(stream, "rejected")] == 5

        wait_for(counted, 30, "the new topic's dead letters counted")
    finally:
        counter.close()
        delete_topics(settings, stream)


def test_the_monitors_freshness_agrees_with_the_database(stack, settings, pipeline_data):
    """The monitor shows every symbol the source follows, and beside them the 20 freshest others, each with the age
    of its newest trade, against a plain GROUP BY over trades."""
    with psycopg2.connect(**settings.pg_params("reader")) as conn, conn.cursor() as cur:
        cur.execute("SELECT symbol, extract(epoch FROM max(trade_time)) FROM trades GROUP BY symbol")
        newest = {symbol: float(epoch) for symbol, epoch in cur.fetchall()}
    conn.close()
    followed = set((read_status(settings, "source") or {}).get("symbols", {}))
    assert followed and followed <= set(newest)  # the demo's symbols
    # The monitor reads every scrape interval: what it serves is at most that old, plus the reading's own time.
    slack = settings.scrape_interval_s + 10
    ages = wait_for(lambda: {s.labels["symbol"]: s.value for s in monitor_samples(settings)
                             if s.name == "cryptopipe_freshness_seconds" and s.labels["store"] == "trades"} or None,
                    3 * settings.scrape_interval_s, "the monitor's freshness")
    now = time.time()
    for symbol, age in ages.items():
        assert now - newest[symbol] - slack <= age <= now - newest[symbol] + 1, symbol
    assert followed <= set(ages)
    others = set(ages) - followed
    assert len(others) == min(20, len(newest) - len(followed))
    left_out = set(newest) - set(ages)
    assert all(newest[s] <= min(newest[o] for o in others) for s in left_out), "a fresher symbol was left out"


def test_a_restart_alert_reaches_the_log_and_make_status(stack, settings):
    """A real fault end to end: node-exporter killed, its supervisor starts it again, the monitor counts the
    restart, Prometheus' ServiceRestarted fires, Alertmanager sends it to the monitor, which logs it."""
    def firing() -> bool:
        resp = requests.get(f"http://127.0.0.1:{settings.alertmanager_port}/api/v2/alerts",
                            params={"filter": ['alertname="ServiceRestarted"', 'service="node-exporter"']},
                            auth=people_login(settings), timeout=10)
        return bool(resp.json())

    log = settings.logs_dir / "alerts.log"

    def last_notification() -> str:
        lines = log.read_text().splitlines() if log.exists() else []
        return next((l.split()[2] for l in reversed(lines) if "ServiceRestarted" in l
                     and "service=node-exporter" in l), "none")

    # An earlier kill (a rerun within the rule's 2-minute window) keeps it firing. And until Alertmanager has sent
    # that alert's resolution (at its group's next interval), a new firing of the same alert is what it notified
    # already: nothing new is sent. So both must be over first.
    wait_for(lambda: not firing() and last_notification() != "FIRING", 420,
             "an earlier ServiceRestarted of node-exporter to resolve and its resolution to be sent", interval=5)
    exporter = stack.service("node-exporter")
    supervisor = psutil.Process(exporter.pid())
    [child] = supervisor.children()
    start = log.stat().st_size if log.exists() else 0
    os.kill(child.pid, signal.SIGKILL)
    wait_for(lambda: [c.pid for c in supervisor.children()] not in ([], [child.pid]), 30, "the exporter back")

    def logged() -> str | None:
        text = log.read_text()[start:] if log.exists() else ""
        line = next((l for l in text.splitlines() if "FIRING" in l and "ServiceRestarted" in l
                     and "service=node-exporter" in l), None)
        return line

    # The monitor's reading, a scrape and the rule's evaluation, then Alertmanager's group_wait (10 s) for a new
    # group, or its group_interval (1 min) for a group already notified (another service restarted lately).
    line = wait_for(logged, 3 * settings.scrape_interval_s + 90, "ServiceRestarted in logs/alerts.log", interval=2)
    assert firing()
    assert "warning" in line and "runbook:" in line
    status = subprocess.run([sys.executable, "-m", "ops.status"], cwd=ROOT, capture_output=True, text=True,
                            timeout=180)
    rows = [l for l in status.stdout.splitlines() if "ServiceRestarted" in l]
    assert rows and "node-exporter" in rows[0], status.stdout[-3000:]


def test_a_stream_job_restart_counts_no_failed_checkpoint(stack, settings):
    """kill -9 the TaskManager: the job restarts, and Flink counts as failed the checkpoints that failed before the
    JobManager noticed the loss (its heartbeat timeout), the one the restart aborted and each one it could not
    trigger while the tasks came back. Those are the restart's (FlinkJobRestarting); the monitor's count, which
    FlinkCheckpointsFailing reads, must not move."""
    def flink_counts() -> tuple[float, float]:
        job = flink_deploy.running_job(settings)
        url = f"{settings.flink_url}/jobs/{job['jid']}"
        http = flink_tls.session(settings)
        restarts = http.get(f"{url}/metrics", params={"get": "numRestarts"}, timeout=5).json()[0]["value"]
        return float(restarts), float(http.get(f"{url}/checkpoints", timeout=5).json()["counts"]["failed"])

    def monitor_count() -> float:
        return next(s.value for s in monitor_samples(settings) if s.name == "cryptopipe_flink_checkpoints_failed_total")

    flink_deploy.wait_running(settings)
    time.sleep(2 * settings.scrape_interval_s)  # the monitor has read the running job at least once
    restarts, failed = flink_counts()
    counted = monitor_count()
    svc = stack.service("flink-taskmanager")
    target = worker_of(svc.pid(), svc.marker)
    assert target is not None and target != svc.pid(), "the TaskManager is not running under its supervisor"
    os.kill(target, signal.SIGKILL)
    wait_for(lambda: flink_counts()[0] > restarts and flink_deploy.all_running(flink_deploy.running_job(settings)),
             180, "the stream job restarted with all its tasks running")
    # The monitor counts the failures between two reads once the next CHECKPOINT_CONFIRM_S of reads confirmed them.
    time.sleep(CHECKPOINT_CONFIRM_S + 2 * settings.scrape_interval_s)
    assert flink_counts()[1] > failed, "Flink counted no failed checkpoint: the restart did not exercise the case"
    assert monitor_count() == counted
