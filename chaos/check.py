"""The chaos run's invariants, each against what the tape says, read from Kafka, PostgreSQL and Redis directly."""

from __future__ import annotations

import time
from decimal import Decimal

import psycopg2
import redis
from confluent_kafka import Consumer, KafkaError, TopicPartition

from chaos import tape
from cryptopipe import schemas, topics
from cryptopipe.settings import Settings

CONVERGE_S = 180.0
# Consumers of binance.aggtrades that must dead-letter every malformed record.
CONSUMER_DLQS = ("stream", "redis-sink")
CANDLE_KEYS = ("open", "high", "low", "close", "volume", "quote_volume", "trade_count", "vwap")
STATS_KEYS = ("open", "high", "low", "close", "volume", "trade_count", "range_pct", "volatility_pct")


def consumer(settings: Settings) -> Consumer:
    return Consumer({**settings.kafka_config(), "group.id": "chaos-check",
                     "enable.auto.commit": False, "isolation.level": "read_committed",
                     "enable.partition.eof": True})


def dlq_topics(settings: Settings) -> list[str]:
    return [t.name for t in topics.declared(settings) if t.dead_letter]


def dlq_ends(settings: Settings) -> dict[tuple[str, int], int]:
    """Where each dead-letter partition ends now: the chaos run reads only what comes after."""
    c = consumer(settings)
    try:
        ends = {}
        for name in dlq_topics(settings):
            for p in c.list_topics(name, timeout=10).topics[name].partitions:
                ends[(name, p)] = c.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
        return ends
    finally:
        c.close()


def read(settings: Settings, starts: dict[tuple[str, int], int]) -> list:
    """Every committed record from each (topic, partition)'s start offset to its current end."""
    c = consumer(settings)
    out = []
    try:
        todo = {}
        for (name, p), start in starts.items():
            end = c.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
            if end > start:
                todo[(name, p)] = end
        if not todo:
            return out
        c.assign([TopicPartition(name, p, starts[(name, p)]) for name, p in todo])
        open_parts = set(todo)
        deadline = time.monotonic() + 120
        while open_parts and time.monotonic() < deadline:
            msg = c.poll(1)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    open_parts.discard((msg.topic(), msg.partition()))
                continue
            out.append(msg)
    finally:
        c.close()
    return out


def kafka_trades(settings: Settings, symbols: set[str]) -> dict[str, list[int]]:
    """The agg ids of each symbol's valid trades on binance.aggtrades, in offset order (duplicates kept)."""
    c = consumer(settings)
    name = settings.aggtrades_topic
    parts = c.list_topics(name, timeout=10).topics[name].partitions
    starts = {(name, p): c.get_watermark_offsets(TopicPartition(name, p), timeout=10)[0] for p in parts}
    c.close()
    ids: dict[str, list[int]] = {s: [] for s in symbols}
    for msg in read(settings, starts):
        try:
            trade = schemas.check_trade(msg.key(), msg.value(), settings.max_clock_skew_ms, msg.timestamp()[1])
        except schemas.Invalid:  # the malformed records the run wrote itself
            continue
        if trade["symbol"] in ids:
            ids[trade["symbol"]].append(trade["agg_id"])
    return ids


def origin(msg) -> tuple[int, int] | None:
    """(partition, offset) of the record a dead letter was made from, from its error.* headers."""
    headers = dict(msg.headers() or [])
    try:
        return int(headers["error.partition"]), int(headers["error.offset"])
    except (KeyError, ValueError, TypeError):
        return None


def invariants(settings: Settings, trades: dict[str, list[dict]], sent: list[dict],
               dlq_starts: dict[tuple[str, int], int], alert_counts: dict[str, int], log) -> dict:
    symbols = sorted(trades)
    conn = psycopg2.connect(**settings.pg_params("reader"))
    conn.autocommit = True
    r = redis.Redis.from_url(settings.redis_url("reader"), decode_responses=True)
    expected_candles = {s: tape.candles(trades[s]) for s in symbols}
    expected_stats = {s: tape.stats(trades[s]) for s in symbols}
    # The windows the end of the tape surely closed (the watermark trails the newest trade by the grace period).
    closed_by = max(t["T"] for s in symbols for t in trades[s]) - settings.stream_grace_s * 1000 - 60_000
    must_close = {(s, ws) for s in symbols for ws in expected_stats[s] if ws + 5 * 60_000 <= closed_by}

    def db_state():
        with conn.cursor() as cur:
            cur.execute("SELECT symbol, agg_id, price, qty FROM trades WHERE symbol = ANY(%s)", (symbols,))
            rows = cur.fetchall()
            cur.execute(f"SELECT symbol, (extract(epoch FROM window_start) * 1000)::bigint, {', '.join(CANDLE_KEYS)} "
                        "FROM candles_1m WHERE symbol = ANY(%s)", (symbols,))
            candle_rows = cur.fetchall()
            cur.execute(f"SELECT symbol, (extract(epoch FROM window_start) * 1000)::bigint, {', '.join(STATS_KEYS)} "
                        "FROM stats_5m WHERE symbol = ANY(%s)", (symbols,))
            stats_rows = cur.fetchall()
        return rows, candle_rows, stats_rows

    def diff():
        rows, candle_rows, stats_rows = db_state()
        have = {(s, a): (p, q) for s, a, p, q in rows}
        lost_db = sum((s, t["a"]) not in have or have[(s, t["a"])] != (Decimal(t["p"]), Decimal(t["q"]))
                      for s in symbols for t in trades[s])
        got = {}
        for s, ws, *values in candle_rows:
            got.setdefault(s, {})[ws] = dict(zip(CANDLE_KEYS, values))
        wrong = sum(1 for s in symbols for ws in set(expected_candles[s]) | set(got.get(s, {}))
                    if expected_candles[s].get(ws) != got.get(s, {}).get(ws))
        prices = sum(r.hget(f"price:{s}", "agg_id") != str(trades[s][-1]["a"])
                     or Decimal(r.hget(f"price:{s}", "price") or "0") != Decimal(trades[s][-1]["p"]) for s in symbols)
        # Every statistic written must be exact (a trade judged late would be missing from it); every window the
        # tape closed must be there.
        stats = {(s, ws): dict(zip(STATS_KEYS, values)) for s, ws, *values in stats_rows}
        stats_wrong = sum(1 for (s, ws), got in stats.items() if expected_stats[s].get(ws) != got)
        stats_missing = len(must_close - stats.keys())
        return lost_db, wrong, prices, stats_wrong, stats_missing

    deadline = time.monotonic() + CONVERGE_S
    lost_db, wrong, prices, stats_wrong, stats_missing = diff()
    while (lost_db or wrong or prices or stats_wrong or stats_missing) and time.monotonic() < deadline:
        time.sleep(2)
        lost_db, wrong, prices, stats_wrong, stats_missing = diff()
    conn.close()

    in_kafka = kafka_trades(settings, set(symbols))
    duplicates = sum(len(ids) - len(set(ids)) for ids in in_kafka.values())
    lost_kafka = sum(len({t["a"] for t in trades[s]} - set(in_kafka[s])) for s in symbols)

    sent_at = {(m["partition"], m["offset"]) for m in sent}
    dlq_missing = dlq_unexpected = dlq_repeats = 0
    by_topic: dict[str, list] = {}
    for msg in read(settings, dlq_starts):
        by_topic.setdefault(msg.topic(), []).append(msg)
    for name in dlq_topics(settings):
        msgs = by_topic.get(name, [])
        wanted = sent_at if name in {settings.dlq_topic(c) for c in CONSUMER_DLQS} else set()
        seen = [origin(m) for m in msgs]
        dlq_missing += len(wanted - set(seen))
        dlq_unexpected += sum(o not in wanted for o in seen)
        dlq_repeats += len(seen) - len(set(seen))
        if msgs or wanted:
            log(f"  {name}: {len(msgs)} dead letters, {len(wanted)} expected")
    twice = sum(1 for n in alert_counts.values() if n > 1)
    result = {"records_lost": max(lost_db, lost_kafka), "records_lost_kafka": lost_kafka, "records_lost_db": lost_db,
              "duplicates": duplicates, "candles_wrong": wrong, "candles_expected": sum(map(len, expected_candles.values())),
              "redis_prices_wrong": prices, "stats_wrong": stats_wrong, "stats_missing": stats_missing,
              "stats_expected": len(must_close), "malformed_sent": len(sent), "dlq_missing": dlq_missing,
              "dlq_unexpected": dlq_unexpected, "dlq_repeats": dlq_repeats, "alerts_delivered": len(alert_counts),
              "alerts_delivered_twice": twice}
    result["ok"] = not any(result[k] for k in ("records_lost", "duplicates", "candles_wrong", "redis_prices_wrong",
                                               "stats_wrong", "stats_missing", "dlq_missing", "dlq_unexpected",
                                               "alerts_delivered_twice"))
    return result
