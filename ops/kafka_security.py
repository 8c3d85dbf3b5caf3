"""Kafka's users and ACLs: one SCRAM-SHA-512 user per component, each allowed only its own topics and groups.

`make up` (and docker-compose's init, `python -m ops.kafka_security`) calls `apply()` once the broker answers, before Kafka Connect starts: it
upserts every user's credential from the settings (so a password changed in .env takes effect at the next `make up`),
adds the ACLs the components need and removes any other ACL of those users. The broker's StandardAuthorizer denies
whatever no ACL allows; `admin` is its super user.

SCRAM credentials live in the cluster's metadata, so something must log in before any exists: the broker's own
PLAIN login for `admin` (its listener config, written by ops.services.Kafka) is that one way in, used here and by the
broker itself.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from cryptopipe.settings import Settings, load_settings
from functions.binance_source.resume import RESUME_GROUP
from ops.airflow_env import RECONCILIATION_GROUP
from ops.connectors import load_configs
from ops.services import CONFIG_DIR, plain_admin_config, read_properties

SCRAM_ITERATIONS = 8192
R, W, D, C = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.CREATE
TOPIC, GROUP, TXN = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
LITERAL, PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
# Kafka's cluster resource (librdkafka calls the type BROKER; the one name it has is fixed).
CLUSTER, CLUSTER_NAME = ResourceType.BROKER, "kafka-cluster"
# docker-compose's KSQL_KSQL_SERVICE_ID, and the prefix ksqlDB puts before its internal topics and groups.
KSQL_SERVICE_ID = "crypto_"
KSQL_PREFIX = f"_confluent-ksql-{KSQL_SERVICE_ID}"


class Grant(NamedTuple):
    user: str  # a key of Settings.KAFKA_USERS
    kind: ResourceType
    name: str
    operation: AclOperation
    pattern: ResourcePatternType = LITERAL


def grants(settings: Settings) -> list[Grant]:
    """Every ACL of the components: what each reads, writes and commits, nothing else."""
    s = settings
    out: list[Grant] = []

    def topic(user: str, name: str, *ops: AclOperation) -> None:
        out.extend(Grant(user, TOPIC, name, op) for op in (D, *ops))

    # The source writes trades and its dead letters, reads its own topic back to resume after the newest trade, and
    # reads the topic's limits on a record (delivery.topic_limits).
    topic("source", s.aggtrades_topic, W, R, AclOperation.DESCRIBE_CONFIGS)
    # librdkafka looks up the coordinator of a consumer's group even when it only assigns partitions (resume.py).
    out.append(Grant("source", GROUP, RESUME_GROUP, R))
    topic("source", s.dlq_topic("source"), W)
    # The stream job (Flink) reads the trades and commits its offsets; its sinks write in transactions.
    topic("stream", s.aggtrades_topic, R)
    for name in (s.trades_topic, s.candles_topic, s.stats_topic, s.alerts_topic, s.dlq_topic("stream")):
        topic("stream", name, W)
    out.append(Grant("stream", GROUP, s.stream_consumer_group, R))
    out.extend(Grant("stream", TXN, f"{s.flink_job_name}-", op, PREFIXED) for op in (W, D))
    # The Redis sink reads the source's trades and the candles; the notifier the alerts.
    for name in (s.aggtrades_topic, s.candles_topic):
        topic("redis-sink", name, R)
    topic("redis-sink", s.dlq_topic("redis-sink"), W)
    out.append(Grant("redis-sink", GROUP, s.redis_sink_group, R))
    topic("alert-notifier", s.alerts_topic, R)
    topic("alert-notifier", s.dlq_topic("alert-notifier"), W)
    out.append(Grant("alert-notifier", GROUP, s.alert_notifier_group, R))
    # Kafka Connect: its worker's group and internal topics (created by the worker when missing), and per connector
    # its topics, its consumer group (connect-<name>) and its dead-letter topic.
    worker = read_properties(CONFIG_DIR / "connect-distributed.properties")
    out.append(Grant("connect", GROUP, worker["group.id"], R))
    for key in ("config.storage.topic", "offset.storage.topic", "status.storage.topic"):
        topic("connect", worker[key], R, W, C, AclOperation.DESCRIBE_CONFIGS)
    for name, config in load_configs().items():
        out.extend(connector_grants(name, config))
    # Airflow reads the raw trades to reconcile them with PostgreSQL (assigned partitions, never a commit; the
    # group only for librdkafka's coordinator lookup).
    topic("airflow", s.aggtrades_topic, R)
    out.append(Grant("airflow", GROUP, RECONCILIATION_GROUP, R))
    # ksqlDB (docker-compose's stream engine, service id `crypto_`, ksql/*.sql): the same input and outputs as the
    # stream job, plus what it keeps for itself under its service id: internal, command and processing-log topics,
    # consumer groups, and the broker configs it reads at start.
    topic("ksqldb", s.aggtrades_topic, R)
    for name in (s.trades_topic, s.candles_topic, s.stats_topic, s.alerts_topic, s.dlq_topic("stream")):
        topic("ksqldb", name, W)
    for kind in (TOPIC, GROUP, TXN):
        out.append(Grant("ksqldb", kind, KSQL_PREFIX, AclOperation.ALL, PREFIXED))
    out.append(Grant("ksqldb", TOPIC, KSQL_SERVICE_ID, AclOperation.ALL, PREFIXED))
    out.append(Grant("ksqldb", CLUSTER, CLUSTER_NAME, AclOperation.DESCRIBE_CONFIGS))
    # The Kafka UI (docker-compose) looks: topics, their records and configs, groups and the cluster; writes nothing.
    for op in (R, D, AclOperation.DESCRIBE_CONFIGS):
        out.append(Grant("kafka-ui", TOPIC, "*", op))
    out.append(Grant("kafka-ui", GROUP, "*", D))
    out.extend(Grant("kafka-ui", CLUSTER, CLUSTER_NAME, op) for op in (D, AclOperation.DESCRIBE_CONFIGS))
    return out


def connector_grants(name: str, config: dict) -> list[Grant]:
    """What one sink connector needs, beyond its worker: its topics, its group (connect-<name>), its dead letters."""
    topics = [(t.strip(), (R,)) for t in config["topics"].split(",")]
    if config.get("errors.deadletterqueue.topic.name"):
        topics.append((config["errors.deadletterqueue.topic.name"], (W, C)))
    return [Grant("connect", TOPIC, t, op) for t, ops in topics for op in (D, *ops)] + [
        Grant("connect", GROUP, f"connect-{name}", R)]


def grant(settings: Settings, extra: list[Grant]) -> None:
    """Adds ACLs beyond the stack's own (a connector of a test or bench on topics of its own); the next `make up`
    removes them again, or `revoke`."""
    admin = AdminClient(settings.kafka_config())  # held until the results are in: a dropped client aborts them
    for fut in admin.create_acls([binding(settings, g) for g in extra]).values():
        fut.result()


def revoke(settings: Settings, extra: list[Grant]) -> None:
    delete(AdminClient(settings.kafka_config()), [binding(settings, g) for g in extra])


def delete(admin: AdminClient, bindings) -> None:
    """Deletes exactly these ACLs (a filter naming every field matches only its own binding)."""
    filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                                b.permission_type) for b in bindings]
    for fut in admin.delete_acls(filters).values():
        fut.result()


def binding(settings: Settings, grant: Grant) -> AclBinding:
    principal = f"User:{settings.KAFKA_USERS[grant.user]}"
    return AclBinding(grant.kind, grant.name, grant.pattern, principal, "*", grant.operation, AclPermissionType.ALLOW)


def ensure_users(settings: Settings, admin: AdminClient) -> None:
    upserts = [
        UserScramCredentialUpsertion(
            name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
            settings.kafka_config(user)["sasl.password"].encode(),
        )
        for user, name in settings.KAFKA_USERS.items()
    ]
    for fut in admin.alter_user_scram_credentials(upserts).values():
        fut.result()


def ensure_acls(settings: Settings, admin: AdminClient) -> tuple[int, int]:
    """Adds the missing ACLs and deletes the users' others. Returns (added, removed)."""
    wanted = {binding(settings, g) for g in grants(settings)}
    existing: set[AclBinding] = set()
    for user, name in settings.KAFKA_USERS.items():
        if user == "admin":
            continue
        pattern = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{name}", None,
                                   AclOperation.ANY, AclPermissionType.ANY)
        existing.update(admin.describe_acls(pattern).result())
    missing, stale = wanted - existing, existing - wanted
    if missing:
        for fut in admin.create_acls(list(missing)).values():
            fut.result()
    if stale:
        delete(admin, stale)
    return len(missing), len(stale)


def apply(settings: Settings) -> str:
    """Users and ACLs as the settings want them; returns one line for `make up`."""
    admin = AdminClient(plain_admin_config(settings))
    ensure_users(settings, admin)
    added, removed = ensure_acls(settings, admin)
    return (f"{len(settings.KAFKA_USERS)} users, ACLs: {len(grants(settings))} "
            f"({added} added, {removed} removed)")


def main() -> int:
    settings = load_settings()
    print(f"  kafka      {apply(settings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
