"""Recorded Binance aggTrades ("tapes") in memory, with Binance's query semantics and klines computed from them.

A tape directory holds one JSON file per symbol named `<symbol>_aggtrades*.json` (any case), each a list of
aggTrades REST objects in ascending `a`.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

TAPE_FILE = re.compile(r"^([A-Za-z0-9]+)_aggtrades.*\.json$")
INTERVAL_MS = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": 86_400_000,
}


@dataclass
class SymbolTape:
    """One symbol's trades, with event times already shifted, and each trade pre-serialized."""

    symbol: str
    trades: list[dict]
    ids: list[int]
    times: list[int]
    json_items: list[str]

    @classmethod
    def from_trades(cls, symbol: str, trades: list[dict], shift_ms: int) -> "SymbolTape":
        shifted = [{**t, "T": t["T"] + shift_ms} for t in trades]
        ids = [t["a"] for t in shifted]
        if any(b <= a for a, b in zip(ids, ids[1:])):
            raise ValueError(f"{symbol}: aggTrade ids are not strictly ascending")
        return cls(
            symbol=symbol,
            trades=shifted,
            ids=ids,
            times=[t["T"] for t in shifted],
            json_items=[json.dumps(t, separators=(",", ":")) for t in shifted],
        )

    def visible(self, now_ms: int) -> int:
        """How many trades have happened by `now_ms` (tape time)."""
        return bisect_right(self.times, now_ms)

    def agg_trades(self, now_ms: int, limit: int, from_id: int | None = None,
                   start_ms: int | None = None, end_ms: int | None = None) -> tuple[int, int]:
        """Index range [lo, hi) that Binance would return: fromId and times inclusive, ascending."""
        n = self.visible(now_ms)
        if from_id is not None:
            lo = bisect_left(self.ids, from_id, 0, n)
            return lo, min(lo + limit, n)
        if start_ms is not None or end_ms is not None:
            lo = bisect_left(self.times, start_ms, 0, n) if start_ms is not None else 0
            hi = bisect_right(self.times, end_ms, 0, n) if end_ms is not None else n
            if start_ms is None:  # only endTime: the newest trades up to it
                lo = max(0, hi - limit)
            return lo, min(hi, lo + limit)
        return max(0, n - limit), n

    def klines(self, now_ms: int, interval_ms: int, limit: int,
               start_ms: int | None = None, end_ms: int | None = None) -> list[list]:
        """Binance's 12-field kline rows from the trades; minutes without trades repeat the last close."""
        n = self.visible(now_ms)
        if n == 0:
            return []
        first_open = self.times[0] // interval_ms * interval_ms
        last_open = min(now_ms, end_ms if end_ms is not None else now_ms) // interval_ms * interval_ms
        lo_open = max(first_open, -(-start_ms // interval_ms) * interval_ms if start_ms is not None else first_open)
        if start_ms is None:
            lo_open = max(first_open, last_open - (limit - 1) * interval_ms)
        opens = range(lo_open, last_open + 1, interval_ms)[:limit]
        if not opens:
            return []
        i = bisect_left(self.times, opens[0], 0, n)
        prev_close = Decimal(self.trades[i - 1]["p"]) if i > 0 else None
        rows = []
        for open_ms in opens:
            j = bisect_left(self.times, open_ms + interval_ms, i, n)
            chunk = self.trades[i:j]
            if chunk:
                prices = [Decimal(t["p"]) for t in chunk]
                qtys = [Decimal(t["q"]) for t in chunk]
                quote = sum((p * q for p, q in zip(prices, qtys)), Decimal(0))
                taker = [(p, q) for p, q, t in zip(prices, qtys, chunk) if not t["m"]]
                o, h, lo_, c = prices[0], max(prices), min(prices), prices[-1]
                vol, count = sum(qtys, Decimal(0)), sum(t["l"] - t["f"] + 1 for t in chunk)
                taker_base = sum((q for _, q in taker), Decimal(0))
                taker_quote = sum((p * q for p, q in taker), Decimal(0))
                prev_close = c
            elif prev_close is None:
                i = j
                continue
            else:
                o = h = lo_ = c = prev_close
                vol = quote = taker_base = taker_quote = Decimal(0)
                count = 0
            rows.append([
                open_ms, fmt(o), fmt(h), fmt(lo_), fmt(c), fmt(vol), open_ms + interval_ms - 1,
                fmt(quote), count, fmt(taker_base), fmt(taker_quote), "0",
            ])
            i = j
        return rows


def fmt(value: Decimal) -> str:
    """Binance's fixed 8-decimal strings."""
    return f"{value.quantize(Decimal('0.00000001')):f}"


def load_tapes(directory: Path, shift_minutes: int | dict[str, int] = 0) -> dict[str, SymbolTape]:
    """Every `<symbol>_aggtrades*.json` in the folder; several files of one symbol are merged by id.
    Event times move by `shift_minutes`, one number for all or one per symbol."""
    by_symbol: dict[str, dict[int, dict]] = {}
    for path in sorted(Path(directory).iterdir()):
        match = TAPE_FILE.match(path.name)
        if match:
            trades = json.loads(path.read_text())
            by_symbol.setdefault(match.group(1).upper(), {}).update({t["a"]: t for t in trades})
    if not by_symbol:
        raise FileNotFoundError(f"no <symbol>_aggtrades*.json tape in {directory}")
    def shift_ms(symbol: str) -> int:
        minutes = shift_minutes.get(symbol, 0) if isinstance(shift_minutes, dict) else shift_minutes
        return minutes * 60_000

    return {
        symbol: SymbolTape.from_trades(symbol, [trades[a] for a in sorted(trades)], shift_ms(symbol))
        for symbol, trades in sorted(by_symbol.items())
    }
