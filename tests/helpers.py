"""Small helpers the integration tests share: topics, reading a topic whole, the tapes, waiting."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from chaos.tape import candles as plain_candles  # noqa: F401  (1-minute candles the plain way)
from cryptopipe.settings import ROOT
from functions.binance_source.resume import partition_for
from ops import flink_deploy

TAPES = ROOT / "data" / "binance"
# The symbols of the bundled tapes, which `make demo` loads.
TAPE_SYMBOLS = ["BTCUSDT", "DOTUSDT", "ETHUSDT", "XRPETH"]
SHORT_TAPES = {"BTCUSDT": "btcusdt_aggtrades_20210404.json", "ETHUSDT": "ethusdt_aggtrades_20210404.json",
               "DOTUSDT": "dotusdt_aggtrades_20210404.json"}
XRP_TAPE = {"XRPETH": "xrpeth_aggtrades_20191011-13.json"}

# The secrets a Settings needs, for tests that build one without .env.
# Every secret Settings requires, for Settings(_env_file=None, **SECRETS) in unit tests.
SECRETS = {"pg_owner_password": "o", "pg_writer_password": "w", "pg_airflow_password": "f",
           "pg_retention_password": "t", "pg_backfill_password": "b", "pg_reader_password": "r", "pg_monitor_password": "m",
           "airflow_admin_password": "a", "monitoring_password": "monitoring-pw", "metrics_password": "metrics-pw",
           "airflow_db_password": "d", "airflow_jwt_secret": "j", "connect_rest_password": "connect-rest-pw",
           "replay_token": "x", **{f"kafka_{u.replace('-', '_')}_password": f"kafka-{u}-pw"
                                   for u in ("admin", "source", "stream", "redis-sink", "alert-notifier",
                                             "connect", "airflow", "ksqldb", "kafka-ui")},
           **{f"redis_{u}_password": "r" + u for u in ("admin", "sink", "notifier", "reader", "monitor")}}

# The token of the replay servers tests start in a thread, and the header their fault endpoint needs.
REPLAY_TOKEN = "test-replay-token"
REPLAY_AUTH = {"Authorization": f"Bearer {REPLAY_TOKEN}"}


def wait_for(check, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    result = None
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last check gave {result!r})")


def create_topics(settings, *names: str, partitions: int = 3) -> None:
    admin = AdminClient(settings.kafka_config())
    # Unlimited retention: the tapes' event times are years old, and time-based retention would delete
    # them while a test still reads.
    topics = [NewTopic(n, num_partitions=partitions, replication_factor=1, config={"retention.ms": "-1"}) for n in names]
    for fut in admin.create_topics(topics).values():
        fut.result()


def delete_topics(settings, *names: str) -> None:
    admin = AdminClient(settings.kafka_config())
    for fut in admin.delete_topics(list(names)).values():
        fut.result()


def topic_size(settings, topic: str) -> int:
    consumer = Consumer({**settings.kafka_config(), "group.id": "size-probe"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def read_topic(settings, topic: str, timeout: float = 30.0) -> list:
    """Every committed record now in the topic, partition by partition, in offset order."""
    consumer = Consumer({**settings.kafka_config(), "group.id": "reader",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    out = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        for p in sorted(parts):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                msgs = consumer.consume(10_000, timeout=1)
                for m in msgs:
                    assert m.error() is None, m.error()
                    out.append(m)
                # Transaction markers take offsets too: done once the position reaches the end.
                [pos] = consumer.position([TopicPartition(topic, p)])
                if pos.offset >= high:
                    break
            else:
                raise AssertionError(f"could not read {topic}[{p}] to offset {high}")
    finally:
        consumer.close()
    return out


def tape(name: str) -> list[dict]:
    return json.loads((TAPES / name).read_text())


class Process:
    """A function run as its own process, as in production, with its log in a file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        # Tests run functions on topics of their own, which only admin's rights cover (each component's ACLs
        # name the stack's topics); tests/test_kafka_acl.py checks those ACLs.
        env = {"KAFKA_AS_ADMIN": "true", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env}, cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def wait_log(self, text: str, timeout: float = 60) -> None:
        """Until the process has logged `text` (for example that it is ready)."""
        wait_for(lambda: text in self.output() or self.proc.poll() is not None, timeout, repr(text))
        assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.output()[-2000:]}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def caught_up(settings, group: str, topic: str) -> bool:
    """The consumer group has committed the end of every partition of the topic."""
    # The group's own group.id, never subscribed, never committing: it reads the group's offsets and leaves the group
    # alone (an AdminClient's group-offset requests crash librdkafka while a broker restarts, librdkafka #5040).
    consumer = Consumer({**settings.kafka_config(), "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
        for committed in consumer.committed(parts, timeout=10):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, committed.partition), timeout=10)
            if high > 0 and committed.offset < high:
                return False
        return True
    finally:
        consumer.close()


def latest_by_key(msgs, key_fields: tuple[str, ...]) -> dict:
    """The last value of each key (what an upsert on those fields ends with)."""
    out = {}
    for m in msgs:
        value = json.loads(m.value(), parse_float=Decimal)
        out[tuple(value[k] for k in key_fields)] = value
    return out


def restart_service(stack, name: str, down_s: float) -> None:
    """Stop one service of the native stack, keep it down for `down_s`, start it and wait until it answers."""
    svc = stack.service(name)
    svc.stop()
    wait_for(lambda: not svc.is_up(), 30, f"{name} to stop")
    time.sleep(down_s)
    svc.start()
    wait_for(svc.is_up, 120, f"{name} to come back")


def make_demo(tape_dir=None) -> subprocess.CompletedProcess:
    """`make demo` exactly as a user runs it."""
    args = ["make", "demo"] + ([f"TAPE={tape_dir}"] if tape_dir else [])
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)


def cells(out: str, first: str) -> list[list[str]]:
    """The rows of the tables in `out` (rich's box drawing) whose first cell is `first`, split into cells."""
    rows = []
    for line in out.splitlines():
        parts = [c.strip() for c in line.strip().strip("│").split("│")]
        if parts and parts[0] == first:
            rows.append(parts)
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_running(procs) -> None:
    """kill -9 whatever a test started that still runs, pass or fail."""
    for proc in procs:
        if proc.proc.poll() is None:
            proc.kill9()


def start_flink_job(settings, name: str, **update):
    """The stream job of flink/*.sql on the stack's Flink cluster under a job name (so also checkpoints and
    transactional ids), consumer group and topics of a test's own: the settings copy it runs with, once its tasks
    run. An empty partition holds the windows back for 2 s only."""
    s = settings.model_copy(update={"flink_job_name": name, "flink_idle_timeout_s": 2, "kafka_as_admin": True,
                                    **update})
    flink_deploy.ensure_running(s)
    return s


def assert_exactly_the_tapes(settings, topic: str, expected: dict[str, list[dict]]) -> None:
    """The topic holds each tape trade once, in id order per symbol, with exact values and event times."""
    by_symbol: dict[str, list] = {}
    partitions = 3
    for msg in read_topic(settings, topic):
        by_symbol.setdefault(msg.key().decode(), []).append(msg)
    assert set(by_symbol) == set(expected)
    for symbol, trades in expected.items():
        msgs = by_symbol[symbol]
        ids = [json.loads(m.value())["agg_id"] for m in msgs]
        assert len(ids) == len(set(ids)), f"{symbol}: duplicates"
        assert ids == [t["a"] for t in trades], f"{symbol}: missing or out-of-order trades"
        for msg, t in zip(msgs, trades):
            value = json.loads(msg.value(), parse_float=str, parse_int=str)
            assert (value["price"], value["qty"]) == (t["p"], t["q"])  # exact digits, no float rounding
            assert (int(value["first_trade_id"]), int(value["last_trade_id"])) == (t["f"], t["l"])
            assert int(value["trade_time"]) == t["T"] and msg.timestamp()[1] == t["T"]
            assert value["is_buyer_maker"] is t["m"] and value["symbol"] == symbol
            assert msg.partition() == partition_for(symbol, partitions)
