"""The window arithmetic of the stream function, as plain functions (the Quix wiring is in app.py).

Aggregates are kept as decimal strings: window state is stored as JSON, and strings keep every digit.
Open and close follow the trade id, not arrival order, so a late trade inside the grace period still
lands in the right place.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from cryptopipe.schemas import check_trade

ZERO = Decimal(0)


def parse_trade(key: bytes | None, raw: bytes | None) -> dict:
    """A trade record checked against the validation contract (`schemas.check_trade`: raises
    `schemas.Invalid` naming what is wrong), in the shape the windows use. Price and quantity stay Decimals,
    with the digits the source wrote."""
    t = check_trade(key, raw)
    return {"symbol": t["symbol"], "id": t["agg_id"], "p": t["price"], "q": t["qty"]}


# ---- 1-minute aggregates -----------------------------------------------------------------------------
# One window state per trade: the aggregate holds the candle, the sums the 5-minute statistics need (sum of
# prices and of their squares), and the alert rules this window has broken. This runs for every trade,
# so each stored string is read into a Decimal once.

def minute_init(t: dict, rules: AlertRules) -> dict:
    p, q = t["p"], t["q"]
    ps, quote = str(p), p * q
    m = {"open": ps, "open_id": t["id"], "close": ps, "close_id": t["id"], "high": ps, "low": ps,
         "volume": str(q), "quote": str(quote), "count": 1, "sum_p": ps, "sum_p2": str(p * p)}
    return rules.mark(t["symbol"], m, p, p, quote)


def minute_add(m: dict, t: dict, rules: AlertRules) -> dict:
    p, q, tid = t["p"], t["q"], t["id"]
    if tid < m["open_id"]:
        m["open"], m["open_id"] = str(p), tid
    if tid > m["close_id"]:
        m["close"], m["close_id"] = str(p), tid
    high, low = Decimal(m["high"]), Decimal(m["low"])
    if p > high:
        high, m["high"] = p, str(p)
    elif p < low:
        low, m["low"] = p, str(p)
    quote = Decimal(m["quote"]) + p * q
    m["quote"] = str(quote)
    m["volume"] = str(Decimal(m["volume"]) + q)
    m["sum_p"] = str(Decimal(m["sum_p"]) + p)
    m["sum_p2"] = str(Decimal(m["sum_p2"]) + p * p)
    m["count"] += 1
    return rules.mark(t["symbol"], m, high, low, quote)


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

def stats_merge(minutes: list[dict]) -> dict:
    """A 5-minute aggregate from its closed 1-minute aggregates (in any order)."""
    first = minutes[0]
    out = {f: first[f] for f in ("open", "open_id", "close", "close_id", "high", "low", "count")}
    sums = {f: Decimal(first[f]) for f in ("volume", "sum_p", "sum_p2")}
    for m in minutes[1:]:
        if m["open_id"] < out["open_id"]:
            out["open"], out["open_id"] = m["open"], m["open_id"]
        if m["close_id"] > out["close_id"]:
            out["close"], out["close_id"] = m["close"], m["close_id"]
        if Decimal(m["high"]) > Decimal(out["high"]):
            out["high"] = m["high"]
        if Decimal(m["low"]) < Decimal(out["low"]):
            out["low"] = m["low"]
        for f in sums:
            sums[f] += Decimal(m[f])
        out["count"] += m["count"]
    return out | sums


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

    def mark(self, symbol: str, m: dict, high: Decimal, low: Decimal, quote: Decimal) -> dict:
        """Check the 1-minute aggregate after a trade: `m["new"]` lists (rule, value, threshold) of each rule
        this trade made the window break for the first time; `m["alerted"]` keeps every rule it broke, so
        a window raises each alert once."""
        alerted = m.get("alerted", ())
        new = []
        if "price_move" not in alerted:
            limit = self.move_pct_by_symbol.get(symbol, self.move_pct)
            open_ = Decimal(m["open"])
            if (high - low) * 100 >= limit * open_:  # no division on the common path
                new.append(("price_move", str((high - low) / open_ * 100), str(limit)))
        if "volume_spike" not in alerted:
            limit = self.quote_volume_by_symbol.get(symbol, self.quote_volume)
            if quote >= limit:
                new.append(("volume_spike", str(quote), str(limit)))
        if new:
            m["alerted"] = [*alerted, *(rule for rule, _, _ in new)]
        m["new"] = new
        return m


def alert_id(symbol: str, rule: str, window_start: int) -> str:
    """Deterministic: every re-emission of a window's alert has the same id, so it upserts to one row."""
    return f"{symbol}:{rule}:{window_start}"
