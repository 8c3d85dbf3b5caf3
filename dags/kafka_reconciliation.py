"""
### kafka_reconciliation

Hourly reconciliation of the raw trades in Kafka (`binance.aggtrades`, or `$CRYPTO_AGGTRADES_TOPIC`) with the
`trades` table, for the run's data interval (or `params.start` / `params.end`; `params.symbols` narrows it):

- reads the topic for the window with the Kafka provider's consumer (connection `crypto_kafka`): per partition
  from the offset of the window's start to the offset of its end (`offsets_for_times`), or the high watermark
  when nothing newer exists; partitions assigned, committed records only, no offset ever committed;
- keeps per symbol the agg ids of the valid trades (`cryptopipe.schemas.check_trade`, the stream job's
  contract); records it refuses are counted as invalid: the stream job dead-letters them, `trades` never has them;
- compares them with the trades of the window in PostgreSQL (`crypto_reader`): counts per symbol and the agg ids
  missing on either side;
- repairs: trades in Kafka but not in PostgreSQL are inserted through `crypto_backfill` (a role that may only
  insert into `trades`; `ON CONFLICT DO NOTHING`, so a re-run inserts nothing);
- trades in PostgreSQL that Kafka does not hold cannot be repaired from Kafka: a mismatch;
- retention: when Kafka has deleted the start of the window, only the part it still holds is compared, and the
  result says how many trades in PostgreSQL were not compared.

The outcome is one row in `quality_results` (`check_name` `kafka_reconciliation`, details as JSON) written
through `crypto_airflow`; a mismatch also writes an alert `quality:kafka_reconciliation:<start>` and fails the
run. The task logs one summary line per symbol.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowFailException

# crypto_params sits next to this file. Airflow's processes put this folder on sys.path; a bare DagBag
# (ops.dag_run, the tests) does not.
if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))
from crypto_params import as_datetime, check_window, symbol_list, symbols_param, window_params  # noqa: E402

SQL = Path(__file__).parent / "sql"
CHECK = "kafka_reconciliation"
KAFKA_CONN = "crypto_kafka"
# The consumer is built from the connection as it is: it must see only committed records and never commit
# offsets (the airflow user may read its group, so Kafka would accept a commit).
CONSUMER_SETTINGS = {"enable.auto.commit": "false", "isolation.level": "read_committed"}
TIMEOUT_S = 30
BATCH = 1000  # rows per INSERT round trip in the repair
SHOWN_IDS = 20  # agg ids listed per symbol and side in the result; the counts are complete
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

log = logging.getLogger(__name__)

START = "{{ params.start or (data_interval_start if data_interval_start < data_interval_end else data_interval_end - macros.timedelta(hours=1)) }}"
END = "{{ params.end or data_interval_end }}"


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def iso(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")


class TopicWindow:
    """The valid trades of one window in one topic, read partition by partition with an assigned consumer."""

    def __init__(self, consumer, topic: str, start_ms: int, end_ms: int, symbols: list[str] | None,
                 max_skew_ms: int):
        self.consumer, self.topic, self.max_skew_ms = consumer, topic, max_skew_ms
        self.start_ms, self.end_ms, self.symbols = start_ms, end_ms, symbols
        self.trades: dict[str, dict[int, dict]] = {}  # symbol -> agg id -> trade
        self.invalid = 0
        self.lost: dict[int, int] = {}  # partition -> time from which Kafka still holds it (retention)
        self.unread: dict[int, tuple[int, int]] = {}  # partition -> (the window end's offset, high watermark)

    def read(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        meta = self.consumer.list_topics(self.topic, timeout=TIMEOUT_S).topics[self.topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        partitions = sorted(meta.partitions)
        # Watermarks first: the read is bounded by what the topic held when it began.
        marks = {p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=TIMEOUT_S,
                                                        cached=False) for p in partitions}
        firsts, ends = (self.offsets_at(partitions, ms) for ms in (self.start_ms, self.end_ms))
        for p in partitions:
            low, high = marks[p]
            # -1: no record at or after that time, so read up to the high watermark.
            first_offset = firsts[p] if 0 <= firsts[p] < high else high
            stop = min(ends[p], high) if ends[p] >= 0 else high
            oldest = self.scan(p, first_offset, max(stop, first_offset))
            # Retention (the rule): offsets_for_times finds the first record at or after a time among the records
            # Kafka still holds. When that is the partition's first retained record (log start > 0), records of
            # the window before it may have been deleted; Kafka covers the partition only after that record's
            # time (same-millisecond records may be gone too), or not at all when it holds nothing.
            if low > 0 and first_offset <= low:
                self.lost[p] = self.end_ms if oldest is None else oldest
            self.unread[p] = (max(stop, first_offset), high)

    def offsets_at(self, partitions: list[int], ms: int) -> dict[int, int]:
        """{partition: the offset of its first record at or after `ms`, or -1 when none is}"""
        from confluent_kafka import KafkaException, TopicPartition

        found = self.consumer.offsets_for_times([TopicPartition(self.topic, p, ms) for p in partitions],
                                                timeout=TIMEOUT_S)
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return {tp.partition: tp.offset for tp in found}

    def read_rest(self) -> None:
        """From each partition's end offset on to its high watermark. offsets_for_times gives the first record at
        or after the window's end, but a trade written later with an older time (a backfill of one symbol after
        another's newer trades) lies beyond it."""
        for p, (stop, high) in self.unread.items():
            self.scan(p, stop, high)
        self.unread = {}

    def scan(self, partition: int, first: int, stop: int) -> int | None:
        """Collect the window's trades at offsets [first, stop) of one partition; the time of the first record
        read, if any."""
        from confluent_kafka import KafkaException, TopicPartition

        from cryptopipe import schemas

        if first >= stop:
            return None
        oldest = None
        self.consumer.assign([TopicPartition(self.topic, partition, first)])
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            msgs = self.consumer.consume(10_000, timeout=1)
            for msg in msgs:
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                if msg.offset() >= stop:
                    break
                if oldest is None:
                    oldest = msg.timestamp()[1]
                try:
                    trade = schemas.check_trade(msg.key(), msg.value(), self.max_skew_ms, msg.timestamp()[1])
                except schemas.Invalid:
                    # No trade time to trust: the record's timestamp (the trade time, by contract) places it.
                    key = (msg.key() or b"").decode(errors="replace")
                    if self.start_ms <= msg.timestamp()[1] < self.end_ms and self.wanted(key):
                        self.invalid += 1
                    continue
                if self.start_ms <= trade["trade_time"] < self.end_ms and self.wanted(trade["symbol"]):
                    self.trades.setdefault(trade["symbol"], {})[trade["agg_id"]] = trade
            # Transaction markers take offsets too: done once the position reaches the stop.
            [position] = self.consumer.position([TopicPartition(self.topic, partition)])
            if position.offset >= stop:
                return oldest
            if msgs:
                deadline = time.monotonic() + TIMEOUT_S
            elif time.monotonic() > deadline:
                raise TimeoutError(f"reading {self.topic}[{partition}] stalled at offset {position.offset} "
                                   f"before {stop}")

    def wanted(self, symbol: str) -> bool:
        return self.symbols is None or symbol in self.symbols


def compare(kafka: dict[str, dict[int, dict]], postgres: dict[str, dict[int, int]], cutoff: int | None) -> dict:
    """Per symbol: the covered agg ids on each side and those missing on either. `cutoff`: compare only trades
    after this time (ms), where Kafka may have lost records to retention."""
    out = {}
    for symbol in sorted(kafka.keys() | postgres.keys()):
        k = {i for i, t in kafka.get(symbol, {}).items() if cutoff is None or t["trade_time"] > cutoff}
        p = {i for i, ms in postgres.get(symbol, {}).items() if cutoff is None or ms > cutoff}
        out[symbol] = {"kafka": len(k), "postgres": len(p), "missing_in_postgres": sorted(k - p),
                       "missing_in_kafka": sorted(p - k)}
    return out


def backfill(trades: list[dict]) -> int:
    """Insert trades missing from PostgreSQL; the number inserted (a trade the sink wrote meanwhile is skipped)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    rows = [{**t, "trade_time": EPOCH + timedelta(milliseconds=t["trade_time"])} for t in trades]
    sql = (SQL / "reconciliation_backfill.sql").read_text()
    conn = PostgresHook(postgres_conn_id="crypto_backfill").get_conn()
    inserted = 0
    try:
        for i in range(0, len(rows), BATCH):
            with conn.cursor() as cur:
                cur.executemany(sql, rows[i:i + BATCH])
                inserted += cur.rowcount  # summed over the batch's statements; 0 for a conflict
            conn.commit()
    finally:
        conn.close()
    return inserted


def shown(ids: list[int]) -> dict:
    return {"count": len(ids), "ids": ids[:SHOWN_IDS]}


def max_skew_ms() -> int:
    """The validation contract's clock-skew bound (MAX_CLOCK_SKEW_S, which make up passes on), checked like the
    settings check it."""
    from cryptopipe import schemas

    raw = os.environ.get("CRYPTO_MAX_CLOCK_SKEW_S", str(schemas.DEFAULT_MAX_CLOCK_SKEW_S))
    limit = schemas.MAX_CLOCK_SKEW_LIMIT_S
    if not raw.isdigit() or not 1 <= int(raw) <= limit:
        raise AirflowFailException(f"CRYPTO_MAX_CLOCK_SKEW_S={raw!r:.40} is not a whole number of seconds in 1..{limit}")
    return int(raw) * 1000


def reconcile_window(start: datetime, end: datetime, symbols: list[str] | None) -> dict:
    """Compare the window's trades in Kafka and PostgreSQL, insert what PostgreSQL misses; the result's details."""
    from airflow.providers.apache.kafka.hooks.consume import KafkaConsumerHook
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from cryptopipe import topics

    topic = os.environ.get("CRYPTO_AGGTRADES_TOPIC") or topics.AGGTRADES
    hook = KafkaConsumerHook([topic], kafka_config_id=KAFKA_CONN)
    extra = hook.get_connection(KAFKA_CONN).extra_dejson
    wrong = {k: extra.get(k) for k, v in CONSUMER_SETTINGS.items() if str(extra.get(k)).lower() != v}
    if wrong:
        raise AirflowFailException(f"connection {KAFKA_CONN} must set {CONSUMER_SETTINGS} in its extra, has {wrong}")

    # PostgreSQL first: every trade it holds came through Kafka before, so the Kafka read that follows has it.
    rows = PostgresHook(postgres_conn_id="crypto_reader").get_records(
        (SQL / "reconciliation_trades.sql").read_text(), parameters={"start": start, "end": end, "symbols": symbols})
    postgres: dict[str, dict[int, int]] = {}
    for symbol, agg_id, ms in rows:
        postgres.setdefault(symbol, {})[agg_id] = ms

    # get_conn: the provider's consumer built from the connection, not subscribed; partitions are assigned.
    consumer = hook.get_conn
    try:
        window = TopicWindow(consumer, topic, epoch_ms(start), epoch_ms(end), symbols, max_skew_ms())
        window.read()
        # One cutoff for the whole topic: the latest time from which every partition is still held. Which
        # partition a symbol lives in follows from Kafka's key hash, which this DAG does not compute; one cutoff
        # never reports a false gap, and retention only reaches windows about as old as the topic's retention.
        cutoff = max(window.lost.values()) if window.lost else None
        found = compare(window.trades, postgres, cutoff)
        if any(f["missing_in_kafka"] for f in found.values()):
            log.info("%s: trades in PostgreSQL not found up to the window end's offsets; reading on to the "
                     "high watermarks", topic)
            window.read_rest()
            found = compare(window.trades, postgres, cutoff)
    finally:
        consumer.close()  # nothing to commit: auto commit is off and commit() is never called

    note = None
    if cutoff is not None:
        not_compared = sum(ms <= cutoff for by_id in postgres.values() for ms in by_id.values())
        held = ", ".join(f"{topic}[{p}] before {iso(ms)}" for p, ms in sorted(window.lost.items()))
        note = f"Kafka no longer holds {held} (retention): {not_compared} trades in PostgreSQL not compared"
        log.warning(note)

    details, repaired_total = {}, 0
    for symbol, f in found.items():
        repaired = backfill([window.trades[symbol][i] for i in f["missing_in_postgres"]])
        repaired_total += repaired
        details[symbol] = {"kafka": f["kafka"], "postgres": f["postgres"],
                           "missing_in_postgres": shown(f["missing_in_postgres"]),
                           "missing_in_kafka": shown(f["missing_in_kafka"]), "repaired": repaired}
        log.info("%s: Kafka %d trades, PostgreSQL %d; missing in PostgreSQL %d (repaired %d), missing in Kafka %d %s",
                 symbol, f["kafka"], f["postgres"], len(f["missing_in_postgres"]), repaired,
                 len(f["missing_in_kafka"]), f["missing_in_kafka"][:SHOWN_IDS] or "")
    log.info("%s %s..%s: %d symbols, repaired %d, invalid records %d", topic, start.isoformat(), end.isoformat(),
             len(found), repaired_total, window.invalid)
    return {"topic": topic, "passed": not any(f["missing_in_kafka"] for f in found.values()), "symbols": details,
            "repaired": repaired_total, "invalid": window.invalid, "retention": note}


def record(result: dict, start: datetime, end: datetime, run_id: str | None) -> None:
    """The outcome as a row of quality_results; a mismatch also as an alert, like data_quality_check's checks."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    writer = PostgresHook(postgres_conn_id="crypto_airflow")
    writer.run((SQL / "quality_result.sql").read_text(),
               parameters={"check": CHECK, "start": start, "end": end, "passed": result["passed"],
                           "detail": json.dumps(result), "run_id": run_id})
    if not result["passed"]:
        writer.run((SQL / "quality_alert.sql").read_text(),
                   parameters={"id": f"quality:{CHECK}:{start.isoformat()}", "rule": f"quality:{CHECK}",
                               "start": start})


with DAG(
    dag_id="kafka_reconciliation",
    description="Reconcile the raw trades in Kafka with the trades table; insert what PostgreSQL misses",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["crypto", "quality", "kafka"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    params={**window_params(), "symbols": symbols_param()},
    render_template_as_native_obj=True,  # the window arrives as timestamps, the symbols as a list or None
) as dag:

    @task
    def validate_params(start, end, symbols) -> None:
        check_window(start, end)
        symbol_list(symbols)

    @task
    def reconcile(start, end, symbols, run_id=None) -> dict:
        start, end = as_datetime(start, "start"), as_datetime(end, "end")
        result = reconcile_window(start, end, symbol_list(symbols))
        record(result, start, end, run_id)
        mismatched = {s: d["missing_in_kafka"]["ids"] for s, d in result["symbols"].items()
                      if d["missing_in_kafka"]["count"]}
        if mismatched:
            # Recorded first; no retry: Kafka will not grow the trades it lacks.
            raise AirflowFailException(f"trades in PostgreSQL that {result['topic']} does not hold: "
                                       + "; ".join(f"{s} {ids}" for s, ids in mismatched.items()))
        return result

    validate_params(START, END, "{{ params.symbols }}") >> reconcile(START, END, "{{ params.symbols }}")
