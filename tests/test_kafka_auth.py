"""Getting into Kafka and Kafka Connect without the right login, or past a component's ACLs, must fail.

Against the stack's broker and worker, as another account on the host would try: no credentials, wrong ones,
and each component's real login reaching for what is not its own.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ops.connectors import load_configs
from tests.helpers import wait_for


def refused_metadata(config: dict) -> str:
    """A metadata request that must fail; returns what the client reported (librdkafka's error callback)."""
    reported = []
    admin = AdminClient(config | {"socket.timeout.ms": 3000, "error_cb": reported.append})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=6)
    admin.poll(1)  # serves the error callback
    return " ".join(str(e) for e in reported)


def test_kafka_without_credentials_is_refused(stack, settings):
    for port in (settings.kafka_port, settings.kafka_controller_port):
        refused_metadata({"bootstrap.servers": f"127.0.0.1:{port}"})


def test_kafka_with_a_wrong_password_is_refused(stack, settings):
    login = settings.kafka_config("source")
    error = refused_metadata(login | {"sasl.password": login["sasl.password"] + "x"})
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in error
    # admin's PLAIN login (the broker's own, on the client and the controller listener) with a wrong password
    for port in (settings.kafka_port, settings.kafka_controller_port):
        plain = settings.kafka_config() | {"sasl.mechanism": "PLAIN", "sasl.password": "not-the-password",
                                           "bootstrap.servers": f"127.0.0.1:{port}"}
        assert "SASL authentication error: Authentication failed" in refused_metadata(plain), port


def produce_error(config: dict, topic: str) -> KafkaError | None:
    """The delivery error of one record (None: it was written)."""
    errors = []
    producer = Producer(config | {"message.timeout.ms": 10000})
    producer.produce(topic, key=b"probe", value=b"{}", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(15)
    assert len(errors) == 1
    return errors[0]


def read_error(config: dict, topic: str, group: str) -> KafkaError | None:
    """The error of reading partition 0 of `topic` from its start (None: a record or the end came), as a member of
    the component's own group (librdkafka looks its coordinator up even for assigned partitions; with the offset
    given and nothing committed, the group itself is left alone). Without DESCRIBE the topic's metadata says so
    already; with DESCRIBE but not READ, the fetch does."""
    consumer = Consumer(config | {"group.id": group, "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        if metadata.error is not None:
            return metadata.error
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is None:
                continue
            if msg.error() is None or msg.error().code() == KafkaError._PARTITION_EOF:
                return None
            return msg.error()
        raise AssertionError(f"no answer reading {topic}")
    finally:
        consumer.close()


def test_each_component_writes_only_its_own_topics(stack, settings):
    denied = KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Forged trades: every component but the source is refused on the source's topic.
    for component in ("redis-sink", "alert-notifier", "stream", "connect", "airflow"):
        err = produce_error(settings.kafka_config(component), settings.aggtrades_topic)
        assert err is not None and err.code() == denied, (component, err)
    # Forged alerts (they become Slack messages and rows): only the stream job writes them.
    for component in ("source", "redis-sink", "alert-notifier"):
        err = produce_error(settings.kafka_config(component), settings.alerts_topic)
        assert err is not None and err.code() == denied, (component, err)


def test_each_component_reads_only_its_own_topics(stack, settings):
    denied = KafkaError.TOPIC_AUTHORIZATION_FAILED
    stream, notifier = settings.stream_consumer_group, settings.alert_notifier_group
    assert read_error(settings.kafka_config("stream"), settings.aggtrades_topic, stream) is None
    assert read_error(settings.kafka_config("alert-notifier"), settings.alerts_topic, notifier) is None
    for component, topic, group in (("alert-notifier", settings.aggtrades_topic, notifier),
                                    ("stream", settings.alerts_topic, stream),
                                    ("connect", settings.aggtrades_topic, "connect-jdbc-trades"),
                                    ("redis-sink", settings.alerts_topic, settings.redis_sink_group)):
        err = read_error(settings.kafka_config(component), topic, group)
        assert err is not None and err.code() == denied, (component, topic, err)
    # A group that is not its own: the source reading as the notifier's group.
    err = read_error(settings.kafka_config("source"), settings.aggtrades_topic, notifier)
    assert err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err


def test_no_component_moves_another_ones_offsets(stack, settings):
    """The notifier setting the stream job's committed offsets (which would skip trades) is refused. Tried with a
    Consumer carrying the stream's group.id, never subscribed: no code of ours calls an AdminClient's group-offset
    requests, which crash librdkafka while a broker restarts (librdkafka #5040)."""
    answers = []
    # close() waits for the refused commit up to the session timeout: 6 s here instead of the default 45.
    consumer = Consumer({**settings.kafka_config("alert-notifier"), "group.id": settings.stream_consumer_group,
                         "enable.auto.commit": False, "session.timeout.ms": 6000,
                         "on_commit": lambda err, _: answers.append(err)})
    try:
        consumer.commit(offsets=[TopicPartition(settings.aggtrades_topic, 0, 0)], asynchronous=True)
        # The refusal comes as the commit's answer, or first as the group's coordinator lookup refused.
        deadline = time.monotonic() + 15
        while not answers and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is not None and msg.error() is not None:
                answers.append(msg.error())
    finally:
        consumer.close()
    assert answers and answers[0] is not None, answers
    assert answers[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED, answers


def test_components_cannot_create_topics_or_use_transactions_not_theirs(stack, settings):
    admin = AdminClient(settings.kafka_config("redis-sink"))
    future = admin.create_topics([NewTopic(f"test.forged-{uuid.uuid4().hex[:6]}", 1, 1)])
    with pytest.raises(KafkaException) as caught:
        next(iter(future.values())).result(15)
    assert caught.value.args[0].code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                           KafkaError.CLUSTER_AUTHORIZATION_FAILED)
    # The stream job's transactional ids are its own: the source cannot fence its transactions.
    producer = Producer(settings.kafka_config("source") | {"transactional.id": f"{settings.flink_job_name}-trades-0"})
    with pytest.raises(KafkaException) as caught:
        producer.init_transactions(15)
    assert caught.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED


def test_connect_rest_asks_for_its_login(stack, settings):
    url = f"{settings.connect_url}/connectors"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, auth=(settings.connect_rest_user, "wrong-password"), timeout=10).status_code == 401
    assert requests.post(url, json={"name": "forged", "config": {}}, timeout=10).status_code == 401
    assert requests.get(url, auth=settings.connect_auth, timeout=10).status_code == 200


def test_a_connector_may_not_override_its_login(stack, settings):
    config = load_configs()["jdbc-trades"] | {"name": "probe", "consumer.override.sasl.jaas.config": "x",
                                              "consumer.override.security.protocol": "PLAINTEXT"}
    resp = requests.put(f"{settings.connect_url}/connector-plugins/JdbcSinkConnector/config/validate",
                        json=config, auth=settings.connect_auth, timeout=30)
    errors = {c["value"]["name"]: c["value"]["errors"] for c in resp.json()["configs"] if c["value"]["errors"]}
    assert set(errors) == {"consumer.override.sasl.jaas.config", "consumer.override.security.protocol"}, errors
    # What the stack's connectors override stays allowed.
    resp = requests.put(f"{settings.connect_url}/connector-plugins/JdbcSinkConnector/config/validate",
                        json=load_configs()["jdbc-trades"] | {"name": "probe"}, auth=settings.connect_auth, timeout=30)
    assert resp.json()["error_count"] == 0, resp.text


def test_a_connector_config_reads_no_variable_outside_the_allowlist(stack, settings, unique):
    """${env:NAME} resolves only the two variables the connectors need; anything else stays as written."""
    log = settings.logs_dir / "connect.log"
    name = f"test-env-{unique}"
    config = load_configs()["jdbc-trades"] | {"connection.username": "${env:HOME}", "tasks.max": "1"}
    before = log.stat().st_size
    requests.put(f"{settings.connect_url}/connectors/{name}/config", json=config, auth=settings.connect_auth,
                 timeout=30).raise_for_status()
    try:
        def logged() -> str:
            with open(log, "rb") as f:
                f.seek(before)
                return f.read().decode(errors="replace")
        wait_for(lambda: "connection.username = " in logged(), 60, "the task's config in logs/connect.log")
        usernames = {line.split("connection.username = ", 1)[1].split()[0]
                     for line in logged().splitlines() if "connection.username = " in line}
        assert usernames == {"${env:HOME}"}
        assert "connection.url = jdbc:postgresql://" in logged()  # an allowed variable does resolve
    finally:
        requests.delete(f"{settings.connect_url}/connectors/{name}", auth=settings.connect_auth, timeout=30)
