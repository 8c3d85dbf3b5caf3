"""The one source of truth for the fields of each topic's JSON value.

The stream function writes exactly these fields, the ksqlDB SELECTs produce exactly these columns, the
JDBC sink connectors type values with the Connect schema made here, and the PostgreSQL tables have these
columns; tests check all four against this module. Decimals are written as JSON numbers with exactly
`scale` decimals; timestamps as epoch milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # string, int64, boolean, decimal, timestamp
    scale: int | None = None
    optional: bool = False


def dec(name: str, scale: int = 8, optional: bool = False) -> Field:
    return Field(name, "decimal", scale, optional)


TRADE = (
    Field("symbol", "string"), Field("agg_id", "int64"), dec("price"), dec("qty"),
    Field("first_trade_id", "int64"), Field("last_trade_id", "int64"), Field("trade_time", "timestamp"),
    Field("is_buyer_maker", "boolean"),
)

CANDLE = (
    Field("symbol", "string"), Field("window_start", "timestamp"), Field("window_end", "timestamp"),
    dec("open"), dec("high"), dec("low"), dec("close"), dec("volume"), dec("quote_volume", 16),
    Field("trade_count", "int64"), dec("vwap"),
)

STATS = (
    Field("symbol", "string"), Field("window_start", "timestamp"), Field("window_end", "timestamp"),
    dec("open"), dec("high"), dec("low"), dec("close"), dec("volume"), Field("trade_count", "int64"),
    dec("range_pct"), dec("volatility_pct"),
)

ALERT = (
    Field("alert_id", "string"), Field("symbol", "string"), Field("rule", "string"),
    Field("window_start", "timestamp"), dec("value"), dec("threshold"), dec("price", optional=True),
    Field("detected_at", "timestamp"),
)

BY_TOPIC = {"binance.aggtrades": TRADE, "crypto.candles-1m": CANDLE, "crypto.stats-5m": STATS, "crypto.alerts": ALERT}
# The name of each topic's Connect schema in the JDBC sink connectors' `value.converter.schema.content`.
CONNECT_NAMES = {"binance.aggtrades": "crypto.trade", "crypto.candles-1m": "crypto.candle",
                 "crypto.stats-5m": "crypto.stats", "crypto.alerts": "crypto.alert"}


def names(fields: tuple[Field, ...]) -> list[str]:
    return [f.name for f in fields]


def connect_schema_of(topic: str) -> dict:
    """The Connect schema a JDBC sink connector of `topic` must carry (tests hold connectors/*.json to it)."""
    return connect_schema(BY_TOPIC[topic], CONNECT_NAMES[topic])


def connect_schema(fields: tuple[Field, ...], name: str) -> dict:
    """A Kafka Connect struct schema, for JsonConverter's `schema.content`."""
    out = []
    for f in fields:
        entry: dict = {"field": f.name, "optional": f.optional}
        if f.kind == "decimal":
            entry |= {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                      "parameters": {"scale": str(f.scale)}}
        elif f.kind == "timestamp":
            entry |= {"type": "int64", "name": "org.apache.kafka.connect.data.Timestamp", "version": 1}
        else:
            entry["type"] = f.kind
        out.append(entry)
    return {"type": "struct", "name": name, "optional": False, "fields": out}


_QUANTUM = {scale: Decimal(1).scaleb(-scale) for scale in range(0, 19)}


def to_json(fields: tuple[Field, ...], record: dict) -> bytes:
    """Serialize a record in field order; decimals with exactly their scale, as JSON numbers."""
    parts = []
    for f in fields:
        value = record[f.name]
        if value is None:
            text = "null"
        elif f.kind == "decimal":
            value = value if isinstance(value, Decimal) else Decimal(value)
            text = format(value.quantize(_QUANTUM[f.scale]), "f")
        elif f.kind == "string":
            text = json.dumps(value)
        elif f.kind == "boolean":
            text = "true" if value else "false"
        else:
            text = str(int(value))
        parts.append(f'"{f.name}":{text}')
    return ("{" + ",".join(parts) + "}").encode()
