"""kafka_reconciliation with dag.test() against the real Kafka and PostgreSQL: a topic and symbols of each test's own
(`CRYPTO_AGGTRADES_TOPIC` points the run at the topic), real XRPETH and ETHUSDT trades moved to an hour of the past
that only the test uses, and the expected figures computed here from what the test wrote."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2
import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from chaos import malformed
from chaos.malformed import YEAR_MS
from cryptopipe import schemas
from ops import kafka_security
from ops.dag_run import run_dag
from ops.kafka_security import TOPIC, Grant

from .helpers import create_topics, delete_topics, read_topic, tape

HOUR = timedelta(hours=1)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CHECK = "kafka_reconciliation"


def ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


class Recon:
    """One test's topic, symbols, window and trades (in Kafka and in `trades`), and the run of the DAG over it."""

    def __init__(self, settings, unique: str, env: dict, cur):
        self.settings, self.env, self.cur = settings, env, cur
        self.topic = f"test.aggtrades-rc-{unique}"
        self.a, self.b = f"RA{unique.upper()}", f"RB{unique.upper()}"
        # An hour of 2016-2018 of its own, so its quality_results row and alert are the test's alone.
        self.start = datetime(2016, 1, 1, tzinfo=timezone.utc) + HOUR * (int(unique, 16) % (24 * 365 * 3))
        self.end = self.start + HOUR
        self.conf = {"start": self.start.isoformat(), "end": self.end.isoformat(), "symbols": [self.a, self.b]}
        self.alert_id = f"quality:{CHECK}:{self.start.isoformat()}"
        # Symbol A: three hours of the XRPETH tape (the hour before the window, the window, the hour after);
        # symbol B: the 90 s of the ETHUSDT tape, 20 minutes into the window.
        xrp = tape("xrpeth_aggtrades_20191011-13.json")
        hour = (xrp[0]["T"] // 3_600_000 + 10) * 3_600_000
        shift_a = ms(self.start) - hour
        eth = tape("ethusdt_aggtrades_20210404.json")
        shift_b = ms(self.start + timedelta(minutes=20)) - eth[0]["T"]
        self.trades = [self.trade(self.a, t, shift_a) for t in xrp if hour - 3_600_000 <= t["T"] < hour + 7_200_000]
        self.trades += [self.trade(self.b, t, shift_b) for t in eth]
        self.trades.sort(key=lambda t: t["trade_time"])

    @staticmethod
    def trade(symbol: str, t: dict, shift: int) -> dict:
        return {"symbol": symbol, "agg_id": t["a"], "price": Decimal(t["p"]), "qty": Decimal(t["q"]),
                "first_trade_id": t["f"], "last_trade_id": t["l"], "trade_time": t["T"] + shift,
                "is_buyer_maker": t["m"]}

    def in_window(self, trade: dict) -> bool:
        return ms(self.start) <= trade["trade_time"] < ms(self.end)

    def expected(self, after: int | None = None) -> dict[str, set[int]]:
        """{symbol: agg ids of the window}, only those after `after` (ms) when given."""
        out: dict[str, set[int]] = {self.a: set(), self.b: set()}
        for t in self.trades:
            if self.in_window(t) and (after is None or t["trade_time"] > after):
                out[t["symbol"]].add(t["agg_id"])
        return out

    def setup(self) -> None:
        create_topics(self.settings, self.topic, partitions=3)
        kafka_security.grant(self.settings, self.grants())
        # Records the validation contract refuses, inside the window: counted as invalid, never repaired. JSON
        # nested 50,000 deep once raised RecursionError in the DAG; a trade stamped ten years ahead was taken.
        inside = ms(self.start + timedelta(minutes=30))
        records = [(self.a, json.dumps({"symbol": self.a, "agg_id": "not a number"}).encode(), inside),
                   (self.a, b"[" * 50_000 + b"]" * 50_000, inside),
                   (self.a, malformed.trade(self.a, agg_id=10**15, trade_time=int(time.time() * 1000) + 10 * YEAR_MS),
                    inside)]
        self.invalid = len(records)
        records += [(t["symbol"], schemas.to_json(schemas.TRADE, t), t["trade_time"]) for t in self.trades]
        failed = []
        producer = Producer({**self.settings.kafka_config(), "partitioner": "murmur2_random"})  # the source's
        for key, value, timestamp in sorted(records, key=lambda r: r[2]):
            producer.produce(self.topic, key=key.encode(), value=value, timestamp=timestamp,
                             on_delivery=lambda err, _: err and failed.append(err))
            producer.poll(0)
        assert producer.flush(30) == 0 and not failed, failed
        self.cur.executemany(
            "INSERT INTO trades (symbol, agg_id, price, qty, first_trade_id, last_trade_id, trade_time, "
            "is_buyer_maker) VALUES (%(symbol)s, %(agg_id)s, %(price)s, %(qty)s, %(first_trade_id)s, %(last_trade_id)s, "
            "%(trade_time)s, %(is_buyer_maker)s)",
            [{**t, "trade_time": EPOCH + timedelta(milliseconds=t["trade_time"])} for t in self.trades])

    def grants(self) -> list[Grant]:
        return [Grant("airflow", TOPIC, self.topic, op) for op in (kafka_security.R, kafka_security.D)]

    def cleanup(self) -> None:
        self.cur.execute("DELETE FROM trades WHERE symbol = ANY(%s)", ([self.a, self.b],))
        self.cur.execute("DELETE FROM quality_results WHERE check_name = %s AND window_start = %s AND window_end = %s",
                         (CHECK, self.start, self.end))
        self.cur.execute("DELETE FROM alerts WHERE alert_id = %s", (self.alert_id,))
        kafka_security.revoke(self.settings, self.grants())
        delete_topics(self.settings, self.topic)

    def run(self) -> dict[str, str]:
        return run_dag({**self.env, "CRYPTO_AGGTRADES_TOPIC": self.topic}, CHECK, self.conf)

    def result(self) -> tuple[bool, dict]:
        self.cur.execute("SELECT passed, detail FROM quality_results WHERE check_name = %s AND window_start = %s "
                         "AND window_end = %s", (CHECK, self.start, self.end))
        passed, detail = self.cur.fetchone()
        return passed, json.loads(detail)

    def rows(self, symbol: str, ids) -> dict[int, tuple]:
        self.cur.execute("SELECT agg_id, price, qty, first_trade_id, last_trade_id, trade_time, is_buyer_maker "
                         "FROM trades WHERE symbol = %s AND agg_id = ANY(%s)", (symbol, list(ids)))
        return {r[0]: r[1:] for r in self.cur.fetchall()}


@pytest.fixture
def recon(settings, unique, airflow_env, stack):
    conn = psycopg2.connect(**settings.pg_params("owner"))
    conn.autocommit = True
    r = Recon(settings, unique, airflow_env, conn.cursor())
    try:
        r.setup()
        yield r
    finally:
        r.cleanup()
        conn.close()


def assert_agree(detail: dict, expected: dict[str, set[int]]) -> None:
    """Both sides hold exactly the expected trades, nothing missing, nothing repaired."""
    assert set(detail["symbols"]) == set(expected)
    for symbol, ids in expected.items():
        assert detail["symbols"][symbol] == {
            "kafka": len(ids), "postgres": len(ids), "missing_in_postgres": {"count": 0, "ids": []},
            "missing_in_kafka": {"count": 0, "ids": []}, "repaired": 0}, symbol
    assert detail["repaired"] == 0


def test_a_clean_window_reconciles_with_nothing_to_repair(recon):
    assert recon.run() == {"validate_params": "success", "reconcile": "success"}
    passed, detail = recon.result()
    assert passed
    expected = recon.expected()
    assert len(expected[recon.a]) > 100 and len(expected[recon.b]) == 506  # the hours around it are not counted
    assert_agree(detail, expected)
    assert detail["invalid"] == recon.invalid and detail["retention"] is None and detail["topic"] == recon.topic


def test_trades_missing_in_postgres_are_found_and_restored_once(recon):
    window_a = sorted(recon.expected()[recon.a])
    gone = {recon.a: set(window_a[5:55:10]), recon.b: set(sorted(recon.expected()[recon.b])[100:102])}
    after = next(t for t in recon.trades if t["symbol"] == recon.a and t["trade_time"] >= ms(recon.end))
    kafka = {(t["symbol"], t["agg_id"]): t for t in recon.trades}
    for symbol, ids in gone.items():
        recon.cur.execute("DELETE FROM trades WHERE symbol = %s AND agg_id = ANY(%s)", (symbol, list(ids)))
    # Outside the window: not this run's to find.
    recon.cur.execute("DELETE FROM trades WHERE symbol = %s AND agg_id = %s", (recon.a, after["agg_id"]))

    assert recon.run() == {"validate_params": "success", "reconcile": "success"}
    passed, detail = recon.result()
    assert passed and detail["repaired"] == 7
    for symbol, ids in gone.items():
        got = detail["symbols"][symbol]
        assert got["missing_in_postgres"] == {"count": len(ids), "ids": sorted(ids)}
        assert got["repaired"] == len(ids) and got["missing_in_kafka"]["count"] == 0
        assert got["kafka"] == len(recon.expected()[symbol]) == got["postgres"] + len(ids)
        restored = recon.rows(symbol, ids)
        assert restored == {i: (kafka[symbol, i]["price"], kafka[symbol, i]["qty"], kafka[symbol, i]["first_trade_id"],
                                kafka[symbol, i]["last_trade_id"],
                                EPOCH + timedelta(milliseconds=kafka[symbol, i]["trade_time"]),
                                kafka[symbol, i]["is_buyer_maker"]) for i in ids}
    assert recon.rows(recon.a, [after["agg_id"]]) == {}

    assert recon.run() == {"validate_params": "success", "reconcile": "success"}
    passed, detail = recon.result()
    assert passed
    assert_agree(detail, recon.expected())


def test_records_deleted_by_retention_are_reported_not_counted_as_missing(recon):
    # Kafka drops the start of the window in symbol A's partition (what retention does to old segments).
    msgs = [m for m in read_topic(recon.settings, recon.topic)
            if m.key().decode() == recon.a and ms(recon.start) <= m.timestamp()[1] < ms(recon.end)]
    cut = msgs[20]
    partition = cut.partition()
    admin = AdminClient(recon.settings.kafka_config())
    for fut in admin.delete_records([TopicPartition(recon.topic, partition, cut.offset())]).values():
        fut.result()
    # Kafka now holds that partition from the record at `cut` (records of its millisecond may be gone too).
    held_from = cut.timestamp()[1]
    recon.cur.execute("SELECT count(*) FROM trades WHERE symbol = ANY(%s) AND trade_time >= %s AND trade_time <= %s",
                      ([recon.a, recon.b], recon.start, EPOCH + timedelta(milliseconds=held_from)))
    not_compared = recon.cur.fetchone()[0]
    assert not_compared >= 20

    assert recon.run() == {"validate_params": "success", "reconcile": "success"}
    passed, detail = recon.result()
    assert passed
    assert_agree(detail, recon.expected(after=held_from))
    note = detail["retention"]
    assert note.startswith(f"Kafka no longer holds {recon.topic}[{partition}] before ")
    assert note.endswith(f"(retention): {not_compared} trades in PostgreSQL not compared")
    recon.cur.execute("SELECT count(*) FROM trades WHERE symbol = ANY(%s)", ([recon.a, recon.b],))
    assert recon.cur.fetchone()[0] == len(recon.trades)  # PostgreSQL keeps them all


def test_a_trade_kafka_never_had_fails_the_run_and_raises_an_alert(recon):
    stranger = max(t["agg_id"] for t in recon.trades if t["symbol"] == recon.a) + 1000
    recon.cur.execute("INSERT INTO trades VALUES (%s, %s, 0.001, 1, %s, %s, %s, true)",
                      (recon.a, stranger, stranger, stranger, recon.start + timedelta(minutes=45)))

    assert recon.run() == {"validate_params": "success", "reconcile": "failed"}
    passed, detail = recon.result()
    assert not passed
    got = detail["symbols"][recon.a]
    assert got["missing_in_kafka"] == {"count": 1, "ids": [stranger]}
    assert got["missing_in_postgres"]["count"] == 0 and detail["repaired"] == 0
    recon.cur.execute("SELECT rule, symbol, window_start FROM alerts WHERE alert_id = %s", (recon.alert_id,))
    assert recon.cur.fetchall() == [(f"quality:{CHECK}", "*", recon.start)]
