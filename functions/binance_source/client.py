"""Binance REST with requests: one keep-alive Session, timeouts, and a request-weight gate.

The gate keeps the used weight under a share of the limit, reading `X-MBX-USED-WEIGHT-1M` from every answer,
and after a 429 or 418 sends nothing until `Retry-After` has passed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable
from dataclasses import dataclass, field

import orjson
import requests

from cryptopipe.retry import retry_after

log = logging.getLogger("binance_source.client")

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
AGG_TRADES_WEIGHT = 4


class RateLimited(Exception):
    """429 or 418: the gate is paused for `retry_after` seconds."""

    def __init__(self, status: int, retry_after: float, body: str):
        super().__init__(f"HTTP {status}, Retry-After {retry_after:g} s: {body[:200]}")
        self.status, self.retry_after = status, retry_after


class TransientError(Exception):
    """A 5xx, a timeout, a dropped connection or a body that is not the JSON expected: retry later."""

    def __init__(self, message: str, body: bytes | None = None, reason: str = "non-JSON body"):
        super().__init__(message)
        # Set when the answer arrived but could not be used: it goes to the dead-letter topic with `reason`.
        self.body, self.reason = body, reason


class BinanceError(Exception):
    """A Binance error answer ({"code": ..., "msg": ...}) to a request that will not improve by retrying."""

    def __init__(self, status: int, code: int | None, msg: str):
        super().__init__(f"HTTP {status} code {code}: {msg}")
        self.status, self.code, self.msg = status, code, msg


@dataclass
class WeightGate:
    """Request weight in Binance's fixed windows, as the server reports it, plus pauses after 429/418."""

    limit: int
    share: float
    window_s: float = 60.0
    used: int = 0
    window: int = -1
    paused_until: float = 0.0
    waited_s: float = 0.0
    # Set on shutdown, so a long wait (a ban can last minutes) ends at once.
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def budget(self) -> int:
        return max(1, int(self.limit * self.share))

    def _window(self, now: float) -> int:
        return int(now // self.window_s)

    def wait_for(self, weight: int, clock=time.time) -> None:
        """Block until a request of `weight` may be sent (or shutdown begins)."""
        while not self.stopping.is_set():
            now = clock()
            if now < self.paused_until:
                delay = self.paused_until - now
            elif self._window(now) != self.window:
                return
            elif self.used + weight <= self.budget:
                return
            else:
                delay = (self._window(now) + 1) * self.window_s - now + 0.01
            self.waited_s += delay
            self.stopping.wait(delay)

    def record(self, used_header: str | None, weight: int, now: float) -> None:
        window = self._window(now)
        if window != self.window:
            self.window, self.used = window, 0
        self.used = int(used_header) if used_header and used_header.isdigit() else self.used + weight

    def pause(self, seconds: float, now: float) -> None:
        self.paused_until = max(self.paused_until, now + seconds)


def exchange_info(info: object) -> tuple[set[str], int | None]:
    """The listed symbols and the request-weight limit per minute (None when not given) of an exchangeInfo
    answer; ValueError names what is malformed."""
    if not isinstance(info, dict):
        raise ValueError(f"answer is a {type(info).__name__}, not an object")
    symbols, limits = info.get("symbols"), info.get("rateLimits", [])
    if not isinstance(symbols, list):
        raise ValueError(f"symbols is {type(symbols).__name__}, not a list")
    if not all(isinstance(s, dict) and isinstance(s.get("symbol"), str) for s in symbols):
        raise ValueError("an entry of symbols has no symbol")
    if not isinstance(limits, list) or not all(isinstance(rl, dict) for rl in limits):
        raise ValueError("rateLimits is not a list of objects")
    limit = None
    for rl in limits:
        if rl.get("rateLimitType") == "REQUEST_WEIGHT" and rl.get("interval") == "MINUTE":
            value = rl.get("limit")
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"the request weight limit {value!r:.40} is not a positive integer")
            limit = value if limit is None else min(limit, value)
    return {s["symbol"] for s in symbols}, limit


class BinanceClient:
    def __init__(self, base_url: str, gate: WeightGate, connect_timeout: float, read_timeout: float,
                 observe: Callable[[float], None] = lambda seconds: None):
        self.base_url = base_url.rstrip("/")
        self.gate = gate
        self.observe = observe  # each request's time on the wire (not its wait for weight), answered or not
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "crypto-pipeline-source/0.1"

    def get(self, path: str, params: dict | None = None, weight: int = 1) -> object:
        """GET and decode JSON; raises RateLimited, TransientError or BinanceError."""
        self.gate.wait_for(weight)
        if self.gate.stopping.is_set():
            raise TransientError("shutting down")
        url = f"{self.base_url}{path}"
        started = time.monotonic()
        try:
            resp = self.session.get(url, params=params, timeout=self.timeout)
        except requests.RequestException as err:  # timeouts, refused or reset connections, a body cut short
            raise TransientError(f"{type(err).__name__} on {path}: {err}") from err
        finally:
            self.observe(time.monotonic() - started)
        now = time.time()
        self.gate.record(resp.headers.get(WEIGHT_HEADER), weight, now)
        if resp.status_code in (429, 418):
            retry = retry_after(resp.headers.get("Retry-After"), 60.0)  # unreadable or absent: a minute
            self.gate.pause(retry, now)
            raise RateLimited(resp.status_code, retry, resp.text)
        if resp.status_code >= 500:
            raise TransientError(f"HTTP {resp.status_code} on {path}: {resp.text[:200]}")
        try:
            body = orjson.loads(resp.content)  # several times faster than resp.json() on 1000-trade pages
        except orjson.JSONDecodeError as err:
            raise TransientError(f"non-JSON body (HTTP {resp.status_code}) on {path}: {resp.text[:200]!r}",
                                 resp.content) from err
        if resp.status_code >= 400:
            code = body.get("code") if isinstance(body, dict) else None
            msg = body.get("msg", resp.text[:200]) if isinstance(body, dict) else resp.text[:200]
            raise BinanceError(resp.status_code, code, msg)
        return body

    def close(self) -> None:
        self.session.close()
