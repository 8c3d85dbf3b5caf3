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

import logging
import sys
import time
from urllib.parse import urlsplit

from confluent_kafka import Consumer, KafkaException

from cryptopipe.dlq import DeadLetters
from cryptopipe.run import Counters, serve
from cryptopipe.settings import Settings
from functions.alert_notifier.alerts import BadAlert, describe, parse_alert, slack_message
from functions.alert_notifier.memory import Memory
from functions.alert_notifier.offsets import Offsets, Pending
from functions.alert_notifier.webhook import Job, Webhook

log = logging.getLogger("alert_notifier")

COMPONENT = "alert-notifier"
# The counters of what became of each record; the others count attempts and errors.
OUTCOMES = ("delivered", "logged", "suppressed", "duplicates", "stale", "dead_lettered", "bad_records")


class AlertNotifier:
    """setup() connects; run() loops until stop(); webhook deliveries run on a small thread pool."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.stopping = False
        self.counters = Counters(settings, COMPONENT, log)
        self.offsets = Offsets()
        self.in_flight: set[str] = set()
        self.paused = False
        self.rebalanced = False
        self.webhook: Webhook | None = None
        self.consumer: Consumer | None = None

    def setup(self) -> None:
        self.memory = Memory(self.s, self.counters, lambda: self.stopping)
        self.dead_letters = DeadLetters(self.s, COMPONENT, self.counters)
        try:
            if self.dead_letters.topic not in self.dead_letters.producer.list_topics(timeout=10).topics:
                log.warning("dead-letter topic %s does not exist (`make up` creates it); what goes there waits",
                            self.dead_letters.topic)
        except KafkaException as err:  # Kafka not up yet: the clients keep trying, so may we
            log.warning("could not list topics (%s)", err)
        self.consumer = Consumer({
            **self.s.kafka_config("alert-notifier"),
            "group.id": self.s.alert_notifier_group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "group.instance.id": f"{self.s.alert_notifier_group}-{self.s.alert_notifier_instance_id}",
        })
        self.consumer.subscribe([self.s.alerts_topic], on_assign=self.on_assign, on_revoke=self.on_revoke,
                                on_lost=self.on_lost)
        if self.s.alert_webhook_url:
            self.webhook = Webhook(self.s, self.counters, self.memory.mark_sent)

    def target(self) -> str:
        if not self.s.alert_webhook_url:
            return "the log only (no ALERT_WEBHOOK_URL)"
        url = urlsplit(self.s.alert_webhook_url)
        return f"the webhook at {url.scheme}://{url.netloc}/... and the log"  # the path is the secret

    # ---- rebalances ----------------------------------------------------------------------------

    def on_assign(self, _consumer, partitions) -> None:
        self.offsets.assign(partitions)
        self.rebalanced = True
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def on_revoke(self, _consumer, partitions) -> None:
        # What is finished; the rest the next owner re-reads (and the sent-markers dedupe).
        self.offsets.commit(self.consumer)
        self.offsets.forget(partitions)

    def on_lost(self, _consumer, partitions) -> None:
        self.offsets.forget(partitions)

    # ---- one record ----------------------------------------------------------------------------

    def handle(self, msg) -> None:
        pending = self.offsets.of(msg)
        if pending is None:  # revoked while this batch was read
            return
        pending.add(msg.offset())
        now_ms = int(time.time() * 1000)
        # The validation contract decides what an alert is (a tombstone is not one: the stream never deletes
        # an alert); the message is made here too, so that no alert that passed can fail later.
        try:
            alert = parse_alert(msg.key(), msg.value(), self.s.max_clock_skew_ms)
            line, message = describe(alert, now_ms), slack_message(alert, now_ms)
        except BadAlert as err:
            reason = str(err)
        except Exception as err:  # defence in depth: one record never stops the notifier
            log.exception("internal error handling %s[%d]@%d", msg.topic(), msg.partition(), msg.offset())
            reason = f"internal error: {err!r:.500}"
        else:
            reason = None
        if reason is not None:
            self.counters.count("bad_records")
            log.warning("bad record %s[%d]@%d to %s: %s", msg.topic(), msg.partition(), msg.offset(),
                        self.dead_letters.topic, reason)
            self.dead_letter(msg, pending, reason)
            return
        max_age_ms = self.s.alert_max_age_s * 1000
        if max_age_ms and now_ms - alert.window_start > max_age_ms:
            self.counters.count("stale")
            log.info("stale %s: its window started %.0f min ago (ALERT_MAX_AGE_S=%g); not sent", alert.alert_id,
                     (now_ms - alert.window_start) / 60_000, self.s.alert_max_age_s)
            pending.finish(msg.offset())
            return
        if alert.alert_id in self.in_flight or self.memory.was_sent(alert):
            self.counters.count("duplicates")
            log.info("duplicate %s: already delivered, not sent again", alert.alert_id)
            pending.finish(msg.offset())
            return
        if self.s.alert_cooldown_s > 0 and not self.memory.cooldown_passes(alert):
            self.counters.count("suppressed")
            log.info("suppressed %s: another %s %s alert within the %g s cooldown", alert.alert_id, alert.symbol,
                     alert.rule, self.s.alert_cooldown_s)
            pending.finish(msg.offset())
            return
        log.info("ALERT %s %s [%s]", alert.symbol, line, alert.alert_id)
        if self.webhook is None:
            self.memory.mark_sent(alert)
            self.counters.count("logged")
            pending.finish(msg.offset())
            return
        self.in_flight.add(alert.alert_id)
        self.webhook.submit(Job(alert, msg, pending, message))

    def dead_letter(self, msg, pending: Pending, reason: str, **extra) -> None:
        """The record as received to the dead-letter topic; its offset counts as done once the broker has it."""
        self.dead_letters.send(msg.value(), msg.key(), reason, on_written=lambda: pending.finish(msg.offset()),
                               topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), **extra)

    def collect(self) -> None:
        """Outcomes of finished deliveries, handled on the consumer's thread (offsets, dead letters)."""
        if self.webhook is None:
            return
        for job, outcome in self.webhook.finished():
            alert = job.alert
            self.in_flight.discard(alert.alert_id)
            if outcome.kind == "delivered":
                self.counters.count("delivered")
                log.info("delivered %s to the webhook (attempt %d)", alert.alert_id, outcome.attempts)
                job.pending.finish(job.msg.offset())
            elif outcome.kind == "dead":
                self.counters.count("dead_lettered")
                log.error("undeliverable %s to %s: %s", alert.alert_id, self.dead_letters.topic, outcome.reason)
                self.memory.release_cooldown(alert)
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

    def run(self) -> None:
        self.setup()
        log.info("reading %s as group %s; alerts to %s; dead letters to %s", self.s.alerts_topic,
                 self.s.alert_notifier_group, self.target(), self.dead_letters.topic)
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
                self.dead_letters.poll(0)
                self.offsets.commit(self.consumer)
                self.report()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop retrying, let requests under way finish (bounded by their timeout), write what became a
        dead letter, commit what is done, leave the group."""
        try:
            if self.webhook is not None:
                self.webhook.close()
            self.collect()
            self.dead_letters.flush(10)
            self.offsets.commit(self.consumer)
        finally:
            self.consumer.close()
            self.report(force=True)

    def report(self, force: bool = False) -> None:
        # `outcomes`: what became of each record read, every one counted once (make demo sums them).
        self.counters.report(lambda: {"in_flight": len(self.in_flight),
                                      "outcomes": {k: self.counters[k] for k in OUTCOMES}}, force=force)

    def stop(self, *_args) -> None:
        self.stopping = True


def main() -> int:
    return serve(AlertNotifier, metrics=True)


if __name__ == "__main__":
    sys.exit(main())
