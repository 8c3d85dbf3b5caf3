"""The Airflow connections the DAGs use, as `AIRFLOW_CONN_*` environment variables built from the settings (and
the one other variable they read, the topic kafka_reconciliation compares).

One place for every process that runs the DAGs (Airflow's services, the tests, the benchmarks), so no file
holds a password and the roles' URLs cannot drift apart.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from cryptopipe.settings import Settings

# Connection id (upper case, as Airflow reads it from the environment) -> role in Settings.PG_ROLES. The DAGs
# read as the reader, write their results as airflow, and delete old trades only through the retention role's
# one function; the owner and the sinks' writer stay out of Airflow.
CONNECTIONS = {"CRYPTO_READER": "reader", "CRYPTO_AIRFLOW": "airflow", "CRYPTO_RETENTION": "retention",
               "CRYPTO_BACKFILL": "backfill"}
# kafka_reconciliation's Kafka consumer group: it assigns partitions and never commits, but librdkafka looks the
# group's coordinator up anyway, so the `airflow` Kafka user's ACLs allow this one group.
RECONCILIATION_GROUP = "airflow-reconciliation"


def airflow_connections(settings: Settings) -> dict[str, str]:
    """{"AIRFLOW_CONN_CRYPTO_READER": "postgresql://...", ...AIRFLOW, ...RETENTION, ...BACKFILL} for the stack's
    PostgreSQL, AIRFLOW_CONN_CRYPTO_KAFKA for its Kafka, CRYPTO_AGGTRADES_TOPIC and CRYPTO_MAX_CLOCK_SKEW_S."""
    out = {}
    for conn_id, role in CONNECTIONS.items():
        p = settings.pg_params(role)
        # Generated passwords may hold any character; unquoted, '@', '/' or ':' would break the URL.
        user, password = quote(str(p["user"]), safe=""), quote(str(p["password"]), safe="")
        out[f"AIRFLOW_CONN_{conn_id}"] = f"postgresql://{user}:{password}@{p['host']}:{p['port']}/{quote(str(p['dbname']), safe='')}"
    # The Kafka provider's connection: its extra is the confluent-kafka client config, logged in as `airflow`.
    # No commits, and only committed trades: the provider's hook takes the consumer's settings from here alone.
    kafka = settings.kafka_config("airflow") | {"group.id": RECONCILIATION_GROUP, "enable.auto.commit": False,
                                                "isolation.level": "read_committed"}
    out["AIRFLOW_CONN_CRYPTO_KAFKA"] = json.dumps({"conn_type": "kafka", "extra": kafka})
    # The topic kafka_reconciliation reads (tests point a run at one of their own).
    out["CRYPTO_AGGTRADES_TOPIC"] = settings.aggtrades_topic
    # The validation contract's clock-skew bound, as every other consumer applies it.
    out["CRYPTO_MAX_CLOCK_SKEW_S"] = str(settings.max_clock_skew_s)
    return out
