"""The stream function: Quix Streams over `binance.aggtrades`, writing the same topics as ksql/.

    stream-processor            (console entry point; `make stream` runs it)

- crypto.candles-1m: 1-minute tumbling OHLCV per symbol, emitted as it changes, like ksqlDB's EMIT
  CHANGES with its record cache: at each commit, the latest state of every window that changed since the
  last one. The JDBC sink's upsert on (symbol, window_start) ends on the final candle.
- crypto.stats-5m: 5-minute windows advancing by 1 minute, emitted once when each window closes (built
  from closed 1-minute aggregates, so a trade updates one window, not six).
- crypto.alerts: price-move and volume rules, checked on every trade; each alert id is emitted once, by
  the trade that first breaks the rule in its window.
- crypto.trades: every trade that passes the validation contract (cryptopipe.schemas.check_trade), byte for
  byte as received, with its key and timestamp: what the JDBC sink loads into `trades`.
- crypto.dlq.stream: every record that breaks the contract (tombstones included), and any record whose
  handling raised, with the reason and its topic, partition and offset in headers; the next one follows.

Each trade updates a single window state: its 1-minute aggregate, which holds the candle, the sums for
the statistics and the rules already raised. Window state lives in RocksDB with changelog topics, so a
`kill -9` loses none of it. The processing guarantee is exactly-once (Kafka transactions): candles, stats,
alerts, validated trades, dead letters, window state and input offsets commit together, so after a crash
nothing is written twice, and the sinks read with isolation.level=read_committed. Late trades within the
grace period update their window; later ones are counted and logged (and still go to crypto.trades).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from decimal import Decimal

from confluent_kafka import KafkaException
from quixstreams import Application, message_context
from quixstreams.exceptions import QuixException
from quixstreams.sinks import BaseSink
from quixstreams.state.exceptions import StateSerializationError

from cryptopipe import schemas
from cryptopipe.dlq import DeadLetters
from cryptopipe.logs import setup_logging
from cryptopipe.run import write_status
from cryptopipe.settings import Settings, load_settings, parse_thresholds
from functions.stream_processor.windows import (
    AlertRules,
    alert_id,
    candle_record,
    minute_add,
    minute_init,
    parse_trade,
    stats_merge,
    stats_record,
)

log = logging.getLogger("stream_processor")

MINUTE_MS = 60_000
# Errors of the machinery, not of one record: they stop the function (its supervisor restarts it), since
# skipping the record would not help. Every other error handling a record sends that record to the DLQ.
NOT_THE_RECORDS_FAULT = (KafkaException, BufferError, MemoryError, QuixException)


class Outputs(BaseSink):
    """The one writer of candles, statistics and alerts, through the application's own transactional
    producer, so they commit atomically with the window state and the input offsets.

    Quix's to_topic() would write a candle for every trade; ksqlDB writes a changing table through a
    record cache, once per window per commit. Quix has no such cache, so this is it: `candle()` keeps the
    latest state of each changed window, and `flush()`, which Quix calls at the start of every commit,
    writes them. Closed 5-minute windows arrive through the sink's `add()`; alerts are written as they
    happen.
    """

    def __init__(self, fn: "StreamFunction"):
        super().__init__()
        self.fn = fn
        self.changed: dict[tuple[str, int], dict] = {}

    def produce(self, topic: str, key: str, value: bytes, counter: str) -> None:
        self.fn.app._producer.produce(topic=topic, key=key.encode(), value=value)  # the app's transaction
        self.fn.counters[counter] += 1

    def trade(self, t: dict, timestamp_ms: int) -> None:
        """A validated trade to crypto.trades as received: same bytes, key and timestamp."""
        self.fn.app._producer.produce(topic=self.fn.s.trades_topic, key=t["key"], value=t["raw"],
                                      timestamp=timestamp_ms)
        self.fn.counters["trades_out"] += 1

    def candle(self, key: str, window: dict) -> None:
        self.changed[(key, window["start"])] = window

    def alert(self, key: str, window: dict, rule: str, value: str, threshold: str) -> None:
        aid = alert_id(key, rule, window["start"])
        record = {"alert_id": aid, "symbol": key, "rule": rule, "window_start": window["start"],
                  "value": Decimal(value), "threshold": Decimal(threshold),
                  "price": Decimal(window["value"]["close"]), "detected_at": int(time.time() * 1000)}
        self.produce(self.fn.s.alerts_topic, aid, schemas.to_json(schemas.ALERT, record), "alerts_out")

    def add(self, value, key, timestamp, headers, topic, partition, offset) -> None:
        record = stats_record(key, value["start"], value["end"], stats_merge(value["value"]))
        self.produce(self.fn.s.stats_topic, key, schemas.to_json(schemas.STATS, record), "stats_out")

    def flush(self) -> None:
        topic = self.fn.s.candles_topic
        for (key, start), w in self.changed.items():
            record = candle_record(key, start, w["end"], w["value"])
            self.produce(topic, key, schemas.to_json(schemas.CANDLE, record), "candles_out")
        self.changed.clear()


class StreamFunction:
    """Builds the Quix pipeline from the settings; `run()` processes until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.counters: Counter = Counter()
        self.last_report = 0.0
        self.rules = AlertRules(
            move_pct=Decimal(str(settings.alert_move_pct)),
            quote_volume=Decimal(str(settings.alert_quote_volume)),
            move_pct_by_symbol=parse_thresholds(settings.alert_move_pct_symbols),
            quote_volume_by_symbol=parse_thresholds(settings.alert_quote_volume_symbols),
        )
        instance = f"{settings.stream_consumer_group}-{settings.stream_instance_id}"
        self.app = Application(
            broker_address=settings.kafka_bootstrap,
            consumer_group=settings.stream_consumer_group,
            auto_offset_reset="earliest",
            processing_guarantee=settings.stream_processing_guarantee,
            commit_interval=settings.stream_commit_interval_s,
            state_dir=str(settings.var_dir / "state" / "stream"),
            # A stable identity per replica: a restart after kill -9 rejoins the group at once (static
            # membership) and aborts the dead instance's open transaction (same transactional.id), instead
            # of waiting out the session and transaction timeouts.
            consumer_extra_config={"isolation.level": "read_committed", "group.instance.id": instance},
            producer_extra_config={"transactional.id": instance},
            on_processing_error=self.on_error,
            loglevel=None,
        )
        # Dead letters go through the application's producer too: in the transaction, so exactly once.
        self.dlq = DeadLetters(settings, "stream", producer=self.app._producer)
        self.outputs = Outputs(self)
        self.build()

    def build(self) -> None:
        s, app = self.s, self.app
        grace_ms = s.stream_grace_s * 1000
        # Keys as bytes: a key that is not UTF-8 is a bad record for the contract to refuse, not a crash.
        trades = app.dataframe(app.topic(s.aggtrades_topic, key_deserializer="bytes", value_deserializer="bytes"))
        trades = trades.apply(self.parse, metadata=True).filter(lambda t: t is not None)
        minutes = trades.tumbling_window(duration_ms=MINUTE_MS, grace_ms=grace_ms, name="minutes_1m",
                                         on_late=self.on_late)
        rules = self.rules
        minutes = minutes.reduce(reducer=lambda m, t: minute_add(m, t, rules),
                                 initializer=lambda t: minute_init(t, rules))
        closed = self.changes(minutes)
        # Each closed minute is stored once and the five are merged when the window closes, rather than
        # merged into five window states as it arrives. (A new store name: "stats_5m" held reduced values.)
        stats = closed.hopping_window(duration_ms=5 * MINUTE_MS, step_ms=MINUTE_MS, grace_ms=grace_ms,
                                      name="stats_5m_minutes").collect().final()
        stats.sink(self.outputs)

    def changes(self, window):
        """The 1-minute window, read both ways at once: every updated window goes to the candle cache (and
        raises its new alerts), every closed one flows on to the statistics. Quix's current() drops the
        closed windows and final() the updates; one state read both ways is half the work of two windows.
        (`_apply_window` is how Quix builds current() and final() themselves.)"""
        outputs = self.outputs

        def updates_and_closes(value, _key, timestamp_ms, headers, transaction):
            # The window state is keyed by the symbol as a string (what the valid key decodes to), as it was
            # when keys were read as strings: state written before stays readable.
            updated, closed = window.process_window(value=value, key=value["symbol"], timestamp_ms=timestamp_ms,
                                                    headers=headers, transaction=transaction)
            outputs.trade(value, timestamp_ms)  # counted in its window (or logged as late): it is valid
            for key, w in updated:
                outputs.candle(key, w)
                for rule, amount, threshold in w["value"]["new"]:
                    outputs.alert(key, w, rule, amount, threshold)
            for key, w in closed:
                yield w["value"], key, w["start"], None

        return window._apply_window(func=updates_and_closes, name=window.name)

    # ---- steps ---------------------------------------------------------------------------------

    def parse(self, raw: bytes | None, key: bytes | None, _timestamp, _headers) -> dict | None:
        """The trade, checked against the validation contract; None (and a dead letter) for a bad record."""
        self.count("trades_in")
        try:
            trade = parse_trade(key, raw)
        except schemas.Invalid as err:
            ctx = message_context()
            self.dead_letter(raw, key, str(err), ctx.topic, ctx.partition, ctx.offset, "bad_records")
            return None
        trade["raw"], trade["key"] = raw, key
        return trade

    def on_error(self, exc: Exception, row, _logger) -> bool:
        """Quix's processing-error callback: a record whose handling raised goes to the dead-letter topic,
        as received, and processing goes on (True); errors of the machinery itself stop the function."""
        if row is None or (isinstance(exc, NOT_THE_RECORDS_FAULT) and not isinstance(exc, StateSerializationError)):
            return False
        log.exception("internal error handling %s[%s]@%s", row.topic, row.partition, row.offset)
        self.dead_letter(row.value, row.key, f"internal error: {exc!r:.500}", row.topic, row.partition, row.offset,
                         "internal_errors")
        return True

    def dead_letter(self, raw, key, reason: str, topic: str, partition: int, offset: int, counter: str) -> None:
        self.count(counter)
        log.warning("bad record %s[%d]@%d to %s: %s", topic, partition, offset, self.dlq.topic, reason)
        self.dlq.send(raw, key, reason, topic=topic, partition=partition, offset=offset)

    def on_late(self, value, key, timestamp_ms, late_by_ms, start, end, store_name, topic, partition, offset) -> bool:
        self.count("late_trades")
        log.warning("late trade %s id %s at %d is %d ms past the grace of window %d-%d (%s[%d]@%d); not counted",
                    key, value.get("id"), timestamp_ms, late_by_ms, start, end, topic, partition, offset)
        return False  # logged here, with the trade's id

    # ---- reporting -----------------------------------------------------------------------------

    def count(self, name: str) -> None:
        self.counters[name] += 1
        now = time.monotonic()
        if now - self.last_report >= 5:
            self.last_report = now
            self.report()

    def report(self) -> None:
        write_status(self.s, "stream", {"updated_at": int(time.time() * 1000), "counters": dict(self.counters)})
        log.info("counters: %s", dict(self.counters))

    def run(self) -> None:
        log.info("reading %s as group %s (%s), writing %s, %s, %s, %s; dead letters to %s", self.s.aggtrades_topic,
                 self.s.stream_consumer_group, self.s.stream_processing_guarantee, self.s.trades_topic,
                 self.s.candles_topic, self.s.stats_topic, self.s.alerts_topic, self.dlq.topic)
        try:
            self.app.run()
        finally:
            self.report()


def main() -> int:
    settings = load_settings()
    setup_logging(settings)
    StreamFunction(settings).run()  # Quix handles SIGTERM/SIGINT itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
