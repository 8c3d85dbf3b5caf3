"""The one typed settings place: every process reads its configuration here, from the environment and `.env`.

Defaults work for the native stack on one machine. `.env.example` documents every variable.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cryptopipe import topics

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration of the native stack and the functions; each field is the upper-case env var."""

    model_config = SettingsConfigDict(env_file=ROOT / ".env", env_file_encoding="utf-8", extra="ignore")

    # Where the native stack keeps its state and logs (both gitignored).
    var_dir: Path = ROOT / "var"
    logs_dir: Path = ROOT / "logs"

    # Kafka (KRaft, one node) and Kafka Connect.
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "768m"
    connect_host: str = "127.0.0.1"
    connect_port: int = 8083
    connect_heap: str = "1g"
    java: str = "java"

    # PostgreSQL: the owner role owns the schema; the writer is what the sinks use; the reader is for reports.
    # The role names are fixed (db/roles.sql creates them); their passwords are settings.
    PG_ROLES: ClassVar[dict[str, str]] = {"owner": "crypto", "writer": "crypto_writer", "reader": "crypto_reader"}
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_database: str = "crypto"
    pg_owner_password: SecretStr = SecretStr("crypto")
    pg_writer_password: SecretStr
    pg_reader_password: SecretStr
    # Empty: find the newest server under /usr/lib/postgresql, else on PATH.
    pg_bindir: str = ""
    # Superuser DSN for creating roles when the database is not the native cluster (docker-compose).
    pg_admin_url: SecretStr | None = None

    # Redis.
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379

    # Topics every function reads and writes; other values only to keep test runs apart.
    aggtrades_topic: str = topics.AGGTRADES
    candles_topic: str = topics.CANDLES_1M
    stats_topic: str = topics.STATS_5M
    alerts_topic: str = topics.ALERTS
    dlq_topic_prefix: str = topics.DLQ_PREFIX

    # Binance source (functions/binance_source). Symbols: comma-separated.
    binance_base_url: str = "https://api.binance.com"
    binance_symbols: str = "BTCUSDT,ETHUSDT"
    binance_weight_limit: int = Field(default=6000, gt=0)
    binance_weight_share: float = Field(default=0.8, gt=0, le=1)
    binance_weight_window_s: float = Field(default=60.0, gt=0)
    binance_page_limit: int = Field(default=1000, ge=1, le=1000)
    # Where a symbol with no history in Kafka starts: empty = now; else epoch ms or ISO-8601 time.
    binance_start_time: str = ""
    binance_connect_timeout_s: float = 3.05
    binance_read_timeout_s: float = 10.0
    source_min_poll_interval_s: float = 0.1
    source_max_poll_interval_s: float = 5.0
    source_status_interval_s: float = 5.0

    # Stream function (functions/stream_processor): the native twin of ksql/.
    stream_consumer_group: str = "crypto-stream"
    stream_grace_s: int = Field(default=10, ge=0)
    stream_processing_guarantee: Literal["exactly-once", "at-least-once"] = "exactly-once"
    stream_commit_interval_s: float = 1.0
    # Unique per replica of the stream function (for more than one, give each its own).
    stream_instance_id: str = "0"
    # Alert rules: price move (high - low, % of open) in a 1-minute window; 1-minute quote volume.
    # Per-symbol overrides as SYMBOL:value,SYMBOL:value.
    alert_move_pct: float = 1.0
    alert_move_pct_symbols: str = ""
    alert_quote_volume: float = 5_000_000.0
    alert_quote_volume_symbols: str = ""

    # Redis sink function (functions/redis_sink).
    redis_sink_group: str = "crypto-redis-sink"
    redis_batch_size: int = Field(default=2000, ge=1)
    redis_history_length: int = Field(default=100, ge=1)
    redis_stale_after_s: float = 60.0

    # Alert notification function (functions/alert_notifier): crypto.alerts -> a Slack-compatible webhook
    # and the log. An empty webhook URL means the log only.
    alert_notifier_group: str = "crypto-alert-notifier"
    # Static group membership: a restarted notifier takes its partition back at once instead of waiting
    # out the session timeout of its dead predecessor. Give each replica its own.
    alert_notifier_instance_id: str = "0"
    alert_webhook_url: str = ""
    # One alert per symbol and rule within this many seconds of event time; 0 = no cooldown.
    alert_cooldown_s: float = Field(default=300.0, ge=0)
    alert_webhook_timeout_s: float = Field(default=5.0, gt=0)
    alert_webhook_max_attempts: int = Field(default=5, ge=1)
    # Total time one alert may spend in retries before it goes to the dead-letter topic.
    alert_webhook_deadline_s: float = Field(default=60.0, gt=0)
    alert_webhook_backoff_s: float = Field(default=0.5, gt=0)
    alert_webhook_workers: int = Field(default=2, ge=1)
    # Alerts being delivered at once; past it the consumer pauses until some are done.
    alert_max_in_flight: int = Field(default=100, ge=1)
    # Alerts whose window started longer ago than this are not sent (old history, a long outage); 0 = all.
    alert_max_age_s: float = Field(default=3600.0, ge=0)
    # How long Redis remembers a delivered alert id, so a re-emitted id is not sent again.
    alert_sent_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)
    alert_redis_prefix: str = "alert:"

    # Replay server (replay/): a local Binance on recorded tapes.
    replay_port: int = 8900
    replay_tape_dir: Path = ROOT / "data" / "binance"
    replay_speed: float = 0.0
    replay_shift_minutes: int = 0
    replay_weight_limit: int = 6000

    # make demo: how long to wait for the pipeline to catch up with the tape.
    demo_timeout_s: float = 600.0

    # Airflow (api-server, scheduler, dag-processor, triggerer): metadata in the `airflow` database of the same
    # PostgreSQL, UI and REST API on airflow_host:airflow_port behind a login (user airflow_admin_user).
    airflow_host: str = "127.0.0.1"
    airflow_port: int = 8080
    airflow_admin_user: str = "admin"
    airflow_admin_password: SecretStr
    airflow_db_password: SecretStr
    # Signs the tokens the api-server hands to task processes; every Airflow process needs the same one.
    airflow_jwt_secret: SecretStr
    # Task slots on this machine (LocalExecutor).
    airflow_parallelism: int = Field(default=4, ge=1)
    # Where crypto_reports writes its HTML reports.
    reports_dir: Path = ROOT / "reports"

    # Servers that only the docker-compose twin runs: ksqlDB, Kafka UI.
    ksqldb_host: str = "127.0.0.1"
    ksqldb_port: int = 8088
    kafka_ui_port: int = 9000

    # Function logs: level, `text` or `json` lines, and rotation of logs/<function>.log (bytes, files kept).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_max_bytes: int = Field(default=10_000_000, ge=10_000)
    log_backups: int = Field(default=5, ge=1)

    # Readiness waits, seconds.
    start_timeout_s: float = Field(default=90.0, gt=0)

    @property
    def symbols(self) -> list[str]:
        return [s.strip().upper() for s in self.binance_symbols.split(",") if s.strip()]

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.kafka_host}:{self.kafka_port}"

    @property
    def connect_url(self) -> str:
        return f"http://{self.connect_host}:{self.connect_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{self.airflow_host}:{self.airflow_port}"

    @property
    def ksqldb_url(self) -> str:
        return f"http://{self.ksqldb_host}:{self.ksqldb_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/0"

    def dlq_topic(self, component: str) -> str:
        """The dead-letter topic of one component (source, stream, redis-sink, alert-notifier)."""
        return self.dlq_topic_prefix + component

    def pg_params(self, role: str = "owner") -> dict[str, object]:
        """psycopg2.connect() keywords for one of the three roles: owner, writer or reader."""
        return {
            "host": self.pg_host,
            "port": self.pg_port,
            "dbname": self.pg_database,
            "user": self.PG_ROLES[role],
            "password": getattr(self, f"pg_{role}_password").get_secret_value(),
            "connect_timeout": 5,
        }

    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://{self.pg_host}:{self.pg_port}/{self.pg_database}"


def parse_thresholds(text: str) -> dict[str, Decimal]:
    """ALERT_*_SYMBOLS: 'BTCUSDT:0.5,XRPETH:1' -> {symbol: threshold}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        symbol, _, value = part.partition(":")
        out[symbol.strip().upper()] = Decimal(value)
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. A missing secret fails here, at start, naming the variable."""
    return Settings()


def load_settings() -> Settings:
    """get_settings() for a command line: a missing or invalid variable ends the process with one clear line."""
    try:
        return get_settings()
    except ValidationError as err:
        problems = "; ".join(
            f"{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg'].lower()}" for e in err.errors()
        )
        raise SystemExit(
            f"error: configuration: {problems}. Run `make setup` (it writes .env with generated secrets) "
            "or set the variable in .env."
        ) from None
