"""The replay's state, shared by its REST server (server.py) and its streams (ws.py): the tapes, the clock,
request weight in Binance's windows, and the faults waiting to be injected."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from replay.tape import SymbolTape

EXCHANGE_INFO_FILE = Path(__file__).resolve().parent.parent / "data" / "binance" / "exchangeInfo_20211012.json"
WS_FAULT_KINDS = ("ws_drop", "ws_stall", "ws_malformed", "ws_duplicate", "ws_out_of_order")
WS_MALFORMED_VARIANTS = ("not_json", "bad_price")
FAULT_KINDS = ("500", "502", "503", "504", "429", "418", "slow", "timeout", "malformed", "wrong_type",
               "bad_items", "hole", "backwards") + WS_FAULT_KINDS


@dataclass
class Fault:
    kind: str
    count: int = 1
    symbol: str | None = None
    delay_s: float = 0.0
    retry_after_s: int = 2
    variant: str = "bad_price"  # bad_items: bad_price, missing_time or string_id; ws_malformed: bad_price or not_json


@dataclass
class WeightLimiter:
    """Binance's per-IP request weight in fixed windows, with the 429-then-418 escalation."""

    limit: int = 6000
    window_s: float = 60.0
    ban_s: float = 120.0
    used: int = 0
    window: int = -1
    backoff_until: float = 0.0  # set by a 429: requests before this earn a ban
    banned_until: float = 0.0
    bans: int = 0
    max_used: int = 0
    count_429: int = 0
    count_418: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, now: float) -> int:
        return max(1, int((self.window + 1) * self.window_s - now + 0.999))

    def admit(self, weight: int, now: float) -> tuple[int, int | None, str | None]:
        """(used weight, status to refuse with or None, Retry-After)."""
        with self.lock:
            window = int(now // self.window_s)
            if window != self.window:
                self.window, self.used = window, 0
            if now < self.banned_until:
                self.count_418 += 1
                return self.used, 418, str(max(1, int(self.banned_until - now + 0.999)))
            if now < self.backoff_until:
                # It kept going after a 429: ban, longer each time (2 minutes up to 3 days on Binance).
                self.bans += 1
                self.banned_until = now + min(self.ban_s * 2 ** (self.bans - 1), 3 * 86400)
                self.count_418 += 1
                return self.used, 418, str(max(1, int(self.banned_until - now + 0.999)))
            if self.used + weight > self.limit:
                retry = self.retry_after(now)
                self.backoff_until = now + retry
                self.count_429 += 1
                return self.used, 429, str(retry)
            self.used += weight
            self.max_used = max(self.max_used, self.used)
            return self.used, None, None

    def force(self, status: int, retry_after_s: int, now: float) -> None:
        with self.lock:
            if status == 429:
                self.backoff_until = now + retry_after_s
                self.count_429 += 1
            else:
                self.banned_until = now + retry_after_s
                self.count_418 += 1


class Replay:
    """The replay's state: tapes, clock, weights, faults and a log of requests for tests."""

    def __init__(self, tapes: dict[str, SymbolTape], speed: float = 0.0, weight_limit: int = 6000,
                 window_s: float = 60.0, ban_s: float = 120.0, start_ms: int | None = None, delay_s: float = 0.0):
        self.tapes = tapes
        self.speed = speed
        self.limiter = WeightLimiter(limit=weight_limit, window_s=window_s, ban_s=ban_s)
        self.tape_start = start_ms if start_ms is not None else min(t.times[0] for t in tapes.values())
        self.tape_end = max(t.times[-1] for t in tapes.values())
        self.wall_start = time.time() + delay_s  # until then no trade has happened yet
        self.faults: list[Fault] = []
        self.fault_lock = threading.Lock()
        self.requests: deque[tuple[float, str, int, str]] = deque(maxlen=200_000)
        self.exchange_info = self._exchange_info()
        self.ws = None  # the WebSocket streams' server (replay.ws.WsServer), when one serves this replay

    def now_ms(self) -> int:
        """Tape time: everything when speed is 0, else the tape start plus elapsed time times speed."""
        if self.speed <= 0:
            return max(self.tape_end, int(time.time() * 1000))
        return self.tape_start + int((time.time() - self.wall_start) * 1000 * self.speed)

    def _exchange_info(self) -> dict:
        info = json.loads(EXCHANGE_INFO_FILE.read_text())
        for rl in info["rateLimits"]:
            if rl["rateLimitType"] == "REQUEST_WEIGHT":
                rl["limit"] = self.limiter.limit
        known = {s["symbol"] for s in info["symbols"]}
        for symbol in sorted(set(self.tapes) - known):
            info["symbols"].append(generated_symbol(symbol))
        return info

    def take_fault(self, path: str, symbol: str | None) -> Fault | None:
        if path != "/api/v3/aggTrades":
            return None
        with self.fault_lock:
            for fault in self.faults:
                if fault.symbol in (None, symbol) and fault.kind not in WS_FAULT_KINDS:
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def stats(self) -> dict:
        lim = self.limiter
        return {
            "requests": len(self.requests), "weight_limit": lim.limit, "window_s": lim.window_s,
            "max_used_weight": lim.max_used, "count_429": lim.count_429, "count_418": lim.count_418,
            "faults_pending": len(self.faults), "now_ms": self.now_ms(),
            "ws": self.ws.stats() if self.ws is not None else None,
            "log": [list(r) for r in self.requests],
        }


def generated_symbol(symbol: str) -> dict:
    """An exchangeInfo entry for a tape symbol the recording lacks: split base/quote on a known quote."""
    for quote in ("USDT", "BUSD", "USDC", "BTC", "ETH", "BNB", "EUR", "TRY"):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            base = symbol[: -len(quote)]
            break
    else:
        base, quote = symbol[:-3], symbol[-3:]
    return {"symbol": symbol, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8, "quoteAsset": quote,
            "quotePrecision": 8, "quoteAssetPrecision": 8, "orderTypes": ["LIMIT", "MARKET"],
            "isSpotTradingAllowed": True, "filters": [], "permissions": ["SPOT"]}
