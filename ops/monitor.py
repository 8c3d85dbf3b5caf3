"""The pipeline's own exporter, service `monitor` of the native stack: what `make status` shows, as metrics.

    python -m ops.monitor

Every SCRAPE_INTERVAL_S it reads each part on its own (one that does not answer leaves the others be, and
shows as cryptopipe_monitor_read_ok{part} 0): consumer lag of every group (LagProbe: the group's own Consumer,
never an AdminClient offset fetch); dead-letter topics' depth, and the new dead letters by kind; connector states
and the watchdog's restarts; the Flink job; freshness per symbol; Airflow's health, DAG runs and failed tasks.
GET /metrics, behind the scrapers' login, serves the last reading of those, and reads the services' readiness and
their supervisors' restarts right then (cheap, and the news an operator needs first).

It is also Alertmanager's receiver: POST /alerts (same login) writes each notification as a line of
logs/alerts.log, so alerts are on disk even where no ALERT_WEBHOOK_URL is set.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler

import redis
import requests
from confluent_kafka import Consumer, KafkaError, TopicPartition
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cryptopipe import topics
from cryptopipe.logs import setup_logging
from cryptopipe.metrics import serve
from cryptopipe.run import read_status
from cryptopipe.settings import Settings, load_settings
from ops import airflow, flink_deploy, flink_tls, functions_ctl
from ops.connectors import all_statuses, is_running
from ops.db import newest_per_symbol
from ops.kafka_admin import LagProbe, records_held
from ops.stack import NativeStack
from ops.status import consumer_groups, redis_price

log = logging.getLogger("monitor")
MAX_ALERT_BODY = 1_000_000  # Alertmanager's notifications are a few kB; anything far larger is not one
LATE_REASON = "late trade"  # how flink/02_trades_and_dead_letters.sql starts a late trade's reason
# Twice Flink's heartbeat.timeout (stack/config/flink.yaml): by then the JobManager knows of a TaskManager lost.
CHECKPOINT_CONFIRM_S = 30


class DeadLetterCounter:
    """Reads the dead-letter topics from their start and on, counting records by topic and kind (late trades apart
    from rejected records). A Consumer assigned, never subscribed: it joins no group and commits nothing."""

    def __init__(self, settings: Settings):
        self.topics = [t.name for t in topics.declared(settings) if t.dead_letter]
        config = {**settings.kafka_config(), "group.id": "cryptopipe-monitor", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"}
        self.consumer = Consumer(config)
        # The depths come from a consumer of their own: behind the reading one's fetches, which wait up to
        # fetch.wait.max.ms at the broker, every offset request would wait half a second.
        self.offsets = Consumer(config)
        self.counts: dict[tuple[str, str], int] = {(t, k): 0 for t in self.topics for k in ("late", "rejected")}
        self.assigned: set[tuple[str, int]] = set()
        # Until it has read up to the topics' ends once, its counts are a recount of old dead letters: shown
        # then, they would look to Prometheus like thousands of new ones at every start of the monitor.
        self.caught_up = False

    def read(self, budget_s: float = 1.0) -> None:
        # At every reading: on a fresh stack the monitor starts before `make up` creates the topics, and a topic
        # or partition made later must be read too, from its start.
        meta = self.consumer.list_topics(timeout=5).topics
        new = {(t, p) for t in self.topics if t in meta for p in meta[t].partitions} - self.assigned
        if new:
            self.consumer.incremental_assign([TopicPartition(t, p, 0) for t, p in sorted(new)])
            self.assigned |= new
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            batch = self.consumer.consume(5000, timeout=0.2)
            if not batch:
                self.caught_up = True
                return
            for msg in batch:
                if msg.error() is not None:
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("reading %s: %s", msg.topic(), msg.error())
                    continue
                reason = dict(msg.headers() or []).get("error.reason") or b""
                kind = "late" if reason.startswith(LATE_REASON.encode()) else "rejected"
                self.counts[(msg.topic(), kind)] = self.counts.get((msg.topic(), kind), 0) + 1

    def depths(self) -> dict[str, int]:
        """Records held in each dead-letter topic (end offset minus first retained offset)."""
        meta = self.offsets.list_topics(timeout=5).topics
        return {topic: records_held(self.offsets, topic, meta[topic].partitions if topic in meta else {})
                for topic in self.topics}

    def close(self) -> None:
        self.consumer.close()
        self.offsets.close()


class Reading(Collector):
    """The metric families of the last reading of each part, plus what `live` reads at the scrape itself. Each
    part's are replaced as soon as it is read: a part slow to answer (Kafka's while the broker restarts) does not
    hold back the others' news."""

    def __init__(self, live: Callable[[], list]):
        self.parts: dict[str, list] = {}
        self.live = live

    def collect(self):
        return [family for families in list(self.parts.values()) for family in families] + self.live()


class Monitor:
    def __init__(self, settings: Settings):
        self.s = settings
        self.stack = NativeStack(settings)
        self.probe = LagProbe(settings.kafka_config())
        self.dead_letters = DeadLetterCounter(settings)
        self.reading = Reading(self.read_live)
        self.read_ok: dict[str, tuple[float, float]] = {}  # part -> (1 if its last reading worked, seconds it took)
        self.stopping = threading.Event()
        self.alerts_log = alerts_logger(settings)
        self.notifications = {"firing": 0, "resolved": 0}
        self.failing_since: dict[str, float] = {}  # part -> when its readings began to fail
        # (job id, restarts, failed checkpoints) of the last reads, None for a read without every task running.
        self.flink_reads: deque = deque(maxlen=math.ceil(CHECKPOINT_CONFIRM_S / settings.scrape_interval_s) + 1)
        self.checkpoints_failed = 0.0
        self.airflow: airflow.AirflowClient | None = None

    def stop(self, *_args) -> None:
        self.stopping.set()

    # ---- reading ------------------------------------------------------------------------------
    def read_services(self, out: list) -> None:
        up = GaugeMetricFamily("cryptopipe_service_up", "1 when the native stack's service answers", labels=["service"])
        restarts = CounterMetricFamily("cryptopipe_service_restarts", "restarts by the service's supervisor",
                                       labels=["service"])
        for svc in self.stack.services:
            if svc.name == "monitor":
                continue  # it is answering this
            up.add_metric([svc.name], 1.0 if svc.is_up() else 0.0)
            status = svc.supervisor_status()
            restarts.add_metric([svc.name], float(status.get("restarts", 0)) if status else 0.0)
        # The functions that run under their supervisors (`make start`); one stopped has no series.
        function_restarts = CounterMetricFamily("cryptopipe_function_restarts", "restarts by the function's "
                                                "supervisor since it was started", labels=["function"])
        for name in functions_ctl.PIPELINE:
            status = functions_ctl.supervisor_status(self.s, name)
            if status is not None:
                function_restarts.add_metric([name], float(status.get("restarts", 0)))
        out += [up, restarts, function_restarts]

    def read_lag(self, out: list) -> None:
        lag = GaugeMetricFamily("cryptopipe_consumer_lag_records", "records not yet committed by the group",
                                labels=["group", "topic"])
        for group, (_reader, group_topics) in consumer_groups(self.s).items():
            # Not exact: a transaction marker or two counted as lag is nothing next to the alert's 1,000
            # records, and reading the gap to tell could take seconds a partition at every reading.
            for topic, n in sorted((self.probe.lag(group, group_topics, exact=False) or {}).items()):
                lag.add_metric([group, topic], float(n))
        out.append(lag)

    def read_dead_letters(self, out: list) -> None:
        depth = GaugeMetricFamily("cryptopipe_dlq_records", "records held in the dead-letter topic", labels=["topic"])
        for topic, held in self.dead_letters.depths().items():
            depth.add_metric([topic], float(held))
        self.dead_letters.read()
        read = CounterMetricFamily("cryptopipe_dead_letters", "dead letters read, by kind (late trade or rejected)",
                                   labels=["topic", "kind"])
        for (topic, kind), n in sorted(self.dead_letters.counts.items()):
            read.add_metric([topic, kind], float(n))
        out += [depth, read] if self.dead_letters.caught_up else [depth]

    def read_connectors(self, out: list) -> None:
        running = GaugeMetricFamily("cryptopipe_connector_running", "1 when the connector and all its tasks run",
                                    labels=["connector"])
        restarts = CounterMetricFamily("cryptopipe_connector_restarts", "restarts by the connect watchdog",
                                       labels=["connector"])
        watched = (read_status(self.s, "connect-watchdog") or {}).get("connectors", {})
        for name, st in sorted(all_statuses(self.s.connect_url, timeout=5).items()):
            running.add_metric([name], 1.0 if st is not None and is_running(st) else 0.0)
            restarts.add_metric([name], float(watched.get(name, {}).get("restarts", 0)))
        out += [running, restarts]

    def read_flink(self, out: list) -> None:
        job = flink_deploy.running_job(self.s)
        restarts = 0.0
        if job is not None:
            url = f"{self.s.flink_url}/jobs/{job['jid']}"
            http = flink_tls.session(self.s)
            values = http.get(f"{url}/metrics", params={"get": "numRestarts"}, timeout=5).json()
            restarts = float(next((v["value"] for v in values if v["id"] == "numRestarts"), 0))
            failed = float(http.get(f"{url}/checkpoints", timeout=5).json()["counts"]["failed"])
            # Flink counts a checkpoint it could not even trigger, once a second while a (re)started job deploys its
            # tasks, and those a restart aborts: they are the restart's (FlinkJobRestarting). And a TaskManager that
            # died is noticed only after Flink's heartbeat.timeout: until then the job looks RUNNING and its
            # checkpoints fail for want of it. So the failures between two reads count once the reads of the next
            # CHECKPOINT_CONFIRM_S saw every task running too, in the same job, with no restart.
            self.flink_reads.append((job["jid"], restarts, failed) if flink_deploy.all_running(job) else None)
        else:
            self.flink_reads.append(None)
        reads = list(self.flink_reads)
        if len(reads) == self.flink_reads.maxlen and all(reads) and len({r[:2] for r in reads}) == 1:
            self.checkpoints_failed += max(0.0, reads[1][2] - reads[0][2])
        out += [GaugeMetricFamily("cryptopipe_flink_job_running", "1 when the stream job and all its tasks run",
                                  value=1.0 if flink_deploy.all_running(job) else 0.0),
                CounterMetricFamily("cryptopipe_flink_job_restarts", "restarts of the running stream job",
                                    value=restarts),
                CounterMetricFamily("cryptopipe_flink_checkpoints_failed",
                                    "failed checkpoints of the running stream job, not counting a restart's",
                                    value=self.checkpoints_failed)]

    def read_freshness(self, out: list) -> None:
        age = GaugeMetricFamily("cryptopipe_freshness_seconds", "age of the newest item per symbol (event time); "
                                "followed: a symbol the source reported following when it last ran",
                                labels=["symbol", "store", "followed"])
        followed = set((read_status(self.s, "source") or {}).get("symbols", {}))
        now = time.time()
        client = redis.Redis.from_url(self.s.redis_url("reader"), socket_timeout=2)
        for symbol, last_trade, last_candle in newest_per_symbol(self.s, include=followed):
            live = "true" if symbol in followed else "false"
            age.add_metric([symbol, "trades", live], now - last_trade)
            if last_candle is not None:
                age.add_metric([symbol, "candles", live], now - last_candle)
            price_time, _stale = redis_price(client, symbol)
            if price_time is not None:
                age.add_metric([symbol, "redis", live], now - price_time)
        out.append(age)

    def read_airflow(self, out: list) -> None:
        """Airflow speaks StatsD or OpenTelemetry, neither of which this host has a server for; its REST API
        gives the same numbers: the components' health and heartbeats, runs per DAG by state, failed tasks."""
        healthy = GaugeMetricFamily("cryptopipe_airflow_healthy", "1 when Airflow reports the component healthy",
                                    labels=["component"])
        beat_age = GaugeMetricFamily("cryptopipe_airflow_heartbeat_age_seconds", "since the component's last "
                                     "heartbeat", labels=["component"])
        now = datetime.now(timezone.utc)
        for component, report in sorted(airflow.health(self.s).items()):
            healthy.add_metric([component], 1.0 if (report or {}).get("status") == "healthy" else 0.0)
            beat = (report or {}).get(f"latest_{component}_heartbeat")
            if beat:
                beat_age.add_metric([component], (now - datetime.fromisoformat(beat)).total_seconds())
        out += [healthy, beat_age]
        if self.airflow is None:
            self.airflow = airflow.AirflowClient(self.s)  # a token, renewed when a call fails (see read())
        runs = GaugeMetricFamily("cryptopipe_airflow_dag_runs", "DAG runs held by Airflow, by state",
                                 labels=["dag_id", "state"])
        failed = GaugeMetricFamily("cryptopipe_airflow_failed_tasks", "task instances held by Airflow that failed",
                                   labels=["dag_id"])
        for dag in self.airflow.call("GET", "/dagStats")["dags"]:
            for stat in dag["stats"]:
                runs.add_metric([dag["dag_id"], stat["state"]], float(stat["count"]))
            tasks = self.airflow.call("GET", f"/dags/{dag['dag_id']}/dagRuns/~/taskInstances",
                                      params={"state": "failed", "limit": 1})
            failed.add_metric([dag["dag_id"]], float(tasks["total_entries"]))
        out += [runs, failed]

    # What it reads, in this order. LIVE parts are read at each scrape, not between them: a service down or
    # restarted is in the very next scrape, so its alert comes a `for:` plus a scrape and an evaluation after the
    # fault (~0.2 s of reading; the other parts take longer).
    PARTS = ("services", "lag", "dead_letters", "connectors", "flink", "freshness", "airflow")
    LIVE = ("services",)

    def read_part(self, part: str) -> list | None:
        """The part's metric families, or None when it could not be read (logged, and its failure shown).

        Runs on two threads: the scrape's (LIVE parts) and the loop's (the others). Each part writes only its own
        keys of read_ok and failing_since, and its own attributes, so they never write the same thing."""
        out: list = []
        started = time.monotonic()
        try:
            getattr(self, f"read_{part}")(out)
        except Exception as err:  # a part down must not blind the monitor to the others
            log.warning("reading %s failed: %s: %s", part, type(err).__name__, err)
            self.read_ok[part] = (0.0, time.monotonic() - started)
            self.failing_since.setdefault(part, time.monotonic())
            if part == "airflow":
                self.airflow = None  # its token may have expired
            if part == "dead_letters" and time.monotonic() - self.failing_since[part] > LagProbe.REOPEN_AFTER_S:
                # The same librdkafka client that LagProbe reopens after a broker restart; the counts start
                # again from the topics' start, a counter reset Prometheus' rate() and increase() allow for.
                self.dead_letters.close()
                self.dead_letters = DeadLetterCounter(self.s)
                del self.failing_since[part]
            return None
        self.failing_since.pop(part, None)
        self.read_ok[part] = (1.0, time.monotonic() - started)
        return out

    def read(self) -> None:
        for part in (p for p in self.PARTS if p not in self.LIVE):
            out = self.read_part(part)
            if out is None:
                self.reading.parts.pop(part, None)
            else:
                self.reading.parts[part] = out

    def read_live(self) -> list:
        out = [family for part in self.LIVE for family in (self.read_part(part) or [])]
        ok = GaugeMetricFamily("cryptopipe_monitor_read_ok", "1 when the last reading of that part worked",
                               labels=["part"])
        took = GaugeMetricFamily("cryptopipe_monitor_read_seconds", "how long the last reading of that part took",
                                 labels=["part"])
        for part, (worked, seconds) in sorted(self.read_ok.items()):
            ok.add_metric([part], worked)
            took.add_metric([part], seconds)
        notes = CounterMetricFamily("cryptopipe_alert_notifications", "Alertmanager's notifications received",
                                    labels=["status"])
        for status, n in self.notifications.items():
            notes.add_metric([status], float(n))
        return out + [ok, took, notes]

    def run(self) -> None:
        registry = CollectorRegistry()
        registry.register(self.reading)
        metrics = make_wsgi_app(registry)
        server = serve(self.s, self.s.monitor_port, lambda env, start: (
            self.receive(env, start) if env.get("PATH_INFO") == "/alerts" else metrics(env, start)))
        log.info("serving on %s:%d (/metrics, /alerts); reading every %d s", self.s.metrics_host,
                 self.s.monitor_port, self.s.scrape_interval_s)
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                self.read()
                self.stopping.wait(max(0.0, self.s.scrape_interval_s - (time.monotonic() - started)))
        finally:
            server.shutdown()
            self.probe.close()
            self.dead_letters.close()

    # ---- Alertmanager's notifications ----------------------------------------------------------
    def receive(self, environ, start_response):
        def answer(status: str, text: str):
            start_response(status, [("Content-Type", "text/plain")])
            return [text.encode() + b"\n"]

        if environ.get("REQUEST_METHOD") != "POST":
            return answer("405 Method Not Allowed", "POST Alertmanager's webhook notifications here")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_ALERT_BODY:
            return answer("413 Content Too Large", f"a notification has 1 to {MAX_ALERT_BODY} bytes")
        try:
            body = json.loads(environ["wsgi.input"].read(length))
            alerts = [alert_line(a) for a in body["alerts"]]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("refused a notification that is not Alertmanager's: %s", err)
            return answer("400 Bad Request", "not an Alertmanager webhook notification")
        for status, line in alerts:
            self.notifications[status] = self.notifications.get(status, 0) + 1
            self.alerts_log.info("%s", line)
        return answer("200 OK", f"{len(alerts)} alerts logged")


def alert_line(alert: dict) -> tuple[str, str]:
    """(status, one line for logs/alerts.log) of one alert of a notification."""
    status = alert["status"]
    if status not in ("firing", "resolved"):
        raise ValueError(f"unknown status {status!r}")
    labels, notes = dict(alert["labels"]), dict(alert.get("annotations") or {})
    name, severity = labels.pop("alertname", "?"), labels.pop("severity", "?")
    where = " ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    since = alert.get("startsAt", "?") if status == "firing" else alert.get("endsAt", "?")
    line = f"{status.upper()} {severity} {name} [{where}] since {since}: {notes.get('summary', '')}"
    if status == "firing" and notes.get("runbook"):
        line += f" | runbook: {notes['runbook']}"
    return status, " ".join(line.split())[:2000]  # one line, whatever the labels held


def alerts_logger(settings: Settings) -> logging.Logger:
    logger = logging.getLogger("alerts")
    logger.propagate = False
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(settings.logs_dir / "alerts.log", maxBytes=settings.log_max_bytes,
                                  backupCount=settings.log_backups)
    formatter = logging.Formatter("%(asctime)sZ %(message)s")
    formatter.converter = time.gmtime  # UTC, as Alertmanager's own times are
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def main() -> int:
    settings = load_settings()
    setup_logging(settings)
    monitor = Monitor(settings)
    signal.signal(signal.SIGTERM, monitor.stop)
    signal.signal(signal.SIGINT, monitor.stop)
    monitor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
