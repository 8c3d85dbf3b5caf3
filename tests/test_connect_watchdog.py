"""The Connect watchdog (ops/connect_watchdog.py): its restart rules alone, then on the native stack a JDBC sink
task that fails for a reason no retry fixes while it lasts (the writer may not insert), brought back by itself."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg2
import pytest
import requests
from confluent_kafka import Producer

from cryptopipe.run import read_status
from cryptopipe.settings import ROOT, Settings
from functions.binance_source.trades import trade_value
from ops import connect_watchdog, kafka_security
from ops.connect_watchdog import HEALTHY_AFTER_S, Watchdog
from ops.connectors import load_configs

from .helpers import SECRETS, cells, create_topics, delete_topics, tape, wait_for

TRACE = ("org.apache.kafka.connect.errors.ConnectException: Exiting WorkerSinkTask\n\tat org.apache.kafka...\n"
         "Caused by: org.hibernate.exception.AuthException: Error executing work\n\tat org.hibernate...\n"
         "Caused by: org.postgresql.util.PSQLException: ERROR: permission denied for table t\n\tat org.postgresql...")


def status(*task_states: str, connector: str = "RUNNING") -> dict:
    return {"connector": {"state": connector},
            "tasks": [{"id": i, "state": s, **({"trace": TRACE} if s == "FAILED" else {})}
                      for i, s in enumerate(task_states)]}


class Answer:
    status_code, text = 204, ""


class Http:
    """Stands in for requests.Session: records the restarts the watchdog sends."""

    def __init__(self):
        self.posts: list[str] = []

    def post(self, url: str, **_kwargs) -> Answer:
        self.posts.append(url)
        return Answer()


def test_state_of_a_connector_in_one_word():
    assert connect_watchdog.summary(status("RUNNING", "RUNNING")) == "RUNNING"
    assert connect_watchdog.summary(status("RUNNING", "FAILED")) == "FAILED"
    assert connect_watchdog.summary(status(connector="FAILED")) == "FAILED"
    assert connect_watchdog.summary(status("UNASSIGNED")) == "RUNNING/UNASSIGNED"
    assert connect_watchdog.first_line(TRACE) == TRACE.splitlines()[0]
    assert connect_watchdog.first_line(None) == "no trace"
    assert connect_watchdog.root_cause(TRACE) == "org.postgresql.util.PSQLException: ERROR: permission denied for table t"
    assert connect_watchdog.root_cause(TRACE.splitlines()[0]) is None


def test_restarts_at_once_then_with_backoff_and_counts_again_after_a_healthy_spell(tmp_path):
    dog = Watchdog(Settings(**SECRETS, var_dir=tmp_path, watchdog_backoff_s=30))
    dog.http = Http()
    watch = connect_watchdog.Watch()
    dog.check("sink", status("FAILED"), watch)
    assert len(dog.http.posts) == 1 and dog.http.posts[0].endswith("/connectors/sink/restart")
    assert (watch.restarts, watch.failures, watch.state, watch.last_failure) == (1, 1, "FAILED", TRACE.splitlines()[0])
    dog.check("sink", status("FAILED"), watch)  # failed again at once: it waits for the backoff
    assert len(dog.http.posts) == 1 and watch.next_restart > time.monotonic()
    watch.next_restart = 0  # the backoff is over
    dog.check("sink", status("FAILED"), watch)
    assert (len(dog.http.posts), watch.restarts, watch.failures) == (2, 2, 2)
    dog.check("sink", status("RUNNING"), watch)
    watch.running_since -= HEALTHY_AFTER_S  # RUNNING long enough: the next failure is restarted at once again
    dog.check("sink", status("RUNNING"), watch)
    assert (watch.state, watch.restarts, watch.failures) == ("RUNNING", 2, 0)

    dog.watches = {"sink": watch}
    dog.statuses = lambda: None  # Connect not answering: the report still goes out, the history stays
    dog.tick()
    report = read_status(dog.s, "connect-watchdog")
    assert report["connectors"]["sink"]["restarts"] == 2
    assert Watchdog(dog.s).watches["sink"].restarts == 2  # a restarted watchdog keeps the counts


@pytest.fixture
def failing_sink(settings, unique):
    """A copy of jdbc-trades on a topic and table of its own; the table's owner can take the writer's INSERT."""
    topic, dlq, table, name = (f"test.watchdog-{unique}", f"test.watchdog-dlq-{unique}", f"watchdog_test_{unique}",
                               f"test-watchdog-{unique}")
    create_topics(settings, topic, dlq, partitions=1)
    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True
    cur = owner.cursor()
    cur.execute(f"CREATE TABLE {table} (LIKE trades INCLUDING ALL)")
    cur.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO crypto_writer")
    # One task for the one partition, so "task 0" is the task that fails.
    config = load_configs()["jdbc-trades"] | {"topics": topic, "collection.name.format": table,
                                              "errors.deadletterqueue.topic.name": dlq, "tasks.max": "1"}
    # The worker's user may read only the stack's topics: this connector's are granted, as an operator would.
    kafka_security.grant(settings, kafka_security.connector_grants(name, config))
    requests.put(f"{settings.connect_url}/connectors/{name}/config", json=config, auth=settings.connect_auth, timeout=30).raise_for_status()
    yield {"topic": topic, "table": table, "name": name, "cur": cur}
    requests.delete(f"{settings.connect_url}/connectors/{name}", auth=settings.connect_auth, timeout=30)
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    owner.close()
    delete_topics(settings, topic, dlq)


def test_the_watchdog_restarts_a_failed_sink_by_itself(stack, settings, failing_sink):
    name, table, cur = failing_sink["name"], failing_sink["table"], failing_sink["cur"]
    trades = tape("btcusdt_aggtrades_20210404.json")[:400]
    producer = Producer({**settings.kafka_config(), "enable.idempotence": True})

    def produce(items: list[dict]) -> None:
        for item in items:
            _, ts, value = trade_value("BTCUSDT", item)
            producer.produce(failing_sink["topic"], key=b"BTCUSDT", value=value, timestamp=ts)
        assert producer.flush(30) == 0

    def count() -> int:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]

    def task_states() -> list[str]:
        return [t["state"] for t in
                requests.get(f"{settings.connect_url}/connectors/{name}/status", auth=settings.connect_auth, timeout=5).json()["tasks"]]

    produce(trades[:200])
    wait_for(lambda: count() == 200, 90, "the first 200 trades")
    # The writer loses INSERT: a permission error, which the sink never retries. Its task fails.
    cur.execute(f"REVOKE INSERT ON {table} FROM crypto_writer")
    produce(trades[200:])
    wait_for(lambda: "FAILED" in task_states(), 60, "the task to fail", 0.1)
    cur.execute(f"GRANT INSERT ON {table} TO crypto_writer")

    # Nobody restarts it here: the watchdog does, and every trade lands, once.
    wait_for(lambda: count() == 400, 120, "all 400 trades after the watchdog's restart", 0.5)
    wait_for(lambda: task_states() == ["RUNNING"], 30, "the task RUNNING again")
    cur.execute(f"SELECT min(agg_id), max(agg_id), count(DISTINCT agg_id) FROM {table}")
    assert cur.fetchone() == (trades[0]["a"], trades[-1]["a"], 400)

    watched = read_status(settings, "connect-watchdog")["connectors"][name]
    assert watched["restarts"] >= 1 and watched["last_restart_at"] and watched["last_failure"]
    assert f"permission denied for table {table}" in watched["last_cause"]
    log = (settings.logs_dir / "connect-watchdog.log").read_text()
    assert f"{name}: task 0 FAILED, restarted" in log

    shown = subprocess.run([sys.executable, "-m", "ops.status"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120).stdout
    [row] = cells(shown, name)
    assert row[1] == "RUNNING" and int(row[3]) == watched["restarts"] and "permission denied" in row[4], row
