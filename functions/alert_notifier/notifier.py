"""The alert notification function: each alert of crypto.alerts once to a webhook (Slack's JSON) and the log.

    alert-notifier            (console entry point; `make alert-notifier` runs it)

- Once: the stream can re-emit an alert id (ksqlDB does; a restart re-reads what was not committed), so
  Redis remembers every delivered id (`<prefix>sent:<alert_id>` for ALERT_SENT_TTL_S) and a known id is
  counted as a duplicate. An id is marked only after the webhook answered 2xx.
- Cooldown: one alert per symbol and rule within ALERT_COOLDOWN_S of event time (`<prefix>cooldown:<symbol>:
  <rule>`, expiring after the cooldown); the others are logged and counted as suppressed.
- The stream never waits on the webhook: a few worker threads post with timeouts and retry connection
  errors, timeouts, 429 (after its Retry-After) and 5xx with exponential backoff and jitter, up to
  ALERT_WEBHOOK_MAX_ATTEMPTS within ALERT_WEBHOOK_DEADLINE_S; other answers are final. What cannot be
  delivered, and records that are not alerts, go to crypto.dlq.alert-notifier (the record as received, the
  reason in headers, like every other dead-letter topic). With ALERT_MAX_IN_FLIGHT alerts under way the
  consumer pauses rather than queueing without bound.
- Offsets are committed up to the first record still being delivered, so a crash re-reads it and the
  sent-marker keeps what was delivered from going out twice. What remains is a crash between the webhook's
  2xx and the marker: that one alert goes out again on restart. Every request carries the id in
  `X-Alert-Id`, for receivers that can dedupe.
- With no ALERT_WEBHOOK_URL alerts go to the log only. Alerts older than ALERT_MAX_AGE_S are logged as stale
  and not sent: a first start on a topic holding 90 days of alerts must not page anyone about them.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import queue
import random
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

import redis
import requests
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from cryptopipe.run import serve, write_status
from cryptopipe.settings import Settings
from cryptopipe.topics import dlq_headers

log = logging.getLogger("alert_notifier")

COMPONENT = "alert-notifier"
EMOJI = ":rotating_light:"
REQUIRED = ("alert_id", "symbol", "rule", "window_start", "value", "threshold")
# The counters of what became of each record; the others count attempts and errors.
OUTCOMES = ("delivered", "logged", "suppressed", "duplicates", "stale", "dead_lettered", "bad_records", "tombstones")

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


# ---- alerts and their messages ---------------------------------------------------------------------

class BadAlert(ValueError):
    pass


@dataclass(frozen=True)
class Alert:
    """A crypto.alerts value (fields in cryptopipe.schemas.ALERT)."""

    alert_id: str
    symbol: str
    rule: str
    window_start: int
    value: Decimal
    threshold: Decimal
    price: Decimal | None
    detected_at: int | None


def _number(record: dict, name: str) -> Decimal:
    raw = record[name]
    if isinstance(raw, bool) or not isinstance(raw, (int, Decimal, str)):
        raise BadAlert(f"{name} {raw!r} is not a number")
    try:
        number = Decimal(raw)
    except InvalidOperation:
        raise BadAlert(f"{name} {raw!r} is not a number") from None
    if not number.is_finite():
        raise BadAlert(f"{name} {raw!r} is not finite")
    return number


def parse_alert(raw: bytes) -> Alert:
    """An alert record, checked; BadAlert names what is wrong. Fields beyond the contract are ignored."""
    try:
        record = json.loads(raw, parse_float=Decimal)
    except (ValueError, TypeError) as err:
        raise BadAlert(f"not JSON: {err}") from None
    if not isinstance(record, dict):
        raise BadAlert("not a JSON object")
    missing = [k for k in REQUIRED if record.get(k) is None]
    if missing:
        raise BadAlert(f"missing field(s) {', '.join(missing)}")
    for name in ("alert_id", "symbol", "rule"):
        if not isinstance(record[name], str) or not record[name]:
            raise BadAlert(f"{name} {record[name]!r} is not a non-empty string")
    for name in ("window_start", "detected_at"):
        if record.get(name) is not None and (isinstance(record[name], bool) or not isinstance(record[name], int)):
            raise BadAlert(f"{name} {record[name]!r} is not epoch milliseconds")
    return Alert(record["alert_id"], record["symbol"], record["rule"], record["window_start"],
                 _number(record, "value"), _number(record, "threshold"),
                 _number(record, "price") if record.get("price") is not None else None, record.get("detected_at"))


def plain(number: Decimal) -> str:
    """43210.50000000 -> 43210.5: every digit that matters, no exponent."""
    return format(number.normalize(), "f")


def amount(number: Decimal) -> str:
    return f"{number:,.0f}" if abs(number) >= 1000 else f"{number:,.2f}"


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def describe(alert: Alert, now_ms: int | None = None) -> str:
    """One line for people, without the symbol: 'price_move 1.52% (threshold 1.00%) in the minute from
    12:03 UTC, price 43210.5'. The date is added when the window is not today (UTC)."""
    start = utc(alert.window_start)
    today = utc(now_ms if now_ms is not None else int(time.time() * 1000)).date()
    when = f"{start:%H:%M} UTC" if start.date() == today else f"{start:%Y-%m-%d %H:%M} UTC"
    if alert.rule == "price_move":
        what = f"{alert.value:.2f}% (threshold {alert.threshold:.2f}%)"
    elif alert.rule == "volume_spike":
        what = f"quote volume {amount(alert.value)} (threshold {amount(alert.threshold)})"
    else:
        what = f"{plain(alert.value)} (threshold {plain(alert.threshold)})"
    price = f", price {plain(alert.price)}" if alert.price is not None else ""
    return f"{alert.rule} {what} in the minute from {when}{price}"


def slack_message(alert: Alert, now_ms: int | None = None) -> dict:
    """Slack's incoming-webhook JSON: `text` (notifications, and receivers that read nothing else) and blocks."""
    line = describe(alert, now_ms)
    start = utc(alert.window_start)
    context = f"`{alert.alert_id}` · window {start:%Y-%m-%d %H:%M}-{start + timedelta(minutes=1):%H:%M} UTC"
    if alert.detected_at is not None:
        context += f" · detected {utc(alert.detected_at):%H:%M:%S} UTC"
    return {
        "text": f"{EMOJI} {alert.symbol} {line}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{EMOJI} *{alert.symbol}* {line}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


# ---- offsets ---------------------------------------------------------------------------------------

class Pending:
    """Offsets of one partition in read order. Records finish out of order (deliveries run in parallel);
    the commit point only moves past an unbroken run of finished ones."""

    def __init__(self) -> None:
        self.offsets: deque[int] = deque()
        self.finished: set[int] = set()
        self.next: int | None = None
        self.committed: int | None = None

    def add(self, offset: int) -> None:
        self.offsets.append(offset)

    def finish(self, offset: int) -> None:
        self.finished.add(offset)

    def advance(self) -> int | None:
        while self.offsets and self.offsets[0] in self.finished:
            offset = self.offsets.popleft()
            self.finished.discard(offset)
            self.next = offset + 1
        return self.next


@dataclass
class Job:
    alert: Alert
    msg: object  # the confluent_kafka Message, kept for the dead-letter topic
    pending: Pending
    payload: dict


@dataclass
class Outcome:
    kind: str  # delivered | dead | abandoned (stopping: left uncommitted, the next start delivers it)
    attempts: int
    reason: str = ""
    status: int | None = None


# ---- the function ----------------------------------------------------------------------------------

class AlertNotifier:
    """setup() connects; run() loops until stop(); webhook deliveries run on a small thread pool."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.stopping = False
        self.halt = threading.Event()  # tells the workers to stop retrying
        self.counters: Counter = Counter()
        self.counter_lock = threading.Lock()
        self.last_report = 0.0
        self.pending: dict[tuple[str, int], Pending] = {}
        self.in_flight: set[str] = set()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.paused = False
        self.rebalanced = False
        self.local = threading.local()
        self.pool: ThreadPoolExecutor | None = None
        self.consumer: Consumer | None = None
        self.redis: redis.Redis | None = None

    def setup(self) -> None:
        self.redis = redis.Redis.from_url(self.s.redis_url, socket_timeout=5, socket_connect_timeout=3)
        self.cooldown_script = self.redis.register_script(COOLDOWN_SCRIPT)
        self.release_script = self.redis.register_script(RELEASE_SCRIPT)
        self.dlq = Producer({"bootstrap.servers": self.s.kafka_bootstrap, "enable.idempotence": True})
        try:
            if self.s.alert_notifier_dlq_topic not in self.dlq.list_topics(timeout=10).topics:
                log.warning("dead-letter topic %s does not exist (`make up` creates it); what goes there waits",
                            self.s.alert_notifier_dlq_topic)
        except KafkaException as err:  # Kafka not up yet: the clients keep trying, so may we
            log.warning("could not list topics (%s)", err)
        self.consumer = Consumer({
            "bootstrap.servers": self.s.kafka_bootstrap,
            "group.id": self.s.alert_notifier_group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "group.instance.id": f"{self.s.alert_notifier_group}-{self.s.alert_notifier_instance_id}",
        })
        self.consumer.subscribe([self.s.alert_notifier_topic], on_assign=self.on_assign, on_revoke=self.on_revoke,
                                on_lost=self.on_lost)
        if self.s.alert_webhook_url:
            self.pool = ThreadPoolExecutor(self.s.alert_webhook_workers, thread_name_prefix="webhook")

    def target(self) -> str:
        if not self.s.alert_webhook_url:
            return "the log only (no ALERT_WEBHOOK_URL)"
        url = urlsplit(self.s.alert_webhook_url)
        return f"the webhook at {url.scheme}://{url.netloc}/... and the log"  # the path is the secret

    def key(self, *parts: str) -> str:
        return self.s.alert_redis_prefix + ":".join(parts)

    # ---- rebalances ----------------------------------------------------------------------------

    def on_assign(self, _consumer, partitions) -> None:
        for p in partitions:
            self.pending[(p.topic, p.partition)] = Pending()
        self.rebalanced = True
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def on_revoke(self, _consumer, partitions) -> None:
        self.commit()  # what is finished; the rest the next owner re-reads (and the sent-markers dedupe)
        for p in partitions:
            self.pending.pop((p.topic, p.partition), None)

    def on_lost(self, _consumer, partitions) -> None:
        for p in partitions:
            self.pending.pop((p.topic, p.partition), None)

    # ---- one record ----------------------------------------------------------------------------

    def handle(self, msg) -> None:
        pending = self.pending.get((msg.topic(), msg.partition()))
        if pending is None:  # revoked while this batch was read
            return
        pending.add(msg.offset())
        if msg.value() is None:  # a tombstone on the compacted topic deletes, it does not alert
            self.count("tombstones")
            pending.finish(msg.offset())
            return
        try:
            alert = parse_alert(msg.value())
        except BadAlert as err:
            self.count("bad_records")
            log.warning("bad record %s[%d]@%d to %s: %s", msg.topic(), msg.partition(), msg.offset(),
                        self.s.alert_notifier_dlq_topic, err)
            self.dead_letter(msg, pending, str(err))
            return
        now_ms = int(time.time() * 1000)
        max_age_ms = self.s.alert_max_age_s * 1000
        if max_age_ms and now_ms - alert.window_start > max_age_ms:
            self.count("stale")
            log.info("stale %s: its window started %.0f min ago (ALERT_MAX_AGE_S=%g); not sent", alert.alert_id,
                     (now_ms - alert.window_start) / 60_000, self.s.alert_max_age_s)
            pending.finish(msg.offset())
            return
        if alert.alert_id in self.in_flight or self.redis_do(
                lambda: self.redis.exists(self.key("sent", alert.alert_id))):
            self.count("duplicates")
            log.info("duplicate %s: already delivered, not sent again", alert.alert_id)
            pending.finish(msg.offset())
            return
        if self.s.alert_cooldown_s > 0 and not self.redis_do(lambda: self.cooldown_script(
                keys=[self.key("cooldown", alert.symbol, alert.rule)],
                args=[alert.alert_id, alert.window_start, int(self.s.alert_cooldown_s * 1000),
                      max(1, math.ceil(self.s.alert_cooldown_s))])):
            self.count("suppressed")
            log.info("suppressed %s: another %s %s alert within the %g s cooldown", alert.alert_id, alert.symbol,
                     alert.rule, self.s.alert_cooldown_s)
            pending.finish(msg.offset())
            return
        log.info("ALERT %s %s [%s]", alert.symbol, describe(alert, now_ms), alert.alert_id)
        if self.pool is None:
            self.mark_sent(alert)
            self.count("logged")
            pending.finish(msg.offset())
            return
        self.in_flight.add(alert.alert_id)
        self.pool.submit(self.deliver_job, Job(alert, msg, pending, slack_message(alert, now_ms)))

    def dead_letter(self, msg, pending: Pending, reason: str, **extra) -> None:
        """The record as received to the dead-letter topic, the reason in headers (as the other functions do);
        its offset counts as done once the broker has it."""
        headers = dlq_headers(COMPONENT, reason, topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                              **extra)

        def on_delivery(err, _record) -> None:
            if err is None:
                pending.finish(msg.offset())
                return
            log.error("writing %s[%d]@%d to %s failed (%s); trying again", msg.topic(), msg.partition(),
                      msg.offset(), self.s.alert_notifier_dlq_topic, err)
            self.dead_letter(msg, pending, reason, **extra)

        self.dlq.produce(self.s.alert_notifier_dlq_topic, value=msg.value(), key=msg.key(), headers=headers,
                         on_delivery=on_delivery)

    def redis_do(self, call):
        """A Redis call from the consumer loop, retried while Redis is away: without it nothing can be
        sent exactly once, so the alert waits (uncommitted) rather than going out unchecked."""
        attempt = 0
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as err:
                attempt += 1
                self.count("redis_errors")
                if self.stopping:
                    raise
                delay = min(10.0, 0.2 * 2 ** attempt) * random.uniform(0.5, 1.5)
                log.warning("Redis unavailable (%s); alert kept, retry %d in %.1f s", err, attempt, delay)
                time.sleep(delay)

    def mark_sent(self, alert: Alert) -> None:
        for attempt in range(5):
            try:
                self.redis.set(self.key("sent", alert.alert_id), int(time.time() * 1000), nx=True,
                               ex=self.s.alert_sent_ttl_s)
                return
            except redis.RedisError as err:
                problem = err
                time.sleep(0.2 * 2 ** attempt)
        self.count("sent_marker_errors")
        log.error("%s was delivered but Redis did not record it (%s): a restart may send it again",
                  alert.alert_id, problem)

    # ---- webhook delivery (worker threads) -----------------------------------------------------

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):  # one keep-alive session per worker: Session is not thread-safe
            self.local.session = requests.Session()
            self.local.session.headers["User-Agent"] = "crypto-pipeline-alert-notifier"
        return self.local.session

    def deliver_job(self, job: Job) -> None:
        try:
            outcome = self.deliver(job)
        except Exception as err:  # noqa: BLE001 - a worker must always report back, or the offset never moves
            log.exception("delivering %s failed unexpectedly", job.alert.alert_id)
            outcome = Outcome("dead", 0, f"internal error: {err!r}")
        self.results.put((job, outcome))

    def deliver(self, job: Job) -> Outcome:
        s = self.s
        deadline = time.monotonic() + s.alert_webhook_deadline_s
        attempt = 0
        while True:
            if self.halt.is_set():
                return Outcome("abandoned", attempt)
            attempt += 1
            retry_after = status = None
            try:
                answer = self.session().post(
                    s.alert_webhook_url, json=job.payload, headers={"X-Alert-Id": job.alert.alert_id},
                    timeout=(min(3.05, s.alert_webhook_timeout_s), s.alert_webhook_timeout_s), allow_redirects=False)
            except requests.Timeout:
                problem = f"no answer within {s.alert_webhook_timeout_s:g} s"
            except requests.RequestException as err:
                problem = f"connection failed ({type(err).__name__})"
            else:
                status = answer.status_code
                if 200 <= status < 300:
                    self.mark_sent(job.alert)
                    return Outcome("delivered", attempt, status=status)
                body = " ".join(answer.text.split())[:200]
                problem = f"HTTP {status}" + (f" {body}" if body else "")
                if status == 429:
                    retry_after = parse_retry_after(answer.headers.get("Retry-After"))
                elif status < 500:
                    return Outcome("dead", attempt, f"the webhook refused it: {problem}", status)
            if attempt >= s.alert_webhook_max_attempts:
                return Outcome("dead", attempt, f"gave up after {attempt} attempts: {problem}", status)
            delay = retry_after if retry_after is not None else (
                min(30.0, s.alert_webhook_backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5))
            if time.monotonic() + delay > deadline:
                return Outcome("dead", attempt, f"gave up after {attempt} attempts: the next one in {delay:.1f} s "
                                                f"would pass the {s.alert_webhook_deadline_s:g} s deadline; {problem}",
                               status)
            self.count("retried")
            log.warning("webhook attempt %d for %s: %s; again in %.1f s", attempt, job.alert.alert_id, problem, delay)
            if self.halt.wait(delay):
                return Outcome("abandoned", attempt)

    def collect(self) -> None:
        """Outcomes of finished deliveries, handled on the consumer's thread (offsets, dead letters)."""
        while True:
            try:
                job, outcome = self.results.get_nowait()
            except queue.Empty:
                return
            alert = job.alert
            self.in_flight.discard(alert.alert_id)
            if outcome.kind == "delivered":
                self.count("delivered")
                log.info("delivered %s to the webhook (attempt %d)", alert.alert_id, outcome.attempts)
                job.pending.finish(job.msg.offset())
            elif outcome.kind == "dead":
                self.count("dead_lettered")
                log.error("undeliverable %s to %s: %s", alert.alert_id, self.s.alert_notifier_dlq_topic,
                          outcome.reason)
                try:
                    self.release_script(keys=[self.key("cooldown", alert.symbol, alert.rule)], args=[alert.alert_id])
                except redis.RedisError as err:
                    log.warning("could not release the cooldown of %s (%s); it expires by itself", alert.alert_id, err)
                self.dead_letter(job.msg, job.pending, outcome.reason, attempts=outcome.attempts, status=outcome.status)
            # abandoned: stays uncommitted, so the next start delivers it

    # ---- the loop ------------------------------------------------------------------------------

    def backpressure(self) -> None:
        full = len(self.in_flight) >= self.s.alert_max_in_flight
        if full == self.paused and not (full and self.rebalanced):
            return
        assignment = self.consumer.assignment()
        if full:
            self.consumer.pause(assignment)
            if not self.paused:
                log.info("%d alerts being delivered; reading paused until some are done", len(self.in_flight))
        else:
            self.consumer.resume(assignment)
        self.paused, self.rebalanced = full, False

    def commit(self) -> None:
        offsets = []
        for (topic, partition), pending in self.pending.items():
            nxt = pending.advance()
            if nxt is not None and nxt != pending.committed:
                offsets.append(TopicPartition(topic, partition, nxt))
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            log.warning("commit failed (%s); it is tried again with the next batch", err)
            return
        for tp in offsets:
            if (tp.topic, tp.partition) in self.pending:
                self.pending[(tp.topic, tp.partition)].committed = tp.offset

    def run(self) -> None:
        self.setup()
        log.info("reading %s as group %s; alerts to %s; dead letters to %s", self.s.alert_notifier_topic,
                 self.s.alert_notifier_group, self.target(), self.s.alert_notifier_dlq_topic)
        try:
            while not self.stopping:
                self.collect()
                self.backpressure()
                # Wait briefly for one record, then take what has already arrived, up to the room left.
                first = self.consumer.poll(0.05)
                msgs = [] if first is None else [first]
                room = self.s.alert_max_in_flight - len(self.in_flight) - 1
                if msgs and room > 0:
                    msgs += self.consumer.consume(min(500, room), timeout=0)
                for msg in msgs:
                    if msg.error() is not None:
                        log.error("consumer error: %s", msg.error())
                        continue
                    self.handle(msg)
                self.dlq.poll(0)
                self.commit()
                self.report()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop retrying, let requests under way finish (bounded by their timeout), write what became a
        dead letter, commit what is done, leave the group."""
        self.halt.set()
        try:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
            self.collect()
            self.dlq.flush(10)
            self.commit()
        finally:
            self.consumer.close()
            self.report(force=True)

    def count(self, name: str) -> None:
        with self.counter_lock:
            self.counters[name] += 1

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < 5:
            return
        self.last_report = now
        with self.counter_lock:
            counters = dict(self.counters)
        write_status(self.s, "alert-notifier", {"updated_at": int(time.time() * 1000), "counters": counters,
                                                "in_flight": len(self.in_flight)})
        log.info("counters: %s", counters)

    def stop(self, *_args) -> None:
        self.stopping = True


def main() -> int:
    return serve(AlertNotifier)


if __name__ == "__main__":
    sys.exit(main())
