"""What Redis remembers for the notifier: the ids already delivered (`<prefix>sent:<alert_id>`), so a
re-emitted or re-read alert is not sent twice, and the cooldown of each symbol and rule
(`<prefix>cooldown:<symbol>:<rule>`)."""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import redis

from cryptopipe.retry import RedisCalls, retrying
from cryptopipe.run import Counters
from cryptopipe.settings import Settings
from functions.alert_notifier.alerts import Alert

log = logging.getLogger("alert_notifier")

# KEYS: the cooldown key of one symbol and rule, holding "<alert_id>|<window_start>" of the alert that opened
# the cooldown. ARGV: alert_id, window_start (ms), cooldown (ms), ttl (s). 1 = send it, 0 = suppress it.
# Measured in event time, so a backlog read in seconds still sends alerts that were far apart; the owner
# itself always passes, so an alert re-read after a crash before its delivery is not suppressed by itself.
COOLDOWN_SCRIPT = """
local ws, cooldown = tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner, owner_ws = string.match(cur, '^(.*)|(%-?%d+)$')
  if owner then
    owner_ws = tonumber(owner_ws)
    if owner == ARGV[1] then return 1 end
    if ws > owner_ws - cooldown and ws < owner_ws + cooldown then return 0 end
    if ws < owner_ws then return 1 end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[4])
return 1
"""

# An alert that could not be delivered gives its cooldown back, so the next one of that symbol and rule
# is not suppressed in favour of an alert nobody saw. KEYS: the cooldown key. ARGV: alert_id.
RELEASE_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Memory:
    """The notifier's Redis keys. Checks run on the consumer's thread and wait out a Redis outage (without
    Redis nothing can be sent exactly once, so the alert waits, uncommitted, rather than going out
    unchecked); the sent-marker is written from the webhook workers."""

    def __init__(self, settings: Settings, counters: Counters, stopping: Callable[[], bool]):
        self.s = settings
        self.counters = counters
        self.redis = redis.Redis.from_url(settings.redis_url("alert-notifier"), socket_timeout=5,
                                          socket_connect_timeout=3)
        self.cooldown_script = self.redis.register_script(COOLDOWN_SCRIPT)
        self.release_script = self.redis.register_script(RELEASE_SCRIPT)
        self.calls = RedisCalls(counters, log, stopping)
        # A marker is worth a few quick tries, not a worker blocked while the next alerts wait.
        self.marker_retry = retrying((redis.RedisError,), first_s=0.2, cap_s=3.2, retries=4)

    def key(self, *parts: str) -> str:
        return self.s.alert_redis_prefix + ":".join(parts)

    def was_sent(self, alert: Alert) -> bool:
        return bool(self.calls.call(lambda: self.redis.exists(self.key("sent", alert.alert_id)), "alert"))

    def cooldown_passes(self, alert: Alert) -> bool:
        """True when no other alert of its symbol and rule took the cooldown (this one takes it)."""
        cooldown = self.s.alert_cooldown_s
        return bool(self.calls.call(lambda: self.cooldown_script(
            keys=[self.key("cooldown", alert.symbol, alert.rule)],
            args=[alert.alert_id, alert.window_start, int(cooldown * 1000), max(1, math.ceil(cooldown))]), "alert"))

    def release_cooldown(self, alert: Alert) -> None:
        try:
            self.release_script(keys=[self.key("cooldown", alert.symbol, alert.rule)], args=[alert.alert_id])
        except redis.RedisError as err:
            log.warning("could not release the cooldown of %s (%s); it expires by itself", alert.alert_id, err)

    def mark_sent(self, alert: Alert) -> None:
        try:
            self.marker_retry.call_with_retry(
                lambda: self.redis.set(self.key("sent", alert.alert_id), int(time.time() * 1000), nx=True,
                                       ex=self.s.alert_sent_ttl_s),
                lambda _err: None)
        except redis.RedisError as err:
            self.counters.count("sent_marker_errors")
            log.error("%s was delivered but Redis did not record it (%s): a restart may send it again",
                      alert.alert_id, err)
