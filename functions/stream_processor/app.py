"""The stream function: Quix Streams over `binance.aggtrades`, writing the same topics as ksql/.

    stream-processor            (console entry point; `make stream` runs it)

- crypto.candles-1m: 1-minute tumbling OHLCV per symbol, emitted on every update (like ksqlDB's
  EMIT CHANGES); the JDBC sink's upsert on (symbol, window_start) ends on the final candle.
- crypto.stats-5m: 5-minute windows advancing by 1 minute, emitted once when each window closes (built
  from closed 1-minute aggregates, so a trade updates two windows, not six).
- crypto.alerts: price-move and volume rules on the candles, each alert id emitted once.
- crypto.dlq.stream: records that cannot be read, with the reason in headers.

Window state lives in RocksDB with changelog topics, so a `kill -9` loses none of it. The processing
guarantee is exactly-once (Kafka transactions): after a crash no candle or alert is written twice, and the
sinks read with isolation.level=read_committed. Late trades within the grace period update their window;
later ones are counted and logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from decimal import Decimal

from confluent_kafka import Producer
from quixstreams import Application
from quixstreams.models.serializers.json import JSONSerializer

from cryptopipe import schemas
from cryptopipe.logs import setup_logging
from cryptopipe.settings import Settings, load_settings
from cryptopipe.topics import dlq_headers
from functions.stream_processor.windows import (
    AlertRules,
    BadRecord,
    alert_id,
    candle_add,
    candle_init,
    candle_record,
    minute_add,
    minute_init,
    parse_thresholds,
    parse_trade,
    stats_add,
    stats_init,
    stats_record,
)

log = logging.getLogger("stream_processor")

MINUTE_MS = 60_000


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
        self.dlq = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
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
            loglevel=None,
        )
        self.build()

    def build(self) -> None:
        s, app = self.s, self.app
        grace_ms = s.stream_grace_s * 1000
        trades = app.dataframe(app.topic(s.stream_input_topic, key_deserializer="str", value_deserializer="bytes"))
        trades = trades.apply(self.parse).filter(lambda t: t is not None)

        candles = (
            trades.tumbling_window(duration_ms=MINUTE_MS, grace_ms=grace_ms, name="candles_1m", on_late=self.on_late)
            .reduce(reducer=candle_add, initializer=candle_init)
            .current()
            .apply(lambda w, key, _ts, _headers: candle_record(key, w["start"], w["end"], w["value"]), metadata=True)
        )
        candles.to_topic(self.out_topic(s.stream_candles_topic, schemas.CANDLE, "candles_out"))

        alerts = candles.apply(self.detect_alerts, stateful=True, expand=True)
        alerts.to_topic(self.out_topic(s.stream_alerts_topic, schemas.ALERT, "alerts_out"), key=lambda a: a["alert_id"])

        stats = (
            trades.tumbling_window(duration_ms=MINUTE_MS, grace_ms=grace_ms, name="minutes_1m",
                                   on_late=lambda *a, **k: False)  # the candles window logs late trades
            .reduce(reducer=minute_add, initializer=minute_init)
            .final()
            .apply(lambda w: w["value"])
            .hopping_window(duration_ms=5 * MINUTE_MS, step_ms=MINUTE_MS, grace_ms=grace_ms, name="stats_5m")
            .reduce(reducer=stats_add, initializer=stats_init)
            .final()
            .apply(lambda w, key, _ts, _headers: stats_record(key, w["start"], w["end"], w["value"]), metadata=True)
        )
        stats.to_topic(self.out_topic(s.stream_stats_topic, schemas.STATS, "stats_out"))

    def out_topic(self, name: str, fields, counter: str):
        def dumps(value: dict) -> bytes:
            self.counters[counter] += 1  # counted here: one step less per record than an .update()
            return schemas.to_json(fields, value)

        return self.app.topic(name, key_serializer="str", value_serializer=JSONSerializer(dumps=dumps))

    # ---- steps ---------------------------------------------------------------------------------

    def parse(self, raw: bytes) -> dict | None:
        self.count("trades_in")
        try:
            return parse_trade(raw)
        except BadRecord as err:
            self.count("bad_records")
            log.warning("bad record to %s: %s", self.s.stream_dlq_topic, err)
            self.dlq.produce(self.s.stream_dlq_topic, value=raw, headers=dlq_headers(
                "stream", str(err), topic=self.s.stream_input_topic))
            self.dlq.poll(0)
            return None

    def on_late(self, value, key, timestamp_ms, late_by_ms, start, end, store_name, topic, partition, offset) -> bool:
        self.count("late_trades")
        log.warning("late trade %s id %s at %d is %d ms past the grace of window %d-%d (%s[%d]@%d); not counted",
                    key, value.get("id"), timestamp_ms, late_by_ms, start, end, topic, partition, offset)
        return False  # logged here, with the trade's id

    def detect_alerts(self, candle: dict, state) -> list[dict]:
        """Alerts the candle raises that this symbol has not raised yet (state holds the ids sent)."""
        broken = self.rules.check(candle)
        if not broken:  # the common case touches no state
            return []
        out = []
        sent = state.get("sent", [])
        for rule, value, threshold in broken:
            aid = alert_id(candle["symbol"], rule, candle["window_start"])
            if aid in sent:
                continue
            sent.append(aid)
            out.append({"alert_id": aid, "symbol": candle["symbol"], "rule": rule,
                        "window_start": candle["window_start"], "value": value, "threshold": threshold,
                        "price": Decimal(candle["close"]), "detected_at": int(time.time() * 1000)})
        if out:
            state.set("sent", sent[-200:])  # ids of recent windows are enough: older windows are closed
        return out

    # ---- reporting -----------------------------------------------------------------------------

    def count(self, name: str) -> None:
        self.counters[name] += 1
        now = time.monotonic()
        if now - self.last_report >= 5:
            self.last_report = now
            self.report()

    def report(self) -> None:
        path = self.s.var_dir / "run" / "stream.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")  # whole, then renamed: others read it while it changes
        partial.write_text(json.dumps({"updated_at": int(time.time() * 1000), "counters": dict(self.counters)}))
        partial.replace(path)
        log.info("counters: %s", dict(self.counters))

    def run(self) -> None:
        log.info("reading %s as group %s (%s), writing %s, %s, %s", self.s.stream_input_topic,
                 self.s.stream_consumer_group, self.s.stream_processing_guarantee, self.s.stream_candles_topic,
                 self.s.stream_stats_topic, self.s.stream_alerts_topic)
        try:
            self.app.run()
        finally:
            self.dlq.flush(30)
            self.report()


def main() -> int:
    settings = load_settings()
    setup_logging(settings)
    StreamFunction(settings).run()  # Quix handles SIGTERM/SIGINT itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
