"""The chaos run's tape and its oracle: real XRPETH trades, split over a few made-up symbols and squeezed into
a few minutes of event time starting now, and what the pipeline must end with, computed from the tape alone."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from replay.tape import load_tapes

MINUTE_MS = 60_000
SOURCE_TAPE = "XRPETH"


def generate(real_tapes: Path, out_dir: Path, symbols: list[str], minutes: float, start_ms: int,
             per_symbol: int) -> dict[str, list[dict]]:
    """One tape file per symbol in `out_dir`: consecutive slices of the real XRPETH recording, agg ids made
    contiguous, trade times stretched over `minutes` from `start_ms` (order kept). Returns the trades."""
    real = load_tapes(real_tapes)[SOURCE_TAPE].trades
    if per_symbol * len(symbols) > len(real):
        raise ValueError(f"the {SOURCE_TAPE} tape holds {len(real)} trades, not {per_symbol} x {len(symbols)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    span = minutes * MINUTE_MS
    tapes: dict[str, list[dict]] = {}
    for i, symbol in enumerate(symbols):
        part = real[i * per_symbol:(i + 1) * per_symbol]
        first, last = part[0]["T"], part[-1]["T"]
        trades, trade_id = [], 1_000_000
        for n, t in enumerate(part):
            count = t["l"] - t["f"] + 1
            trades.append({"a": 5_000_000 + n, "p": t["p"], "q": t["q"], "f": trade_id, "l": trade_id + count - 1,
                           "T": start_ms + int((t["T"] - first) * span / max(1, last - first)), "m": t["m"],
                           "M": t["M"]})
            trade_id += count
        (out_dir / f"{symbol.lower()}_aggtrades_chaos.json").write_text(json.dumps(trades))
        tapes[symbol] = trades
    return tapes


def candles(trades: list[dict]) -> dict[int, dict]:
    """1-minute candles the plain way: group by minute, in id order, Decimal arithmetic."""
    minutes: dict[int, list[dict]] = {}
    for t in sorted(trades, key=lambda t: t["a"]):
        minutes.setdefault(t["T"] // MINUTE_MS * MINUTE_MS, []).append(t)
    out = {}
    for start, ts in minutes.items():
        prices = [Decimal(t["p"]) for t in ts]
        volume = sum(Decimal(t["q"]) for t in ts)
        quote = sum(Decimal(t["p"]) * Decimal(t["q"]) for t in ts)
        out[start] = {"open": prices[0], "high": max(prices), "low": min(prices), "close": prices[-1],
                      "volume": volume, "quote_volume": quote, "trade_count": len(ts),
                      "vwap": (quote / volume).quantize(Decimal("1e-8"))}
    return out


def stats(trades: list[dict]) -> dict[int, dict]:
    """5-minute statistics advancing by a minute, the plain way: every window that holds a trade, in id order,
    Decimal arithmetic; range in % of the open, population standard deviation over the mean in %."""
    minutes: dict[int, list[dict]] = {}
    for t in sorted(trades, key=lambda t: t["a"]):
        minutes.setdefault(t["T"] // MINUTE_MS * MINUTE_MS, []).append(t)
    out = {}
    for start in {minute - k * MINUTE_MS for minute in minutes for k in range(5)}:
        ts = [t for m in range(start, start + 5 * MINUTE_MS, MINUTE_MS) for t in minutes.get(m, [])]
        prices = [Decimal(t["p"]) for t in ts]
        n = Decimal(len(prices))
        mean = sum(prices) / n
        variance = max(Decimal(0), sum(p * p for p in prices) / n - mean * mean)
        out[start] = {"open": prices[0], "high": max(prices), "low": min(prices), "close": prices[-1],
                      "volume": sum(Decimal(t["q"]) for t in ts), "trade_count": len(ts),
                      "range_pct": ((max(prices) - min(prices)) / prices[0] * 100).quantize(Decimal("1e-8")),
                      "volatility_pct": (variance.sqrt() / mean * 100).quantize(Decimal("1e-8"))}
    return out
