"""The faults the chaos run injects. Each returns once the fault is over (a kill at once, an outage after its
length); healing is left to the pipeline and its supervisors."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from confluent_kafka import Producer

from chaos import malformed
from cryptopipe.settings import Settings
from ops import functions_ctl
from ops.process import command_line, process_exists
from ops.stack import NativeStack

SUPERVISOR = "ops.supervise"


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def worker_of(pid: int, marker: str) -> int | None:
    """The process doing the work under `pid`: the newest process of the tree whose command line holds
    `marker` and that is not a supervisor (the supervisor itself, when nothing runs under it)."""
    for candidate in reversed([pid, *descendants(pid)]):
        try:
            line = command_line(candidate)
        except OSError:
            continue
        if marker in line and SUPERVISOR not in line.split(" -m ", 1)[-1].split(" ", 1)[0]:
            return candidate
    return None


class Faults:
    def __init__(self, settings: Settings, stack: NativeStack, log):
        self.s, self.stack, self.log = settings, stack, log
        self.producer = Producer({**settings.kafka_config(), "enable.idempotence": True,
                                  "message.timeout.ms": 600_000})
        self.sent: list[dict] = []  # malformed records the broker acknowledged: class, partition, offset

    def kill_function(self, name: str) -> str:
        pid = functions_ctl.running_pid(self.s, name)
        target = worker_of(pid, functions_ctl.MODULES[name]) if pid else None
        if target is None:
            return f"{name} not running"
        os.kill(target, signal.SIGKILL)
        return f"SIGKILL {name} (pid {target})"

    def kill_service(self, name: str) -> str:
        svc = self.stack.service(name)
        pid = svc.pid()
        target = worker_of(pid, svc.marker) if pid else None
        if target is None:
            return f"{name} not running"
        os.kill(target, signal.SIGKILL)
        if target == pid:
            # Not under a supervisor: do what one would, start it again once it is gone.
            while process_exists(target):
                time.sleep(0.1)
            svc.start()
            return f"SIGKILL {name} (pid {target}), started again as a supervisor would"
        return f"SIGKILL {name} (pid {target}); its supervisor restarts it"

    def outage(self, name: str, seconds: float) -> str:
        svc = self.stack.service(name)
        svc.stop()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.5)
        svc.start()
        return f"{name} down {seconds:.0f} s"

    def malformed_burst(self, symbol: str) -> str:
        batch = malformed.records(symbol)

        def delivered(kind):
            def on_delivery(err, msg):
                if err is None:
                    self.sent.append({"class": kind, "partition": msg.partition(), "offset": msg.offset()})
                else:
                    self.log(f"malformed {kind} not written: {err}")
            return on_delivery

        for kind, key, value in batch:
            self.producer.produce(self.s.aggtrades_topic, key=key, value=value, on_delivery=delivered(kind))
        timestamped = malformed.timestamped(symbol)
        for kind, key, value, timestamp in timestamped:
            self.producer.produce(self.s.aggtrades_topic, key=key, value=value, timestamp=timestamp,
                                  on_delivery=delivered(kind))
        self.producer.flush(60)
        kinds = [k for k, _, _ in batch] + [k for k, *_ in timestamped]
        return f"{len(kinds)} malformed records ({', '.join(kinds)})"
