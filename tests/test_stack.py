"""The native stack's commands: clear errors on misconfiguration, and up/down/status that do what they say."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cryptopipe.settings import ROOT, Settings
from ops.process import StackError, process_exists
from ops.stack import NativeStack

from .helpers import SECRETS, free_port, wait_for


# Every port setting, so a scratch stack never collides with the running one, whichever service comes next.
PORTS = tuple(name for name in Settings.model_fields if name.endswith("_port"))


def scratch_settings(tmp_path, **overrides) -> Settings:
    """Settings for a second, never-started stack: its own folders and free ports."""
    values = dict(var_dir=tmp_path / "var", logs_dir=tmp_path / "logs", **{name: free_port() for name in PORTS},
                  **SECRETS)
    return Settings(_env_file=None, **(values | overrides))


def scratch_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for field in ("var_dir", "logs_dir", *PORTS):
        env[field.upper()] = str(getattr(settings, field))
    return env


def test_a_taken_port_stops_up_with_one_message_naming_the_variable(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        settings = scratch_settings(tmp_path, redis_port=squatter.getsockname()[1])
        result = subprocess.run([sys.executable, "-m", "ops.stack", "up"], cwd=ROOT, env=scratch_env(settings),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "already in use" in lines[0] and "REDIS_PORT" in lines[0]
    # Nothing was started: no pid file, no data folder.
    assert not list((tmp_path / "var").glob("run/*.pid"))
    assert not (tmp_path / "var" / "postgres").exists()


def test_missing_java_is_named_with_the_fix(tmp_path):
    stack = NativeStack(scratch_settings(tmp_path, java="/nonexistent/bin/java"))
    with pytest.raises(StackError, match=r"Java not found \(JAVA=/nonexistent/bin/java\).*apt-get install"):
        stack.preflight()


def test_a_data_folder_from_another_postgres_version_is_kept_and_named(tmp_path):
    settings = scratch_settings(tmp_path)
    data = settings.var_dir / "postgres"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("9\n")
    (data / "base").mkdir()
    with pytest.raises(StackError, match=r"PostgreSQL 9 cluster.*Nothing was deleted.*PG_BINDIR"):
        NativeStack(settings).preflight()
    assert (data / "PG_VERSION").read_text() == "9\n" and (data / "base").is_dir()


def test_kafka_storage_is_formatted_with_a_cluster_id_that_starts_with_a_dash(tmp_path):
    # One random cluster id in 64 starts with "-"; passed as "-t ID", the tool took it for an option and `make up`
    # stopped (a CI run did).
    settings = scratch_settings(tmp_path)
    conf = tmp_path / "kafka.properties"
    data = tmp_path / "kafka-data"
    port, cport = settings.kafka_port, settings.kafka_controller_port
    conf.write_text("process.roles=broker,controller\nnode.id=1\n"
                    f"controller.quorum.voters=1@127.0.0.1:{cport}\ncontroller.listener.names=CONTROLLER\n"
                    f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\nlog.dirs={data}\n")
    cluster_id = "-" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:]
    NativeStack(settings).service("kafka").format_storage(conf, cluster_id)
    assert f"cluster.id={cluster_id}" in (data / "meta.properties").read_text().splitlines()


def make(target: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", target], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.lifecycle
def test_up_down_status_lifecycle(stack, settings, unique):
    status = make("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "all services up" in status.stdout
    pids = {svc.name: svc.pid() for svc in stack.services}
    assert all(pids.values()), pids
    cluster_id = (settings.var_dir / "kafka" / "meta.properties").read_text()

    # Data written before a restart is there after it: storage is never re-formatted.
    topic = f"test.lifecycle-{unique}"
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    producer = Producer({**settings.kafka_config(), "acks": "all"})
    producer.produce(topic, value=b"survives")
    assert producer.flush(10) == 0

    again = make("up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == len(stack.services)

    down = make("down")
    assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert not process_exists(pid), f"{name} (pid {pid}) still running after make down"
    assert not any(svc.is_up() for svc in stack.services)
    status = make("status")
    assert status.returncode != 0
    for svc in stack.services:
        assert any(svc.name in line and "down" in line for line in status.stdout.splitlines()), svc.name
    leftovers = subprocess.run(["pgrep", "-f", f"cryptopipe.service|{settings.var_dir}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
    assert make("down").returncode == 0  # harmless with nothing running

    up = make("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert (settings.var_dir / "kafka" / "meta.properties").read_text() == cluster_id
    consumer = Consumer({**settings.kafka_config(), "group.id": f"lifecycle-{unique}",
                         "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    deadline, msg = time.monotonic() + 30, None
    while msg is None and time.monotonic() < deadline:
        msg = consumer.poll(1)
    consumer.close()
    assert msg is not None and msg.value() == b"survives"
    # Up, and healthy within a minute: the Flink job's keeper resubmits the job from its checkpoint after the start.
    wait_for(lambda: make("status").returncode == 0, 90, "make status to report every part healthy", 5)
