"""Unit tests: settings, topic declarations and the config rendering. No services needed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal

import pytest
from pydantic import ValidationError

from cryptopipe import schemas, topics
from cryptopipe.settings import ROOT, Settings, parse_thresholds
from ops.connectors import load_configs
from ops.services import read_properties, write_properties
from tests.helpers import SECRETS



def test_defaults_are_the_native_contract(monkeypatch):
    for var in ("PG_HOST", "PG_PORT", "PG_DATABASE", "PG_OWNER_PASSWORD", "KAFKA_PORT", "CONNECT_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(_env_file=None, **SECRETS)
    params = s.pg_params("owner")
    assert (params["user"], params["password"], params["host"], params["port"], params["dbname"]) == (
        "crypto", "o", "127.0.0.1", 5432, "crypto")  # the owner's password is a secret too, no default
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.connect_url == "http://127.0.0.1:8083"
    assert s.pg_params("writer")["user"] == "crypto_writer"
    assert s.pg_params("reader")["password"] == "r"


def test_a_missing_secret_fails_naming_it(monkeypatch):
    monkeypatch.delenv("PG_WRITER_PASSWORD", raising=False)
    with pytest.raises(ValidationError, match="pg_writer_password"):
        Settings(_env_file=None, pg_reader_password="r")


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("KAFKA_PORT", "19092")
    assert Settings(_env_file=None, **SECRETS).kafka_bootstrap == "127.0.0.1:19092"


def test_env_example_documents_every_setting():
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    assert {name.upper() for name in Settings.model_fields} <= documented
    # Placeholders only: every secret in the example is `change-me`.
    for name, value in re.findall(r"^(\w*PASSWORD\w*)=(.*)$", example, flags=re.M):
        assert value == "change-me", name


DECLARED = topics.declared(Settings(**SECRETS))


def test_topic_names_follow_the_convention():
    names = [t.name for t in DECLARED]
    assert len(names) == len(set(names))
    for name in names:
        # dots between words, hyphens inside; never '_' (so never '.' and '_' mixed)
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*(\.[a-z0-9]+(-[a-z0-9]+)*)+", name), name
    assert {"binance.aggtrades", "crypto.trades", "crypto.candles-1m", "crypto.stats-5m", "crypto.alerts"} <= set(names)
    assert topics.dlq("source") in names and topics.dlq("jdbc-trades") in names


def test_a_topic_setting_moves_the_declared_topic():
    moved = topics.declared(Settings(**SECRETS, candles_topic="test.candles", dlq_topic_prefix="test.dlq."))
    names = {t.name for t in moved}
    assert "test.candles" in names and "crypto.candles-1m" not in names
    assert "test.dlq.stream" in names and "crypto.dlq.stream" not in names
    assert topics.dlq("jdbc-trades") in names  # the connectors' own, named in their files


def test_connectors_carry_the_cores_schemas_topics_and_dead_letter_topics():
    """One truth: each connector reads the core's topic for its table, and its value schema is the one
    cryptopipe/schemas.py makes for that topic. Trades come from crypto.trades, which holds only what the
    validation contract accepted (the stream function's output), never from binance.aggtrades."""
    configs = load_configs()
    assert {name: cfg["topics"] for name, cfg in configs.items()} == {
        "jdbc-trades": topics.TRADES, "jdbc-candles": topics.CANDLES_1M, "jdbc-stats": topics.STATS_5M,
        "jdbc-alerts": topics.ALERTS}
    assert {cfg["topics"] for cfg in configs.values()} <= set(schemas.BY_TOPIC)
    for name, cfg in configs.items():
        assert json.loads(cfg["value.converter.schema.content"]) == schemas.connect_schema_of(cfg["topics"]), name
        assert cfg["errors.deadletterqueue.topic.name"] == topics.dlq(name)
        assert name in topics.CONNECTOR_DLQS


def test_topic_configs_are_complete():
    for t in DECLARED:
        cfg = t.configs()
        assert int(cfg["retention.ms"]) > 0
        assert set(cfg["cleanup.policy"].split(",")) <= {"delete", "compact"}
        assert t.partitions >= 1


def test_properties_round_trip(tmp_path):
    base = read_properties(ROOT / "stack/config/kafka.properties")
    assert base["process.roles"] == "broker,controller"
    assert base["offsets.topic.replication.factor"] == "1"
    out = tmp_path / "k.properties"
    write_properties(out, base | {"log.dirs": "/x=y"})
    again = read_properties(out)
    assert again["log.dirs"] == "/x=y" and again["node.id"] == "1"


def test_connect_worker_has_single_node_storage():
    props = read_properties(ROOT / "stack/config/connect-distributed.properties")
    for kind in ("config", "offset", "status"):
        assert props[f"{kind}.storage.replication.factor"] == "1"
    assert props["config.providers.env.class"].endswith("EnvVarConfigProvider")


# ---- settings are validated at start ----------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("alert_move_pct", "nan"), ("alert_move_pct", "inf"), ("alert_quote_volume", "-inf"), ("alert_move_pct", "0"),
    ("source_max_poll_interval_s", "0"), ("source_min_poll_interval_s", "-1"), ("flink_checkpoint_interval_s", "0"),
    ("binance_read_timeout_s", "nan"), ("redis_stale_after_s", "-5"), ("source_status_interval_s", "0"),
    ("kafka_port", "0"), ("redis_port", "70000"), ("replay_speed", "-1"), ("redis_batch_size", "0"),
    ("alert_cooldown_s", "-1"), ("demo_timeout_s", "inf"), ("kafka_heap", "lots"), ("binance_symbols", ""),
    ("binance_symbols", "BTC-USD"), ("binance_base_url", "api.binance.com"), ("alert_webhook_url", "hooks"),
])
def test_a_setting_that_makes_no_sense_is_refused(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None, **SECRETS, **{field: value})


@pytest.mark.parametrize("text", ["BTCUSDT", "BTCUSDT:", "BTCUSDT:x", "BTCUSDT:nan", "BTCUSDT:inf", "BTCUSDT:0",
                                  "BTCUSDT:-1", "BTC/USDT:1", "B:1", ":1", "BTCUSDT:1,ETH USDT:2"])
def test_per_symbol_thresholds_are_checked_at_load(text):
    for field in ("alert_move_pct_symbols", "alert_quote_volume_symbols"):
        with pytest.raises(ValidationError, match=field):
            Settings(_env_file=None, **SECRETS, **{field: text})


def test_valid_per_symbol_thresholds_parse():
    s = Settings(_env_file=None, **SECRETS, alert_move_pct_symbols=" btcusdt:0.5, XRPETH:2 ,",
                 alert_quote_volume_symbols="")
    assert parse_thresholds(s.alert_move_pct_symbols) == {"BTCUSDT": Decimal("0.5"), "XRPETH": Decimal("2")}
    assert parse_thresholds(s.alert_quote_volume_symbols) == {}


def test_the_poll_interval_range_must_be_ordered():
    with pytest.raises(ValidationError, match="SOURCE_MIN_POLL_INTERVAL_S"):
        Settings(_env_file=None, **SECRETS, source_min_poll_interval_s=10, source_max_poll_interval_s=5)
    assert Settings(_env_file=None, **SECRETS, source_min_poll_interval_s=0).source_min_poll_interval_s == 0


@pytest.mark.parametrize("var, value", [("ALERT_MOVE_PCT", "nan"), ("SOURCE_MAX_POLL_INTERVAL_S", "0"),
                                        ("ALERT_MOVE_PCT_SYMBOLS", "BTCUSDT:nan"), ("CONNECT_PORT", "99999")])
def test_a_bad_setting_stops_the_process_with_one_line_naming_it(var, value):
    env = {**os.environ, **{k.upper(): v for k, v in SECRETS.items()}, var: value}
    result = subprocess.run([sys.executable, "-c", "from cryptopipe.settings import load_settings; load_settings()"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: configuration: {var}: ") and "make setup" not in lines[0], lines[0]
