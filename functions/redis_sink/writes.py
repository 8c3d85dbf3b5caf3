"""What the Redis sink writes: a batch of records checked against the validation contract
(cryptopipe.schemas) and split into trades and candles per symbol, and one pipeline that lands each through a
newer-only Lua script."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Callable

import redis

from cryptopipe.schemas import Invalid, check_candle, check_trade

# KEYS: price hash, history list. ARGV: price, trade_time, agg_id, now_ms, history length, channel,
# then the batch's older trades of the symbol as price@time pairs for the history (oldest first).
PRICE_SCRIPT = """
local t, id = tonumber(ARGV[2]), tonumber(ARGV[3])
local cur_t = tonumber(redis.call('HGET', KEYS[1], 'trade_time') or '-1')
local cur_id = tonumber(redis.call('HGET', KEYS[1], 'agg_id') or '-1')
if cur_t > t or (cur_t == t and cur_id >= id) then return 0 end
for i = 7, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
redis.call('LPUSH', KEYS[2], ARGV[1] .. '@' .. ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
redis.call('HSET', KEYS[1], 'price', ARGV[1], 'trade_time', ARGV[2], 'agg_id', ARGV[3], 'updated_at', ARGV[4],
           'stale', '0')
redis.call('PUBLISH', ARGV[6], '{"price":' .. ARGV[1] .. ',"trade_time":' .. ARGV[2] .. ',"agg_id":' .. ARGV[3] .. '}')
return 1
"""

# KEYS: candle hash. ARGV: window_start, trade_count, then field/value pairs. Newer = a later window, or
# the same window with at least as many trades (updates of one window only grow).
CANDLE_SCRIPT = """
local ws, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local cur_ws = tonumber(redis.call('HGET', KEYS[1], 'window_start') or '-1')
local cur_n = tonumber(redis.call('HGET', KEYS[1], 'trade_count') or '-1')
if cur_ws > ws or (cur_ws == ws and cur_n > n) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""

CANDLE_FIELDS = ("symbol", "window_start", "window_end", "open", "high", "low", "close", "volume",
                 "quote_volume", "trade_count", "vwap")


def text(value: object) -> object:
    """Decimals as written, never in exponent form (0.00000100, not 1.00E-6); other values as they are."""
    return format(value, "f") if isinstance(value, Decimal) else value


def split(msgs: list, trades_topic: str, bad: Callable[[object, str], None],
          max_skew_ms: int) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Trades per symbol in event order, and the newest candle update per symbol; `bad(msg, reason)` for each
    record the validation contract refuses (check_trade, check_candle, with `max_skew_ms` of clock skew), or whose
    handling raised. A trade from the future would otherwise hold its symbol's price for ever (newest wins)."""
    trades: dict[str, list[dict]] = {}
    candles: dict[str, dict] = {}
    for msg in msgs:
        try:
            if msg.topic() == trades_topic:
                t = check_trade(msg.key(), msg.value(), max_skew_ms, msg.timestamp()[1])
                trade = {"symbol": t["symbol"], "price": text(t["price"]), "trade_time": t["trade_time"],
                         "agg_id": t["agg_id"]}
                trades.setdefault(trade["symbol"], []).append(trade)
            else:
                c = check_candle(msg.key(), msg.value(), max_skew_ms)
                candle = {k: text(c[k]) for k in CANDLE_FIELDS}
                key = candle["symbol"]
                old = candles.get(key)
                if old is None or (candle["window_start"], candle["trade_count"]) >= (
                        old["window_start"], old["trade_count"]):
                    candles[key] = candle
        except Invalid as err:
            bad(msg, str(err))
        except Exception as err:  # defence in depth: one record never stops the sink
            bad(msg, f"internal error: {err!r:.500}")
    for rows in trades.values():
        rows.sort(key=lambda t: (t["trade_time"], t["agg_id"]))
    return trades, candles


class Writer:
    """One pipeline per batch through the newer-only scripts."""

    def __init__(self, client: redis.Redis, history: int):
        self.redis, self.history = client, history
        self.price_script = client.register_script(PRICE_SCRIPT)
        self.candle_script = client.register_script(CANDLE_SCRIPT)

    def write(self, trades: dict[str, list[dict]], candles: dict[str, dict]) -> int:
        """Per symbol, its newest trade (with the others for the history) and its newest candle. Returns how
        many prices were newer than what Redis held."""
        now_ms = str(int(time.time() * 1000))
        pipe = self.redis.pipeline(transaction=False)
        history = self.history
        for symbol, rows in trades.items():
            newest = rows[-1]
            older = [f"{t['price']}@{t['trade_time']}" for t in rows[-history:-1]]
            self.price_script(keys=[f"price:{symbol}", f"prices:{symbol}"], client=pipe, args=[
                newest["price"], newest["trade_time"], newest["agg_id"], now_ms, history, f"prices:{symbol}",
                *older])
        for symbol, candle in candles.items():
            fields = [x for k in CANDLE_FIELDS for x in (k, candle[k])]
            self.candle_script(keys=[f"candle:{symbol}"], args=[candle["window_start"], candle["trade_count"], *fields],
                               client=pipe)
        results = pipe.execute()
        return sum(results[: len(trades)])
