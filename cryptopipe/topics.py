"""Every Kafka topic of the pipeline, declared once: names, partitions, retention, dead-letter headers.

The names here are the contract's defaults; the settings (AGGTRADES_TOPIC, ..., DLQ_TOPIC_PREFIX) may move
them, and `declared(settings)` gives the topics under the names in force, which `make up` creates and `make
status` shows. This module imports nothing of the project: the settings take their defaults from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    extra: dict[str, str] = field(default_factory=dict)
    dead_letter: bool = False

    def configs(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy, **self.extra}


AGGTRADES = "binance.aggtrades"
# The trades of AGGTRADES that pass the validation contract, as received: what the JDBC sink loads.
TRADES = "crypto.trades"
CANDLES_1M = "crypto.candles-1m"
STATS_5M = "crypto.stats-5m"
ALERTS = "crypto.alerts"


DLQ_PREFIX = "crypto.dlq."


def dlq(component: str) -> str:
    """The default dead-letter topic of one component: crypto.dlq.<component>."""
    return f"{DLQ_PREFIX}{component}"


def dlq_headers(component: str, reason: str, **context) -> list[tuple[str, bytes]]:
    """The headers every dead-letter record carries (its value is the record as received): error.reason,
    error.component (the <component> of crypto.dlq.<component>), and error.<name> for each context value."""
    headers = [("error.reason", reason.encode()), ("error.component", component.encode())]
    return headers + [(f"error.{name}", str(value).encode()) for name, value in context.items() if value is not None]


# Components that own a dead-letter topic: the functions (under DLQ_TOPIC_PREFIX) and the JDBC sink
# connectors (named in their connectors/*.json, which Connect reads as they are).
FUNCTION_DLQS = ("source", "stream", "redis-sink", "alert-notifier")
CONNECTOR_DLQS = ("jdbc-trades", "jdbc-candles", "jdbc-alerts", "jdbc-stats")


class TopicNames(Protocol):
    """What `declared` reads of the settings (cryptopipe.settings.Settings has it)."""

    aggtrades_topic: str
    trades_topic: str
    candles_topic: str
    stats_topic: str
    alerts_topic: str

    def dlq_topic(self, component: str) -> str: ...


def declared(settings: TopicNames) -> tuple[Topic, ...]:
    """The pipeline's topics under the names the settings give them."""
    return (
        # Symbols are the key, so three partitions spread symbols over up to three consumers per group.
        Topic(settings.aggtrades_topic, partitions=3, retention_ms=7 * DAY_MS),
        # As many partitions as the trades it comes from: each validated trade keeps its partition.
        Topic(settings.trades_topic, partitions=3, retention_ms=7 * DAY_MS),
        Topic(settings.candles_topic, partitions=3, retention_ms=30 * DAY_MS),
        Topic(settings.stats_topic, partitions=3, retention_ms=30 * DAY_MS),
        # Keyed by the deterministic alert id: compaction keeps the newest version of each alert.
        Topic(settings.alerts_topic, partitions=1, retention_ms=90 * DAY_MS, cleanup_policy="compact,delete"),
        *(Topic(settings.dlq_topic(c), partitions=1, retention_ms=30 * DAY_MS, dead_letter=True)
          for c in FUNCTION_DLQS),
        *(Topic(dlq(c), partitions=1, retention_ms=30 * DAY_MS, dead_letter=True) for c in CONNECTOR_DLQS),
    )
