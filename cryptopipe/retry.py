"""Retries for the functions, from libraries rather than a formula written again in each: redis-py's backoff
and `Retry` for delays and for calls that wait out an outage, urllib3's parser for `Retry-After`."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry as HttpRetry

from cryptopipe.run import Counters

T = TypeVar("T")

# Redis errors after which the same call can succeed: the server is away, slow, or still loading its data.
REDIS_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)

_HTTP = HttpRetry()


def backoff(first_s: float, cap_s: float) -> ExponentialWithJitterBackoff:
    """Delays by failure count (`compute(failures)`, from 1): random, `first_s` on average for the first
    failure, doubling with each further one, never above `cap_s`. Full jitter, so clients that failed
    together do not retry together."""
    # redis-py draws in [0, base * 2**failures): the mean of failure 1 is base.
    return ExponentialWithJitterBackoff(cap=cap_s, base=first_s)


def retrying(errors: tuple[type[Exception], ...], first_s: float, cap_s: float, retries: int = -1) -> Retry:
    """A redis-py `Retry` (any callable, not only Redis calls) sleeping `backoff(first_s, cap_s)` between
    attempts; retries=-1 retries forever. Use `call_with_retry(do, fail, with_failure_count=True)`: `fail`
    sees each error and the failure count before the sleep, and aborts by raising."""
    return Retry(backoff(first_s, cap_s), retries, errors)


def retry_after(header: str | None, default: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date; never negative), or `default`
    when the header is absent or unreadable."""
    if not header:
        return default
    try:
        return float(_HTTP.parse_retry_after(header))
    except InvalidHeader:
        return default


class RedisCalls:
    """Redis calls that wait out an outage: retried forever with backoff, each failure counted as
    `redis_errors` and logged; once the function is stopping, the error is raised instead, so the work it
    belongs to stays uncommitted for the next start."""

    def __init__(self, counters: Counters, log: logging.Logger, stopping: Callable[[], bool],
                 first_s: float = 0.4, cap_s: float = 10.0):
        self.counters, self.log, self.stopping = counters, log, stopping
        self.retry = retrying(REDIS_UNAVAILABLE, first_s, cap_s)

    def call(self, do: Callable[[], T], kept: str) -> T:
        """do() until Redis answers; `kept` names what waits meanwhile, for the log."""

        def fail(err: Exception, failures: int) -> None:
            if isinstance(err, redis.AuthenticationError):
                # A ConnectionError to redis-py, but no wait mends it: stop, naming the fix.
                self.log.error("Redis refused this function's login (%s): its REDIS_*_PASSWORD in .env differs from "
                               "the one Redis was started with; `make down && make up` starts Redis with .env's", err)
                raise err
            self.counters.count("redis_errors")
            self.log.warning("Redis unavailable (%s); %s kept, retry %d", err, kept, failures)
            if self.stopping():
                raise err

        return self.retry.call_with_retry(do, fail, with_failure_count=True)
