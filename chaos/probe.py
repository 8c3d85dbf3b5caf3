"""Is the pipeline caught up? Every function and data service running, every connector task RUNNING, no
consumer group more than a few seconds of trades behind, and the source current with the replay."""

from __future__ import annotations

import time

import requests

from cryptopipe.run import read_status
from cryptopipe.settings import Settings
from ops import flink_deploy, functions_ctl
from ops.connectors import all_statuses, is_running
from ops.kafka_admin import LagProbe
from ops.stack import NativeStack
from ops.status import consumer_groups

# Records a group may be behind and still count as caught up: a live feed is never at exactly 0 between two
# looks, the stream commits each second and Connect every 5 s: the trades of about 6 s.
LAG_SECONDS = 6
DATA_SERVICES = ("postgres", "redis", "kafka", "connect", "flink-jobmanager", "flink-taskmanager")
SOURCE_LAG_MS = 5_000


class Probe:
    def __init__(self, settings: Settings, stack: NativeStack, symbols: list[str], last_ids: dict[str, int],
                 trades_per_s: float, timeout_s: float, log):
        self.s, self.stack, self.symbols, self.last_ids = settings, stack, symbols, last_ids
        self.slack = max(100, int(trades_per_s * LAG_SECONDS))
        self.timeout_s, self.log = timeout_s, log
        self.lags = LagProbe(settings.kafka_config())
        self.groups = {group: topics for group, (_, topics) in consumer_groups(settings).items()}

    def why_not(self, tape_running: bool) -> str | None:
        """None when caught up, else the first thing that is not."""
        for name in ("source", "redis-sink", "alert-notifier"):
            state = (functions_ctl.supervisor_status(self.s, name) or {}).get("state")
            if state != "running":
                return f"{name} {state or 'not running'}"
        try:
            job = flink_deploy.running_job(self.s)
        except requests.RequestException:
            return "Flink's JobManager not answering"
        if not flink_deploy.all_running(job):
            return f"Flink job {self.s.flink_job_name} {job['state'] if job else 'not running'}"
        for name in DATA_SERVICES:
            svc = self.stack.service(name)
            # Kafka through the probe's own long-lived client: a new one per look is what crashed librdkafka.
            up = svc.pid() is not None and self.kafka_answers() if name == "kafka" else svc.is_up()
            if not up:
                return f"{name} down"
        try:
            statuses = all_statuses(self.s.connect_url, timeout=5)
        except (requests.RequestException, ValueError):
            return "Connect REST not answering"
        for name, st in statuses.items():
            if not st or not is_running(st):
                return f"connector {name} not RUNNING"
        for group, topics in self.groups.items():
            try:
                # from_start: a partition the group has not committed yet is behind by all it holds.
                lag = self.lags.lag(group, topics, from_start=True)
            except Exception as err:  # Kafka still coming back
                return f"lag of {group} unknown ({type(err).__name__})"
            behind = sum(lag.values())
            if behind > self.slack:
                return f"{group} {behind} behind"
        report = read_status(self.s, "source") or {}
        now_ms = int(time.time() * 1000)
        for symbol in self.symbols:
            st = report.get("symbols", {}).get(symbol)
            if st is None or now_ms - report.get("updated_at", 0) > 15_000:
                return "source status stale"
            done = (st.get("cursor") or 0) > self.last_ids[symbol]
            if not done and tape_running and (st.get("lag_ms") is None or st["lag_ms"] > SOURCE_LAG_MS):
                return f"source {symbol} lag {st.get('lag_ms')} ms"
            if not done and not tape_running:
                return f"source {symbol} not at the tape's end"
        return None

    def kafka_answers(self) -> bool:
        try:
            return len(self.lags.consumer.list_topics(timeout=3).brokers) > 0
        except Exception:  # KafkaException while it restarts
            return False

    def close(self) -> None:
        self.lags.close()

    def wait(self, tape_end: float, timeout_s: float | None = None) -> float | None:
        """The monotonic time the pipeline was caught up again (the tape runs until `tape_end`), or None
        once the timeout passed."""
        timeout_s = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            reason = self.why_not(tape_running=time.monotonic() < tape_end)
            if reason is None:
                return time.monotonic()
            if reason != last:
                self.log(f"  [dim]waiting: {reason}[/dim]")
                last = reason
            time.sleep(1)
        self.log(f"[red]  not caught up after {timeout_s:.0f} s: {last}[/red]")
        return None
