"""The stream job's Java check of a trade (flink/udf CheckTrade), called from tests through its test entry point
CheckTradeCli: one JVM, records in on stdin, verdicts out, so that Python's contract and Java's see the same bytes."""

from __future__ import annotations

import base64
import shutil
import subprocess
from decimal import Decimal

import pytest

from cryptopipe.settings import get_settings
from ops.services import LIB_DIR

EIGHT = Decimal("1e-8")


class JavaContract:
    def __init__(self):
        if not (LIB_DIR / "flink-udf" / "cryptopipe-flink-udf.jar").exists():
            pytest.fail("the stream job's functions are not built: run `make setup`")
        java = shutil.which(get_settings().java) or pytest.fail("no java: run `make setup`")
        # CheckTrade is a Flink TableFunction: its classes come from the Flink jars the stack runs on.
        classpath = f"{LIB_DIR / 'flink-udf' / '*'}:{LIB_DIR / 'flink' / '*'}"
        self.proc = subprocess.Popen([java, "-Xss1m", "-cp", classpath, "cryptopipe.flink.CheckTradeCli"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8")

    def check(self, key: bytes | None, value: bytes | None, max_skew_ms: int, timestamp_ms: int | None = None,
              now: int | None = None) -> tuple:
        """("OK", symbol, agg_id, price, qty) as text, or ("INVALID", reason); a crash fails the test."""
        def b64(data):
            return "-" if data is None else base64.b64encode(data).decode()

        fields = [b64(key), b64(value), "-" if timestamp_ms is None else str(timestamp_ms), str(max_skew_ms),
                  str(now)]
        self.proc.stdin.write(" ".join(fields) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().rstrip("\n")
        assert line, f"the Java check died (exit {self.proc.poll()})"
        verdict, _, rest = line.partition(" ")
        assert verdict in ("OK", "INVALID"), f"the Java check crashed: {rest[:500]}"
        return (verdict, *rest.split(" ")) if verdict == "OK" else (verdict, rest)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


def python_verdict(trade: dict) -> tuple:
    """Python's accepted trade in the CLI's terms."""
    return ("OK", trade["symbol"], str(trade["agg_id"]), format(trade["price"].quantize(EIGHT), "f"),
            format(trade["qty"].quantize(EIGHT), "f"))
