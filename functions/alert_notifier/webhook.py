"""Webhook delivery on a few worker threads, so the consumer never waits on the webhook: timeouts, retries
of connection errors, timeouts, 429 (after its Retry-After) and 5xx with backoff, within a number of attempts
and a deadline; other answers are final. Outcomes come back through a queue, read on the consumer's thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import requests

from cryptopipe.retry import backoff, retry_after
from cryptopipe.run import Counters
from cryptopipe.settings import Settings
from functions.alert_notifier.alerts import Alert
from functions.alert_notifier.offsets import Pending

log = logging.getLogger("alert_notifier.webhook")


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


class Webhook:
    """Posts jobs to ALERT_WEBHOOK_URL; `on_delivered(alert)` runs on the worker right after a 2xx."""

    def __init__(self, settings: Settings, counters: Counters, on_delivered: Callable[[Alert], None]):
        self.s = settings
        self.counters = counters
        self.on_delivered = on_delivered
        self.backoff = backoff(settings.alert_webhook_backoff_s, 30.0)
        self.halt = threading.Event()  # tells the workers to stop retrying
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(settings.alert_webhook_workers, thread_name_prefix="webhook")

    def submit(self, job: Job) -> None:
        self.pool.submit(self.deliver_job, job)

    def finished(self) -> Iterator[tuple[Job, Outcome]]:
        """The outcomes that arrived since the last call."""
        while True:
            try:
                yield self.results.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        """Stop retrying and wait for the requests under way (bounded by their timeout)."""
        self.halt.set()
        self.pool.shutdown(wait=True, cancel_futures=True)

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
            wait = status = None
            started = time.monotonic()
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
                self.counters.observe("webhook_request", time.monotonic() - started)
                if 200 <= status < 300:
                    self.on_delivered(job.alert)
                    return Outcome("delivered", attempt, status=status)
                body = " ".join(answer.text.split())[:200]
                problem = f"HTTP {status}" + (f" {body}" if body else "")
                if status == 429:
                    wait = retry_after(answer.headers.get("Retry-After"))
                elif status < 500:
                    return Outcome("dead", attempt, f"the webhook refused it: {problem}", status)
            if attempt >= s.alert_webhook_max_attempts:
                return Outcome("dead", attempt, f"gave up after {attempt} attempts: {problem}", status)
            delay = wait if wait is not None else self.backoff.compute(attempt)
            if time.monotonic() + delay > deadline:
                return Outcome("dead", attempt, f"gave up after {attempt} attempts: the next one in {delay:.1f} s "
                                                f"would pass the {s.alert_webhook_deadline_s:g} s deadline; {problem}",
                               status)
            self.counters.count("retried")
            log.warning("webhook attempt %d for %s: %s; again in %.1f s", attempt, job.alert.alert_id, problem, delay)
            if self.halt.wait(delay):
                return Outcome("abandoned", attempt)
