"""Redis users (ops/redis_acl.py) on the stack's Redis: no way in without a password, and each user can do what
its component needs and nothing beyond its keys and commands."""

from __future__ import annotations

import logging
import stat
import time
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cryptopipe.run import Counters
from cryptopipe.settings import Settings
from functions.alert_notifier.alerts import Alert
from functions.alert_notifier.memory import Memory
from functions.redis_sink.writes import PRICE_SCRIPT, Writer
from ops import redis_acl

from .helpers import SECRETS, restart_service

# A refused login is a ConnectionError to redis-py, which it would retry with backoff: here it must fail at once.
NO_RETRY = Retry(NoBackoff(), 0)

# ---- unit tests: the file ---------------------------------------------------------------------------

def test_the_acl_file_is_private_holds_hashes_only_and_is_rewritten(tmp_path):
    path = tmp_path / "run" / "redis.acl"
    path.parent.mkdir()
    path.write_text("stale\n")
    path.chmod(0o644)
    s = Settings(_env_file=None, **SECRETS)
    redis_acl.write_acl_file(s, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.splitlines()[0].startswith("user default off ")
    for field in ("redis_admin_password", "redis_sink_password", "redis_notifier_password", "redis_reader_password",
                  "redis_monitor_password"):
        assert f" {SECRETS[field]} " not in text and f">{SECRETS[field]}" not in text
    assert text.count(" #") == len(Settings.REDIS_USERS) == 5 and "stale" not in text
    redis_acl.write_acl_file(Settings(_env_file=None, **SECRETS | {"redis_admin_password": "rotated"}), path)
    assert path.read_text() != text  # a new password is in the next start's file
    assert [p.name for p in path.parent.iterdir()] == ["redis.acl"]  # no temporary file left


# ---- against Redis ------------------------------------------------------------------------------------

def client(settings, user: str, **kwargs) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url(user), socket_timeout=5, **kwargs)


@pytest.fixture
def admin(settings):
    r = client(settings, "admin")
    try:
        r.ping()
    except redis.ConnectionError as err:
        pytest.fail(f"Redis on {settings.redis_host}:{settings.redis_port} does not answer ({err}): run `make up`")
    yield r
    r.close()


@pytest.fixture
def symbol(admin):
    """A symbol of its own; its keys are deleted afterwards."""
    name = f"ACL{uuid.uuid4().hex[:8].upper()}"
    yield name
    admin.delete(f"price:{name}", f"prices:{name}", f"candle:{name}")


def test_without_a_password_redis_refuses(settings, admin):
    anonymous = redis.Redis(host=settings.redis_host, port=settings.redis_port, socket_timeout=5, retry=NO_RETRY)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        anonymous.get("price:BTCUSDT")
    default = admin.acl_getuser("default")
    assert "off" in default["flags"] and not default["passwords"]
    with pytest.raises(redis.AuthenticationError):  # off: no password gets anyone in as `default`
        anonymous.execute_command("AUTH", "default", "")


def test_what_the_sink_wrote_survives_a_redis_restart(stack, settings, admin, symbol):
    """Redis replays its append-only file at start with the default user's rights; the sink's script writes
    (MULTI/EXEC in that file) must come back."""
    writer = Writer(client(settings, "redis-sink"), history=5)
    trade = {"symbol": symbol, "price": "2.5", "trade_time": 1_700_000_000_000, "agg_id": 9}
    assert writer.write({symbol: [trade]}, {}) == 1
    time.sleep(1.5)  # appendfsync everysec
    restart_service(stack, "redis", 0)
    reader = client(settings, "reader", decode_responses=True)
    assert reader.hget(f"price:{symbol}", "agg_id") == "9"
    assert reader.lrange(f"prices:{symbol}", 0, -1) == ["2.5@1700000000000"]


def test_a_wrong_password_is_refused(settings, admin):
    for user in settings.REDIS_USERS.values():
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=settings.redis_host, port=settings.redis_port, username=user, password="wrong",
                        socket_timeout=5, retry=NO_RETRY).ping()


def test_the_sink_writes_prices_and_candles_through_its_scripts(settings, admin, symbol):
    sink = client(settings, "redis-sink")
    subscriber = client(settings, "reader").pubsub()
    subscriber.subscribe(f"prices:{symbol}")
    assert subscriber.get_message(timeout=5)["type"] == "subscribe"
    sink.script_load(PRICE_SCRIPT)  # what redis-py does when the script cache is empty
    writer = Writer(sink, history=5)
    trade = {"symbol": symbol, "price": "1.5", "trade_time": 1_700_000_000_000, "agg_id": 7}
    candle = {"symbol": symbol, "window_start": 1_699_999_980_000, "window_end": 1_700_000_039_999, "open": "1.5",
              "high": "1.5", "low": "1.5", "close": "1.5", "volume": "2", "quote_volume": "3", "trade_count": 1,
              "vwap": "1.5"}
    assert writer.write({symbol: [trade]}, {symbol: candle}) == 1
    sink.hset(f"price:{symbol}", "stale", "1")  # the sink's staleness flag
    assert admin.hget(f"price:{symbol}", "agg_id") == b"7"
    assert admin.hget(f"candle:{symbol}", "trade_count") == b"1"
    assert admin.lrange(f"prices:{symbol}", 0, -1) == [b"1.5@1700000000000"]
    message = subscriber.get_message(timeout=5)
    assert message["type"] == "message" and b'"agg_id":7' in message["data"]
    subscriber.close()


def test_the_sink_cannot_leave_its_keys_nor_run_admin_commands(settings, admin, symbol):
    sink = client(settings, "redis-sink")
    for key in (f"{settings.alert_redis_prefix}sent:x", "other", f"pricex:{symbol}"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            sink.set(key, "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        sink.set(f"price:{symbol}", "1")  # its keys, but not a command it needs
    with pytest.raises(redis.exceptions.NoPermissionError):
        sink.publish("alerts", "x")
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("CLIENT", "LIST"), ("ACL", "LIST"),
                    ("EVAL", "return 1", "0"), ("SCRIPT", "FLUSH")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            sink.execute_command(*command)
    # A script runs with its caller's rights: it cannot reach another key either.
    with pytest.raises(redis.exceptions.NoPermissionError):
        Writer(sink, history=5).price_script(keys=[f"price:{symbol}", "other"], args=["1", "1", "1", "1", "5", "x"])
    assert not admin.exists("other", f"pricex:{symbol}")


def test_the_notifier_remembers_alerts_under_its_prefix_only(settings, admin, unique):
    prefix = f"{settings.alert_redis_prefix}test:{unique}:"
    memory = Memory(settings.model_copy(update={"alert_redis_prefix": prefix}),
                    Counters(settings, "alert-notifier", logging.getLogger("test")), lambda: False)
    alert = Alert(f"BTCUSDT:price_move:{unique}", "BTCUSDT", "price_move", 1_700_000_000_000, 1, 1, None, None)
    try:
        assert not memory.was_sent(alert)
        assert memory.cooldown_passes(alert)
        memory.release_cooldown(alert)
        assert memory.cooldown_passes(alert)
        memory.mark_sent(alert)
        assert memory.was_sent(alert)
        notifier = client(settings, "alert-notifier")
        for key in ("price:BTCUSDT", "prices:BTCUSDT", "candle:BTCUSDT", "other"):
            with pytest.raises(redis.exceptions.NoPermissionError):
                notifier.set(key, "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            notifier.get("price:BTCUSDT")
        for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                notifier.execute_command(*command)
    finally:
        for key in admin.scan_iter(f"{prefix}*"):
            admin.delete(key)


def test_the_reader_reads_and_subscribes_but_writes_nothing(settings, admin, symbol):
    admin.hset(f"price:{symbol}", mapping={"price": "2", "agg_id": "1"})
    reader = client(settings, "reader", decode_responses=True)
    assert reader.hgetall(f"price:{symbol}") == {"price": "2", "agg_id": "1"}
    assert reader.dbsize() >= 1 and f"price:{symbol}" in set(reader.scan_iter(f"price:{symbol}"))
    for write in (lambda: reader.set("other", "1"), lambda: reader.hset(f"price:{symbol}", "price", "3"),
                  lambda: reader.delete(f"price:{symbol}"), lambda: reader.publish(f"prices:{symbol}", "x"),
                  lambda: reader.flushall(), lambda: reader.keys("*"), lambda: reader.config_get("*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write()
    assert admin.hget(f"price:{symbol}", "price") == b"2" and not admin.exists("other")


def test_the_monitor_user_sees_info_and_nothing_else(settings, admin, symbol):
    """The Redis exporter's login: INFO's numbers, no key, no channel, no configuration."""
    admin.hset(f"price:{symbol}", mapping={"price": "2"})
    monitor = client(settings, "monitor", decode_responses=True)
    assert monitor.ping() is True
    assert "connected_clients" in monitor.info()
    for refused in (lambda: monitor.hgetall(f"price:{symbol}"), lambda: monitor.get("other"),
                    lambda: monitor.set("other", "1"), lambda: monitor.keys("*"), lambda: monitor.dbsize(),
                    lambda: monitor.scan(0), lambda: monitor.config_get("*"), lambda: monitor.publish("prices:x", "x"),
                    lambda: monitor.execute_command("CLIENT", "LIST"), lambda: monitor.execute_command("ACL", "LIST"),
                    lambda: monitor.flushall()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()
