"""The Airflow connections the DAGs use, as `AIRFLOW_CONN_*` environment variables built from the settings.

One place for every process that runs the DAGs (Airflow's services, the tests, the benchmarks), so no file
holds a password and the roles' URLs cannot drift apart.
"""

from __future__ import annotations

from urllib.parse import quote

from cryptopipe.settings import Settings

# Connection id (upper case, as Airflow reads it from the environment) -> role in Settings.PG_ROLES. The DAGs
# read as the reader, write their results as airflow, and delete old trades only through the retention role's
# one function; the owner and the sinks' writer stay out of Airflow.
CONNECTIONS = {"CRYPTO_READER": "reader", "CRYPTO_AIRFLOW": "airflow", "CRYPTO_RETENTION": "retention"}


def airflow_connections(settings: Settings) -> dict[str, str]:
    """{"AIRFLOW_CONN_CRYPTO_READER": "postgresql://...", ...AIRFLOW, ...RETENTION} for the stack's PostgreSQL."""
    out = {}
    for conn_id, role in CONNECTIONS.items():
        p = settings.pg_params(role)
        # Generated passwords may hold any character; unquoted, '@', '/' or ':' would break the URL.
        user, password = quote(str(p["user"]), safe=""), quote(str(p["password"]), safe="")
        out[f"AIRFLOW_CONN_{conn_id}"] = f"postgresql://{user}:{password}@{p['host']}:{p['port']}/{quote(str(p['dbname']), safe='')}"
    return out
