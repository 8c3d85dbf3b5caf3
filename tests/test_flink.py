"""Flink as the stack runs it: the job found and never doubled, kept running by the stack's keeper, and its Java
check of a trade refusing exactly what cryptopipe.schemas refuses."""

from __future__ import annotations

import threading

import requests
from confluent_kafka import Producer

from chaos.malformed import records, timestamped, trade
from cryptopipe import schemas
from ops import flink_deploy, flink_tls

from .helpers import create_topics, delete_topics, read_topic, start_flink_job, wait_for

# Beyond the malformed classes of chaos.malformed: edges where a JSON parser and Python's json module could part.
EDGES = [
    ("nested", b'{"symbol":{"a":1}}'), ("repeated_field_last_wins", b'{"symbol":"BTCUSDT","symbol":"X"}'),
    ("extra_data", trade("BTCUSDT") + b" 1"), ("not_utf8", b'{"symbol":"\xff"}'),
    ("float_id", trade("BTCUSDT", agg_id="1.0")), ("zero_price", trade("BTCUSDT", price="0")),
    ("nine_decimals", trade("BTCUSDT", price="0.000000001")), ("nine_decimals_zero", trade("BTCUSDT", price="1.000000000")),
    ("eleven_digits", trade("BTCUSDT", price="12345678901")), ("ten_digits", trade("BTCUSDT", price="1234567890.5")),
    ("negative_zero_qty", trade("BTCUSDT", qty="-0.0")), ("nan", trade("BTCUSDT", price="NaN")),
    ("exponent", trade("BTCUSDT", price="1E-8")), ("tiny_exponent", trade("BTCUSDT", price="1e-999999999")),
    ("string_price", trade("BTCUSDT", price='"1.0"')), ("ids_backwards", trade("BTCUSDT").replace(
        b'"first_trade_id":1,"last_trade_id":1', b'"first_trade_id":2,"last_trade_id":1')),
    ("bom", b"\xef\xbb\xbf" + trade("BTCUSDT")), ("utf16", trade("BTCUSDT").decode().encode("utf-16-le")),
    ("overlong_utf8", trade("BTCUSDT")[:-1] + b',"x":"\xc0\xaf"}'),
    ("nan_extra", trade("BTCUSDT")[:-1] + b',"x":[NaN]}'),
    ("int_4301_digits_extra", trade("BTCUSDT")[:-1] + b',"x":' + b"9" * 4301 + b"}"),
    ("depth_101", b'{"x":' + b"[" * 100 + b"]" * 100 + b"}"),
    ("depth_100", trade("BTCUSDT", agg_id=43)[:-1] + b',"x":' + b"[" * 99 + b"]" * 99 + b"}"),
    ("lone_surrogate_name", trade("BTCUSDT", agg_id=44)[:-1] + b',"\\ud800":1}'),
    ("good", trade("BTCUSDT", agg_id=42)),
]
PAST = 1_700_000_000_000


def test_the_java_check_refuses_exactly_what_the_python_contract_refuses(settings, stack, unique, tmp_path):
    topic, valid, dlq_prefix = f"test.contract-{unique}", f"test.contract-valid-{unique}", f"test.{unique}.dlq."
    create_topics(settings, topic, valid, f"test.unused-{unique}", dlq_prefix + "stream", partitions=1)
    try:
        sent = [(name, key, value, PAST) for name, key, value in records("BTCUSDT")] + [
            (name, b"BTCUSDT", value, PAST) for name, value in EDGES] + timestamped("BTCUSDT")
        producer = Producer(settings.kafka_config())
        for _, key, value, timestamp in sent:
            producer.produce(topic, key=key, value=value, timestamp=timestamp)
        assert producer.flush(10) == 0
        refused = set()
        for offset, (name, key, value, timestamp) in enumerate(sent):
            try:
                schemas.check_trade(key, value, settings.max_clock_skew_ms, timestamp)
            except schemas.Invalid:
                refused.add(offset)
        assert 0 < len(refused) < len(sent)

        job = start_flink_job(settings, f"test-contract-{unique}", aggtrades_topic=topic, trades_topic=valid,
                              dlq_topic_prefix=dlq_prefix, stream_consumer_group=f"test-contract-{unique}",
                              candles_topic=f"test.unused-{unique}", stats_topic=f"test.unused-{unique}",
                              alerts_topic=f"test.unused-{unique}", var_dir=tmp_path / "var")
        try:
            wait_for(lambda: len(read_topic(settings, dlq_prefix + "stream", 5)) >= len(refused), 90, "dead letters")
            wait_for(lambda: len(read_topic(settings, valid, 5)) >= len(sent) - len(refused), 60, "valid trades")
        finally:
            flink_deploy.cancel(job)
        dead = read_topic(settings, dlq_prefix + "stream")
        got = {int(dict(m.headers())["error.offset"]) for m in dead}
        names = {i: name for i, (name, *_) in enumerate(sent)}
        assert {names[i] for i in got} == {names[i] for i in refused}
        assert sorted(m.value() for m in read_topic(settings, valid)) == sorted(
            value for i, (_, _, value, _) in enumerate(sent) if i not in refused)
    finally:
        delete_topics(settings, topic, valid, dlq_prefix + "stream", f"test.unused-{unique}")


def test_a_running_job_is_found_never_started_twice(settings, stack, unique, tmp_path):
    topic = f"test.once-{unique}"
    create_topics(settings, topic, partitions=1)
    job = start_flink_job(settings, f"test-once-{unique}", aggtrades_topic=topic, trades_topic=topic,
                          candles_topic=topic, stats_topic=topic, alerts_topic=topic, dlq_topic_prefix=f"test.{unique}.",
                          stream_consumer_group=f"test-once-{unique}", var_dir=tmp_path / "var")
    try:
        first = flink_deploy.running_job(job)["jid"]
        ids = []
        # Two deployments at once (the keeper and `make deploy-flink`) find the one job.
        threads = [threading.Thread(target=lambda: ids.append(flink_deploy.ensure(job, log=lambda _: None)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ids == [first, first]
        named = [j for j in flink_deploy.jobs(settings) if j["name"] == job.flink_job_name
                 and j["state"] in flink_deploy.ACTIVE]
        assert len(named) == 1
    finally:
        flink_deploy.cancel(job)
        delete_topics(settings, topic)


def test_the_keeper_starts_the_stack_job_again_from_its_checkpoint(settings, stack):
    job = flink_deploy.wait_running(settings)
    wait_for(lambda: flink_deploy.newest_checkpoint(settings) is not None, 60, "a checkpoint of the stack's job")
    flink_tls.session(settings).patch(f"{settings.flink_url}/jobs/{job}?mode=cancel", timeout=10).raise_for_status()
    # Nobody deploys it: the keeper (a service of the stack) finds it gone and starts it from its checkpoint.
    wait_for(lambda: (flink_deploy.running_job(settings) or {}).get("jid") not in (None, job), 60, "the job back")
    flink_deploy.wait_running(settings)
    log = (settings.logs_dir / "flink-job.log").read_text().splitlines()
    assert any(f"started {settings.flink_job_name} as job" in line and "restored from" in line for line in log[-20:]), log[-5:]
