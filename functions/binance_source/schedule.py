"""Each symbol's position and poll schedule: where it resumes, when it is polled next, how busy it is, and
how the request-weight budget is shared between the symbols."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from functions.binance_source.client import AGG_TRADES_WEIGHT, WeightGate

MAX_SAME_FAILURE = 3  # answers in a row that fail at the same id before that id is given up


@dataclass
class SymbolState:
    symbol: str
    cursor: int | None = None  # the id after the newest acknowledged trade; None until known
    fetch_from: int | None = None  # the next id to request: at or ahead of the cursor
    inflight: deque = field(default_factory=deque)  # (agg_id, trade_time, value) produced, not yet acknowledged
    delivery_failed: bool = False
    refused: list = field(default_factory=list)  # (agg_id, trade_time, value, KafkaError) whose delivery failed
    next_poll: float = 0.0
    last_poll: float = 0.0
    rate: float = 1.0  # trades per second, smoothed
    produced: int = 0
    newest_time: int | None = None
    failures: int = 0  # consecutive transient failures, for backoff
    stuck_at: int | None = None  # the id where the last bad answer stopped us
    stuck_count: int = 0
    # WebSocket mode: "live" takes the stream's events as they come; "backfill" fetches REST pages from the
    # fetch position and holds the stream's events in `buffer` (agg id -> (trade time, value)) until the
    # pages meet them; "down" while its connection is lost.
    mode: str = "down"
    buffer: dict = field(default_factory=dict)
    fetching: bool = False  # a REST request for it is in flight
    probing: bool = False  # that request checks a live stream's silence against REST
    held_since: float | None = None  # since when REST has not reached the held events
    last_event: float = 0.0  # monotonic time of its newest stream event (or of the last check of a silence)
    seam: dict | None = None  # the last seam closed: where, how many trades REST filled in, why
    seam_reason: str = ""
    backfilled: int = 0  # trades REST filled in since the seam opened
    connection: int = 0

    def polled(self, now: float, got: int) -> None:
        """Smooth the trade rate with what this poll brought since the last one."""
        elapsed = max(now - self.last_poll, 1e-3) if self.last_poll else None
        self.last_poll = now
        if elapsed is not None:
            self.rate = 0.7 * self.rate + 0.3 * (got / elapsed)

    def gives_up_at(self, at: int) -> bool:
        """Another bad answer at id `at`: True once MAX_SAME_FAILURE came in a row there (and it is
        forgotten), so the caller moves on instead of refetching forever."""
        if self.stuck_at == at:
            self.stuck_count += 1
        else:
            self.stuck_at, self.stuck_count = at, 1
        if self.stuck_count >= MAX_SAME_FAILURE:
            self.stuck_at = None
            return True
        return False


def due(states: dict[str, SymbolState]) -> SymbolState:
    """The symbol to poll next."""
    return min(states.values(), key=lambda st: st.next_poll)


def poll_interval(state: SymbolState, states: dict[str, SymbolState], gate: WeightGate, min_s: float,
                  max_s: float) -> float:
    """The weight budget as polls per second: every symbol gets the floor rate (one poll per `max_s`), and
    the rest is shared in proportion to the square root of each symbol's trade rate. Busy symbols are
    polled more often, but not so much more that quiet ones fall behind: a trade waits about one poll
    interval whatever the symbol's rate, so lag is evened out, not rates."""
    polls_per_s = gate.budget / gate.window_s / AGG_TRADES_WEIGHT
    floor = 1.0 / max_s
    spare = polls_per_s - floor * len(states)
    if spare <= 0:  # more symbols than the budget can poll at the floor rate: share it evenly
        return max(min_s, len(states) / polls_per_s)
    weights = {st.symbol: math.sqrt(max(st.rate, 0.0)) for st in states.values()}
    share = floor + spare * weights[state.symbol] / (sum(weights.values()) or 1.0)
    return min(max_s, max(min_s, 1.0 / share))
