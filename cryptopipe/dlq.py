"""The one dead-letter writer of the functions: a record they cannot use goes, as received, to the
component's dead-letter topic (settings.dlq_topic), with the reason and context in headers (`dlq_headers`)."""

from __future__ import annotations

import logging
from typing import Callable

from confluent_kafka import Producer

from cryptopipe.run import Counters
from cryptopipe.settings import Settings
from cryptopipe.topics import dlq_headers

log = logging.getLogger("cryptopipe.dlq")


class DeadLetters:
    """Writes one component's dead letters through its own idempotent producer, or one it is given (the
    source shares its trades producer), and counts each in `counters` as `dead_letters`."""

    def __init__(self, settings: Settings, component: str, counters: Counters | None = None,
                 producer: Producer | None = None):
        self.component = component
        self.topic = settings.dlq_topic(component)
        self.counters = counters
        self.producer = producer or Producer({**settings.kafka_config(component),
                                              "enable.idempotence": True})

    def send(self, value: bytes | None, key: bytes | None, reason: str,
             on_written: Callable[[], None] | None = None, **context) -> None:
        """Queue one dead letter; headers error.reason, error.component and error.<name> per context value.
        With `on_written` (an offset that may only be committed once the dead letter is safe), a failed
        write is sent again until the broker has it, and then `on_written()` is called."""
        if self.counters is not None:
            self.counters.count("dead_letters")
        what = ", ".join(f"{name} {v}" for name, v in context.items() if v is not None)
        self._produce(value, key, dlq_headers(self.component, reason, **context), on_written, what)

    def _produce(self, value, key, headers, on_written, what: str) -> None:
        if on_written is None:
            self.producer.produce(self.topic, value=value, key=key, headers=headers)
            return

        def on_delivery(err, _record) -> None:
            if err is None:
                on_written()
                return
            log.error("writing the dead letter of %s to %s failed (%s); trying again", what, self.topic, err)
            self._produce(value, key, headers, on_written, what)

        self.producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=on_delivery)

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery callbacks (call it in the loop)."""
        return self.producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait for what is queued; returns how many records the producer still holds (0: all written)."""
        return self.producer.flush(timeout)
