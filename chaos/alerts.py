"""What Prometheus said while the chaos run hit the pipeline: every alert's firing spells, and for each fault the
alert that must answer it, when it fired and when it resolved.

A fault is proven when its alert fires within the rule's `for:` plus two scrape intervals from the fault's start
(Prometheus scrapes the monitor, which reads the services at that scrape; the rules are evaluated: each up to one
interval apart; and this watcher polls every POLL_S), and resolves once the pipeline has recovered. A fault that
alerts nobody fails the run. The one exception is a dead-letter burst: the monitor reads the dead-letter topics
between scrapes (a Kafka read at each scrape would cost more than it saves), one interval more."""

from __future__ import annotations

import threading
import time

import requests

from cryptopipe.settings import Settings
from ops.monitoring import alert_holds, prometheus_api

POLL_S = 2.0


def expected_alert(kind: str, target: str) -> tuple[str, dict[str, str]]:
    """The alert (name, labels it must carry) that must answer a fault."""
    if kind == "kill":
        return "FunctionRestarted", {"function": target}
    if kind == "kill-service":
        return "ServiceRestarted", {"service": target}
    if kind == "outage":
        return "ServiceDown", {"service": target}
    return "DeadLetterTopicGrowing", {}  # malformed records: any dead-letter topic they reach


# Alerts on parts the monitor reads between scrapes rather than at them (ops/monitor.py: Monitor.LIVE).
READ_BETWEEN_SCRAPES = {"DeadLetterTopicGrowing"}


class AlertWatch:
    """Polls Prometheus' /api/v1/alerts from a thread; spells[(name, labels)] = [[fired_at, resolved_at], ...]
    in epoch seconds (resolved_at None while firing)."""

    def __init__(self, settings: Settings, log):
        self.settings = settings
        # The rules' `for:` as the running Prometheus loaded them, read once.
        self.holds = alert_holds(settings)
        self.interval_s = settings.scrape_interval_s
        self.log = log
        self.spells: dict[tuple[str, frozenset], list[list]] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.failures = 0
        self.thread = threading.Thread(target=self.watch, name="alert-watch", daemon=True)
        self.thread.start()

    def watch(self) -> None:
        while not self.stopping.wait(POLL_S):
            try:
                alerts = prometheus_api(self.settings, "alerts", timeout=5)["alerts"]
            except (requests.RequestException, ValueError, KeyError) as err:
                self.failures += 1
                if self.failures in (1, 10, 100):
                    self.log(f"reading Prometheus' alerts failed ({self.failures} times): {err}")
                continue
            now = time.time()
            firing = {(a["labels"]["alertname"], frozenset(a["labels"].items()))
                      for a in alerts if a["state"] == "firing"}
            with self.lock:
                for key in firing:
                    spells = self.spells.setdefault(key, [])
                    if not spells or spells[-1][1] is not None:
                        spells.append([now, None])
                        where = ", ".join(f"{k}={v}" for k, v in sorted(key[1]) if k not in ("alertname", "severity"))
                        self.log(f"  alert {key[0]} firing ({where})")
                for key, spells in self.spells.items():
                    if key not in firing and spells[-1][1] is None:
                        spells[-1][1] = now

    def answer(self, kind: str, target: str, began: float) -> dict:
        """The fault's alert: the first spell of a matching alert firing within the rule's limit of `began`
        (one firing already then counts: it covers this fault too, and is marked so)."""
        name, labels = expected_alert(kind, target)
        read_between_scrapes = name in READ_BETWEEN_SCRAPES
        limit = self.holds[name] + (3 if read_between_scrapes else 2) * self.interval_s + POLL_S
        with self.lock:
            spells = [(fired, resolved) for key, spells in self.spells.items()
                      if key[0] == name and all(dict(key[1]).get(k) == v for k, v in labels.items())
                      for fired, resolved in spells
                      if fired <= began + limit and (resolved is None or resolved >= began)]
        fired, resolved = min(spells) if spells else (None, None)
        return {"alert": name, "labels": labels, "limit_s": limit,
                "fired_at": None if fired is None else time.strftime("%H:%M:%S", time.localtime(fired)),
                "fired_after_s": None if fired is None else round(fired - began, 1),
                "already_firing": fired is not None and fired < began,
                "resolved_at": None if resolved is None else time.strftime("%H:%M:%S", time.localtime(resolved)),
                "resolved": resolved is not None}

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
