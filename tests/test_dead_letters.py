"""Dead-letter triage (ops/dead_letters.py): listing, showing, redriving each record exactly once.

The unit tests need nothing (the CLI ones read .env, as every command does); the others use the stack's Kafka,
on topics of their own: a settings copy moves the functions' dead-letter topics, the ledger and binance.aggtrades
under test.<unique>."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from rich.console import Console

from cryptopipe.settings import ROOT, Settings
from cryptopipe.topics import dlq_headers
from ops import dead_letters
from ops.dead_letters import (REDRIVEN_FROM, NotADeadLetterTopic, RedriveError, Summary, newest, records_table,
                              redrive, redrive_table, summaries, summary_table)

from .helpers import cells, create_topics, read_topic

T0 = 1_617_500_000_000  # 2021-04-04, the tapes' day
LATE = ("late trade: in its candle, but its minute closed (10 s of grace) before it came, so the 5-minute "
        "statistics do not count it")


class FakeMessage:
    """What the module reads of a confluent_kafka.Message."""

    def __init__(self, value=b"v", key=None, headers=None, topic="t", partition=0, offset=0, ts=(1, T0)):
        self._value, self._key, self._headers = value, key, headers
        self._topic, self._partition, self._offset, self._ts = topic, partition, offset, ts

    def value(self):
        return self._value

    def key(self):
        return self._key

    def headers(self):
        return self._headers

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def timestamp(self):
        return self._ts


def render(table) -> str:
    console = Console(file=io.StringIO(), width=250)
    console.print(table)
    return console.file.getvalue()


# Unit tests

def test_reason_is_error_reason_or_connects_exception():
    assert dead_letters.reason_of({"error.reason": b"price 'x' is not a JSON number"}) == \
        "price 'x' is not a JSON number"
    connect = {"__connect.errors.exception.class.name": b"org.apache.kafka.connect.errors.DataException",
               "__connect.errors.exception.message": b"Converting byte[] failed:\n   bad  token",
               "__connect.errors.topic": b"crypto.trades"}
    assert dead_letters.reason_of(connect) == "DataException: Converting byte[] failed: bad token"
    long = {"__connect.errors.exception.class.name": b"x.E", "__connect.errors.exception.message": b"m" * 500}
    assert dead_letters.reason_of(long) == "E: " + "m" * 156 + "…"  # 160 characters in all
    assert dead_letters.reason_of({"error.reason": b"a\x1b[31mred"}) == "a\\x1b[31mred"
    assert dead_letters.reason_of({}) == "(no reason in the headers)"


def test_origin_from_either_header_style():
    fn = dead_letters.origin_of(dict(dlq_headers("redis-sink", "r", topic="binance.aggtrades", partition=2,
                                                 offset=17)))
    assert (fn.topic, fn.partition, fn.offset, fn.connect) == ("binance.aggtrades", 2, 17, False)
    cn = dead_letters.origin_of({"__connect.errors.topic": b"crypto.trades", "__connect.errors.partition": b"1",
                                 "__connect.errors.offset": b"x9"})
    assert (cn.topic, cn.partition, cn.offset, cn.connect) == ("crypto.trades", 1, None, True)
    source = dead_letters.origin_of(dict(dlq_headers("source", "r", symbol="BTCUSDT")))
    assert source.topic is None


def test_values_are_shown_as_text_or_escaped_bytes():
    assert dead_letters.shown(b'{"a": 1}', 50) == '{"a": 1}'
    assert dead_letters.shown("é\n".encode(), 50) == "é\\n"
    assert dead_letters.shown(b"\xff\x00ab", 50) == "\\xff\\x00ab"
    assert dead_letters.shown(None, 50) == "(null)"
    assert dead_letters.shown(b"x" * 30, 10) == "x" * 9 + "…"


def test_records_table_prints_data_not_markup_or_terminal_codes():
    msgs = [FakeMessage(value=b"[red]x[/red] [1, 2]", key=b"BTCUSDT", offset=7,
                        headers=[("error.reason", b"bad \x1b]0;title\x07"), ("error.offset", b"3")])]
    out = render(records_table("crypto.dlq.stream", msgs))
    assert "[red]x[/red] [1, 2]" in out
    assert "\x1b" not in out and "bad \\x1b]0;title\\x07" in out
    assert "error.offset: 3" in out and "0/7" in out and "2021-04-04T01:33:20.000Z" in out


def test_summary_table_rows():
    rows = [Summary("crypto.dlq.stream", 3, Counter({"not JSON": 2, "[bold]x": 1}), 1),
            Summary("crypto.dlq.source", 0), Summary("crypto.dlq.jdbc-trades", None)]
    out = render(summary_table(rows))
    assert cells(out, "crypto.dlq.stream")[0][:4] == ["crypto.dlq.stream", "3", "1", "2 × not JSON"]
    assert "1 × [bold]x" in out
    assert cells(out, "crypto.dlq.source")[0][:4] == ["crypto.dlq.source", "0", "0", "-"]
    assert cells(out, "crypto.dlq.jdbc-trades")[0][:2] == ["crypto.dlq.jdbc-trades", "missing"]


def test_only_declared_dead_letter_topics_are_accepted():
    s = Settings.model_construct()  # the defaults, no secrets needed
    for topic in ("binance.aggtrades", "crypto.dlq.redriven", "crypto.dlq.nope", ""):
        with pytest.raises(NotADeadLetterTopic) as err:
            dead_letters.check_dead_letter_topic(s, topic)
        assert "crypto.dlq.stream" in str(err.value) and "crypto.dlq.jdbc-trades" in str(err.value)
    dead_letters.check_dead_letter_topic(s, "crypto.dlq.jdbc-alerts")


def test_redrive_table_says_nothing_to_do():
    out = render(redrive_table("crypto.dlq.stream", None, dead_letters.Redrive(already=4)))
    assert "nothing to redrive" in out and cells(out, "skipped: already redriven")[0][1] == "4"


def test_make_dlq_refuses_a_topic_that_is_no_dead_letter_topic():
    # Neither command reaches Kafka: the topic is checked first.
    for args in (["dlq", "TOPIC=binance.aggtrades"], ["dlq-redrive", 'TOPIC=x"; echo injected; "', "REASON=a b"]):
        result = subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(ours) == 1 and "is not a dead-letter topic" in ours[0], result.stderr
        assert "crypto.dlq.stream" in ours[0] and "injected" not in result.stdout


def test_count_must_be_a_small_whole_number():
    for bad in ("0", "-1", "x", "10001"):
        with pytest.raises(SystemExit):
            dead_letters.parse_args(["show", "--topic", "crypto.dlq.stream", "--count", bad])
    assert dead_letters.parse_args(["show", "--topic", "t", "-n", "5"]).count == 5


# Integration tests (the stack's Kafka)

@pytest.fixture
def moved(stack, settings, unique):
    """Settings whose function dead-letter topics, ledger and aggtrades topic are the test's own, and those topics
    (the stream's and the Redis sink's dead letters, aggtrades; alert-notifier's is left missing)."""
    s = settings.model_copy(update={"dlq_topic_prefix": f"test.{unique}.dlq.",
                                    "aggtrades_topic": f"test.{unique}.aggtrades"})
    create_topics(s, s.dlq_topic("stream"), s.dlq_topic("redis-sink"), s.dlq_topic("source"), partitions=1)
    create_topics(s, s.aggtrades_topic, partitions=3)
    yield s
    admin = AdminClient(s.kafka_config())
    present = set(admin.list_topics(timeout=10).topics)
    doomed = [t for t in present if t.startswith(f"test.{unique}.")]
    for fut in admin.delete_topics(doomed).values():
        fut.result()


def produce(s, topic: str, records: list[dict]) -> list[tuple[int, int]]:
    """Write records (key, value, headers, timestamp) in order; their (partition, offset)."""
    producer = Producer({**s.kafka_config(), "partitioner": "murmur2_random", "enable.idempotence": True})
    places: list = [None] * len(records)
    for i, r in enumerate(records):
        def done(err, msg, i=i):
            assert err is None, err
            places[i] = (msg.partition(), msg.offset())
        producer.produce(topic, on_delivery=done, **r)
    assert producer.flush(30) == 0
    return places


def test_list_counts_depth_and_reasons(moved):
    s = moved
    stream, sink = s.dlq_topic("stream"), s.dlq_topic("redis-sink")
    connect = [("__connect.errors.topic", b"crypto.trades"), ("__connect.errors.partition", b"0"),
               ("__connect.errors.offset", b"5"),
               ("__connect.errors.exception.class.name", b"org.apache.kafka.connect.errors.DataException"),
               ("__connect.errors.exception.message", b"Converting byte[] to Kafka Connect data failed")]
    written = (["price 'x' is not a JSON number"] * 3 + ["not JSON: Expecting value"] * 2)
    produce(s, stream, [{"value": b"bad%d" % i, "headers": dlq_headers("stream", r, topic="t", partition=0, offset=i)}
                        for i, r in enumerate(written)] + [{"value": b"c", "headers": connect}])
    # A dead letter of an aborted transaction is no dead letter.
    tx = Producer({**s.kafka_config(), "transactional.id": f"{stream}-test"})
    tx.init_transactions(30)
    tx.begin_transaction()
    tx.produce(stream, value=b"aborted", headers=[("error.reason", b"aborted")])
    tx.flush(30)
    tx.abort_transaction(30)

    rows = {r.topic: r for r in summaries(s)}
    assert rows[stream].depth == 6
    assert rows[stream].reasons == Counter({"price 'x' is not a JSON number": 3, "not JSON: Expecting value": 2,
                                            "DataException: Converting byte[] to Kafka Connect data failed": 1})
    assert rows[stream].redriven == 0
    assert (rows[sink].depth, rows[sink].reasons) == (0, Counter())
    assert rows[s.dlq_topic("alert-notifier")].depth is None  # not created
    assert s.aggtrades_topic not in rows  # only dead-letter topics
    out = render(summary_table(list(rows.values())))
    assert cells(out, stream)[0][:4] == [stream, "6", "0", "3 × price 'x' is not a JSON number"]
    assert cells(out, sink)[0][:2] == [sink, "0"]


def test_show_gives_the_newest_records_with_headers(moved):
    s = moved
    stream = s.dlq_topic("stream")
    records = [{"key": b"BTCUSDT", "value": b'{"i": %d}' % i, "timestamp": T0 + i,
                "headers": dlq_headers("stream", f"reason {i}", topic="binance.aggtrades", partition=1, offset=i)}
               for i in range(24)] + [{"key": b"\xfe", "value": b"\xff\x00", "timestamp": T0 + 24,
                                       "headers": [("error.reason", b"binary")]}]
    produce(s, stream, records)
    msgs = newest(s, stream, 20)
    assert [m.offset() for m in msgs] == list(range(5, 25))
    assert [m.value() for m in msgs] == [r["value"] for r in records[5:]]
    out = render(records_table(stream, msgs))
    assert "error.reason: reason 23" in out and "error.offset: 23" in out and "error.topic: binance.aggtrades" in out
    assert "\\xff\\x00" in out and "\\xfe" in out
    assert "reason 4" not in out  # older than the newest 20
    assert len(newest(s, stream, 200)) == 25
    with pytest.raises(NotADeadLetterTopic) as err:
        newest(s, s.aggtrades_topic, 5)
    assert stream in str(err.value)


def redriven_by_place(s, topic: str) -> dict[str, list]:
    """The records in `topic` that a redrive wrote, by the dead letter each came from."""
    out: dict[str, list] = {}
    for m in read_topic(s, topic):
        origin = dict(m.headers() or []).get(REDRIVEN_FROM)
        if origin is not None:
            out.setdefault(origin.decode(), []).append(m)
    return out


def test_redrive_sends_each_record_back_once(moved, unique):
    s = moved
    stream, aggtrades = s.dlq_topic("stream"), s.aggtrades_topic
    elsewhere = f"test.{unique}.elsewhere"  # exists, but the pipeline does not declare it
    create_topics(s, elsewhere, partitions=1)
    originals = [{"key": sym.encode(), "value": json.dumps({"symbol": sym, "agg_id": i}).encode(),
                  "timestamp": T0 + 1000 * i} for i, sym in enumerate(["BTCUSDT", "ETHUSDT", "DOTUSDT", "XRPETH"])]
    places = produce(s, aggtrades, originals)
    started = int(time.time() * 1000)

    def fn(orig, place, reason):
        return {"key": orig["key"], "value": orig["value"],
                "headers": dlq_headers("stream", reason, topic=aggtrades, partition=place[0], offset=place[1])}

    a, b = "price 'x' is not a JSON number", "qty 0 is not positive"
    dlq = [fn(originals[0], places[0], a), fn(originals[1], places[1], b), fn(originals[2], places[2], a),
           # Connect's: the dead letter keeps the original's timestamp; its offset is not in the topic.
           {"key": b"BTCUSDT", "value": b'{"connect": 1}', "timestamp": T0 + 77_000,
            "headers": [("__connect.errors.topic", aggtrades.encode()), ("__connect.errors.partition", b"2"),
                        ("__connect.errors.offset", b"999"), ("kept", b"yes"),
                        ("__connect.errors.exception.class.name", b"org.x.DataException")]},
           # Its original is gone (no such offset): the timestamp is not known, the broker's time is taken.
           {"key": b"ETHUSDT", "value": b'{"lost": 1}',
            "headers": dlq_headers("stream", b, topic=aggtrades, partition=0, offset=10_000)},
           {"key": b"BTCUSDT", "value": b'{"late": 1}',
            "headers": dlq_headers("stream", LATE, topic=aggtrades, partition=0, offset=0)},
           {"key": b"BTCUSDT", "value": b"src", "headers": dlq_headers("stream", b, symbol="BTCUSDT")},
           {"key": b"k", "value": b"forged1", "headers": dlq_headers("stream", a, topic=elsewhere, partition=0)},
           {"key": b"k", "value": b"forged2", "headers": dlq_headers("stream", b, topic=s.dlq_topic("redis-sink"))}]
    dlq_places = [f"{stream}/{p}/{o}" for p, o in produce(s, stream, dlq)]
    eligible = {dlq_places[i]: dlq[i] for i in range(5)}
    expected_ts = {dlq_places[0]: T0, dlq_places[1]: T0 + 1000, dlq_places[2]: T0 + 2000,
                   dlq_places[3]: T0 + 77_000}
    expected_partition = {dlq_places[i]: places[i][0] for i in range(3)} | {dlq_places[3]: 2, dlq_places[4]: 0}

    first = redrive(s, stream, reason=a)
    assert first.redriven == Counter({aggtrades: 2})
    assert (first.other_reason, first.already, first.refused) == (6, 0, Counter({elsewhere: 1}))
    assert set(redriven_by_place(s, aggtrades)) == {dlq_places[0], dlq_places[2]}

    second = redrive(s, stream)
    assert second.redriven == Counter({aggtrades: 3})
    assert (second.already, second.copies, second.no_topic, second.other_reason) == (2, 1, 1, 0)
    assert second.refused == Counter({elsewhere: 1, s.dlq_topic("redis-sink"): 1})

    third = redrive(s, stream)
    assert third.total == 0 and third.already == 5
    assert "nothing to redrive" in render(redrive_table(stream, None, third))
    assert redrive(s, stream, reason=a).total == 0

    got = redriven_by_place(s, aggtrades)
    assert set(got) == set(eligible)
    for place, msgs in got.items():
        assert len(msgs) == 1, f"{place} redriven {len(msgs)} times"
        [m] = msgs
        assert (m.key(), m.value()) == (eligible[place]["key"], eligible[place]["value"])
        assert m.partition() == expected_partition[place]
        if place in expected_ts:
            assert m.timestamp()[1] == expected_ts[place]
        else:
            assert m.timestamp()[1] >= started
        assert not [k for k, _ in m.headers() if k.startswith(("error.", "__connect."))]
    assert dict(got[dlq_places[3]][0].headers())["kept"] == b"yes"
    # Nothing else reached any topic: the originals plus one copy of each eligible dead letter.
    assert len(read_topic(s, aggtrades)) == len(originals) + len(eligible)
    assert read_topic(s, elsewhere) == [] and read_topic(s, s.dlq_topic("redis-sink")) == []
    assert {r.topic: r for r in summaries(s)}[stream].redriven == 5


def test_concurrent_redrives_send_each_record_once(moved):
    s = moved
    stream, aggtrades = s.dlq_topic("stream"), s.aggtrades_topic
    n = 300
    produce(s, stream, [{"key": b"BTCUSDT", "value": b'{"n": %d}' % i,
                         "headers": dlq_headers("stream", "r", topic=aggtrades, partition=0, offset=10_000 + i)}
                        for i in range(n)])
    outcomes: list = []

    def run():
        try:
            outcomes.append(redrive(s, stream, batch=10))
        except Exception as err:  # a RedriveError (fenced by the other run) is allowed, if nothing goes twice
            outcomes.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(outcomes) == 2 and any(isinstance(o, dead_letters.Redrive) for o in outcomes), outcomes
    assert all(isinstance(o, (dead_letters.Redrive, RedriveError)) for o in outcomes), outcomes
    got = redriven_by_place(s, aggtrades)
    assert len(got) == n and all(len(msgs) == 1 for msgs in got.values())
    assert sorted(m[0].value() for m in got.values()) == sorted(b'{"n": %d}' % i for i in range(n))
    last = redrive(s, stream)
    assert last.total == 0 and last.already == n

