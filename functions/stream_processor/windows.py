"""The window arithmetic of the stream function, as plain functions (the Quix wiring is in app.py).

Aggregates are kept as decimal strings: window state is stored as JSON, and strings keep every digit.
Open and close follow the trade id, not arrival order, so a late trade inside the grace period still
lands in the right place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

ZERO = Decimal(0)


class BadRecord(ValueError):
    pass


def parse_trade(raw: bytes) -> dict:
    """A trade record from the source, checked; BadRecord names what is wrong."""
    try:
        trade = json.loads(raw, parse_float=Decimal)
    except (ValueError, TypeError) as err:
        raise BadRecord(f"not JSON: {err}") from None
    if not isinstance(trade, dict):
        raise BadRecord("not a JSON object")
    missing = [k for k in ("symbol", "agg_id", "price", "qty", "trade_time") if k not in trade]
    if missing:
        raise BadRecord(f"missing field(s) {', '.join(missing)}")
    try:
        price, qty = Decimal(trade["price"]), Decimal(trade["qty"])
    except (InvalidOperation, TypeError, ValueError):
        raise BadRecord(f"price {trade['price']!r} or qty {trade['qty']!r} is not a number") from None
    if not price.is_finite() or price <= 0:
        raise BadRecord(f"price {price} is not positive")
    if not qty.is_finite() or qty < 0:
        raise BadRecord(f"quantity {qty} is negative")
    if not isinstance(trade["agg_id"], int) or not isinstance(trade["trade_time"], int):
        raise BadRecord("agg_id and trade_time must be integers")
    return {"symbol": str(trade["symbol"]), "id": trade["agg_id"], "p": str(price), "q": str(qty),
            "n": int(trade.get("last_trade_id", 0)) - int(trade.get("first_trade_id", 0)) + 1}


# ---- 1-minute candles ------------------------------------------------------------------------------

def candle_init(t: dict) -> dict:
    p, q = Decimal(t["p"]), Decimal(t["q"])
    return {"open": t["p"], "open_id": t["id"], "close": t["p"], "close_id": t["id"], "high": t["p"], "low": t["p"],
            "volume": t["q"], "quote": str(p * q), "count": 1}


def candle_add(c: dict, t: dict) -> dict:
    p, q = Decimal(t["p"]), Decimal(t["q"])
    if t["id"] < c["open_id"]:
        c["open"], c["open_id"] = t["p"], t["id"]
    if t["id"] > c["close_id"]:
        c["close"], c["close_id"] = t["p"], t["id"]
    if p > Decimal(c["high"]):
        c["high"] = t["p"]
    if p < Decimal(c["low"]):
        c["low"] = t["p"]
    c["volume"] = str(Decimal(c["volume"]) + q)
    c["quote"] = str(Decimal(c["quote"]) + p * q)
    c["count"] += 1
    return c


def candle_record(symbol: str, start: int, end: int, c: dict) -> dict:
    """The crypto.candles-1m value (fields in cryptopipe.schemas.CANDLE)."""
    volume, quote = Decimal(c["volume"]), Decimal(c["quote"])
    return {"symbol": symbol, "window_start": start, "window_end": end, "open": c["open"], "high": c["high"],
            "low": c["low"], "close": c["close"], "volume": volume, "quote_volume": quote,
            "trade_count": c["count"], "vwap": quote / volume if volume else Decimal(c["close"])}


# ---- 5-minute hopping statistics ---------------------------------------------------------------------
# Built from closed 1-minute aggregates: a 5-minute window advancing by a minute is exactly five
# consecutive 1-minute buckets, and merging five aggregates is far cheaper than updating five windows
# per trade.

def minute_init(t: dict) -> dict:
    p = Decimal(t["p"])
    return candle_init(t) | {"sum_p": t["p"], "sum_p2": str(p * p)}


def minute_add(m: dict, t: dict) -> dict:
    p = Decimal(t["p"])
    sum_p, sum_p2 = Decimal(m["sum_p"]) + p, Decimal(m["sum_p2"]) + p * p
    m = candle_add(m, t)
    m["sum_p"], m["sum_p2"] = str(sum_p), str(sum_p2)
    return m


def stats_init(minute: dict) -> dict:
    return dict(minute)


def stats_add(s: dict, m: dict) -> dict:
    """Merge a 1-minute aggregate into a 5-minute one (minutes may arrive in any order)."""
    out = dict(s)
    if m["open_id"] < s["open_id"]:
        out["open"], out["open_id"] = m["open"], m["open_id"]
    if m["close_id"] > s["close_id"]:
        out["close"], out["close_id"] = m["close"], m["close_id"]
    if Decimal(m["high"]) > Decimal(s["high"]):
        out["high"] = m["high"]
    if Decimal(m["low"]) < Decimal(s["low"]):
        out["low"] = m["low"]
    for field in ("volume", "quote", "sum_p", "sum_p2"):
        out[field] = str(Decimal(s[field]) + Decimal(m[field]))
    out["count"] = s["count"] + m["count"]
    return out


def stats_record(symbol: str, start: int, end: int, s: dict) -> dict:
    """The crypto.stats-5m value: range in % of the open, and price dispersion (population standard
    deviation over the mean, in %) as the volatility measure ksqlDB can compute too (it has no LAG)."""
    n = Decimal(s["count"])
    mean = Decimal(s["sum_p"]) / n
    variance = max(ZERO, Decimal(s["sum_p2"]) / n - mean * mean)
    high, low, open_ = Decimal(s["high"]), Decimal(s["low"]), Decimal(s["open"])
    return {"symbol": symbol, "window_start": start, "window_end": end, "open": s["open"], "high": s["high"],
            "low": s["low"], "close": s["close"], "volume": Decimal(s["volume"]), "trade_count": s["count"],
            "range_pct": (high - low) / open_ * 100, "volatility_pct": variance.sqrt() / mean * 100}


# ---- alerts ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AlertRules:
    """Thresholds per symbol with defaults: a price move (high - low, in % of the open) within one
    1-minute window, and a 1-minute quote volume (in the quote currency)."""

    move_pct: Decimal
    quote_volume: Decimal
    move_pct_by_symbol: dict[str, Decimal]
    quote_volume_by_symbol: dict[str, Decimal]

    def check(self, candle: dict) -> list[tuple[str, Decimal, Decimal]]:
        """(rule, value, threshold) of each rule the candle breaks."""
        symbol = candle["symbol"]
        out = []
        move = (Decimal(candle["high"]) - Decimal(candle["low"])) / Decimal(candle["open"]) * 100
        move_limit = self.move_pct_by_symbol.get(symbol, self.move_pct)
        if move >= move_limit:
            out.append(("price_move", move, move_limit))
        volume_limit = self.quote_volume_by_symbol.get(symbol, self.quote_volume)
        if candle["quote_volume"] >= volume_limit:
            out.append(("volume_spike", candle["quote_volume"], volume_limit))
        return out


def alert_id(symbol: str, rule: str, window_start: int) -> str:
    """Deterministic: every re-emission of a window's alert has the same id, so it upserts to one row."""
    return f"{symbol}:{rule}:{window_start}"


def parse_thresholds(text: str) -> dict[str, Decimal]:
    """'BTCUSDT:0.5,XRPETH:1' -> {symbol: threshold}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        symbol, _, value = part.partition(":")
        out[symbol.strip().upper()] = Decimal(value)
    return out
