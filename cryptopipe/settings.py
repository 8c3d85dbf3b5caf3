"""The one typed settings place: every process reads its configuration here, from the environment and `.env`.

Defaults work for the native stack on one machine. `.env.example` documents every variable.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cryptopipe import schemas, topics

ROOT = Path(__file__).resolve().parent.parent

# Checked at load, so a value that makes no sense stops the process at start naming the variable.
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]  # a wait, timeout or interval: zero or less makes no sense
Heap = Annotated[str, Field(pattern=r"^[1-9][0-9]*[kKmMgG]?$")]  # a JVM -Xmx value


class Settings(BaseSettings):
    """Configuration of the native stack and the functions; each field is the upper-case env var."""

    # No float setting may be nan or inf.
    model_config = SettingsConfigDict(env_file=ROOT / ".env", env_file_encoding="utf-8", extra="ignore",
                                      allow_inf_nan=False)

    # Where the native stack keeps its state and logs (both gitignored).
    var_dir: Path = ROOT / "var"
    logs_dir: Path = ROOT / "logs"
    # The Flink cluster's TLS material (ops/flink_tls.py): the cluster's, so a copy of these settings with another
    # var_dir (a test's job) still reaches the same cluster.
    flink_tls_dir: Path = ROOT / "var" / "tls" / "flink"

    # Kafka (KRaft, one node) and Kafka Connect.
    kafka_host: str = "127.0.0.1"
    kafka_port: Port = 9092
    kafka_controller_port: Port = 9093
    kafka_heap: Heap = "768m"
    connect_host: str = "127.0.0.1"
    connect_port: Port = 8083
    connect_heap: Heap = "1g"
    java: str = "java"
    # Kafka asks every client for SASL/SCRAM-SHA-512 credentials, one user per component, and its ACLs give each
    # only its own topics and groups (ops/kafka_security.py). The user names are fixed; the passwords are secrets.
    # `admin` is the super user (the stack's own tools: make up, status, tests, bench); the broker also uses it
    # to reach its controller, over SASL/PLAIN, since SCRAM credentials live in the cluster's metadata.
    KAFKA_USERS: ClassVar[dict[str, str]] = {
        "admin": "admin", "source": "binance-source", "stream": "crypto-stream", "redis-sink": "redis-sink",
        "alert-notifier": "alert-notifier", "connect": "kafka-connect", "airflow": "airflow",
        # Only docker-compose runs these two: ksqlDB (the stream engine there) and the Kafka UI (read-only).
        "ksqldb": "ksqldb", "kafka-ui": "kafka-ui",
    }
    kafka_admin_password: SecretStr
    kafka_source_password: SecretStr
    kafka_stream_password: SecretStr
    kafka_redis_sink_password: SecretStr
    kafka_alert_notifier_password: SecretStr
    kafka_connect_password: SecretStr
    kafka_airflow_password: SecretStr
    kafka_ksqldb_password: SecretStr
    kafka_kafka_ui_password: SecretStr
    # Every component connects as `admin` instead of its own user: only for tests and benches that run a
    # component on topics of their own, which no component's ACLs cover.
    kafka_as_admin: bool = False
    # Kafka Connect's REST API asks for HTTP basic authentication (user connect_rest_user).
    connect_rest_user: str = Field(default="connect-admin", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    connect_rest_password: SecretStr
    # The Connect watchdog (ops/connect_watchdog.py): how often it reads the connectors' states, and the
    # backoff between restarts of one connector that keeps failing (first delay on average, longest delay).
    watchdog_interval_s: float = Field(default=5.0, gt=0, le=300)
    watchdog_backoff_s: float = Field(default=5.0, gt=0, le=3600)
    watchdog_backoff_max_s: float = Field(default=300.0, gt=0, le=86400)

    # Flink, the stream engine natively (ops/flink.py, flink/*.sql): a session cluster of one JobManager (REST API
    # and web UI on flink_port), one TaskManager and the SQL Gateway, all on 127.0.0.1.
    flink_host: str = "127.0.0.1"
    flink_port: Port = 8081
    flink_gateway_port: Port = 8082
    # Flink's web UI for people (ops/flink_ui.py): the people's login (monitoring_user), read-only.
    flink_ui_port: Port = 8086
    flink_rpc_port: Port = 6123
    flink_jobmanager_memory: Heap = "1024m"
    flink_taskmanager_memory: Heap = "1600m"
    flink_task_slots: int = Field(default=4, ge=1, le=64)
    flink_parallelism: int = Field(default=1, ge=1, le=64)
    flink_checkpoint_interval_s: float = Field(default=1.0, gt=0, le=600)
    flink_job_name: str = Field(default="crypto-stream", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    # A partition without records for this long stops holding the watermark back (an empty partition, or one read
    # to its end before a restore, would stop every window).
    flink_idle_timeout_s: int = Field(default=30, ge=1, le=3600)
    # How often the stack's `flink-job` keeper checks that the job runs.
    flink_keep_interval_s: float = Field(default=5.0, gt=0, le=300)

    # PostgreSQL: the owner role owns the schema; the writer is what Kafka Connect's sinks use; airflow is what the
    # DAGs write with; retention may only delete old trades (through one function); backfill may only insert trades
    # (kafka_reconciliation's repairs); the reader is for people and reports. The role names are fixed (db/roles.sql creates them); their passwords are generated secrets.
    PG_ROLES: ClassVar[dict[str, str]] = {"owner": "crypto", "writer": "crypto_writer", "airflow": "crypto_airflow",
                                          "retention": "crypto_retention", "backfill": "crypto_backfill",
                                          "reader": "crypto_reader", "monitor": "crypto_monitor"}
    pg_host: str = "127.0.0.1"
    pg_port: Port = 5432
    pg_database: str = "crypto"
    pg_owner_password: SecretStr
    pg_writer_password: SecretStr
    pg_airflow_password: SecretStr
    pg_retention_password: SecretStr
    pg_backfill_password: SecretStr
    pg_reader_password: SecretStr
    pg_monitor_password: SecretStr  # the PostgreSQL exporter's login: pg_monitor's statistics, no table
    # Empty: find the newest server under /usr/lib/postgresql, else on PATH.
    pg_bindir: str = ""
    # Superuser DSN for creating roles when the database is not the native cluster (docker-compose).
    pg_admin_url: SecretStr | None = None

    # Redis asks for a user and password (ACLs, ops/redis_acl.py; the default user is off): the Redis sink may write
    # price:*, candle:* and prices:*, the notifier its alert keys, the reader only read; admin is the stack's tools.
    REDIS_USERS: ClassVar[dict[str, str]] = {"admin": "admin", "redis-sink": "redis-sink",
                                             "alert-notifier": "alert-notifier", "reader": "reader",
                                             "monitor": "monitor"}
    redis_host: str = "127.0.0.1"
    redis_port: Port = 6379
    redis_admin_password: SecretStr
    redis_sink_password: SecretStr
    redis_notifier_password: SecretStr
    redis_reader_password: SecretStr
    redis_monitor_password: SecretStr  # the Redis exporter's login: INFO and PING only

    # Topics every function reads and writes; other values only to keep test runs apart.
    aggtrades_topic: str = topics.AGGTRADES
    trades_topic: str = topics.TRADES
    candles_topic: str = topics.CANDLES_1M
    stats_topic: str = topics.STATS_5M
    alerts_topic: str = topics.ALERTS
    dlq_topic_prefix: str = topics.DLQ_PREFIX

    # Binance source (functions/binance_source). Symbols: comma-separated.
    binance_base_url: str = Field(default="https://api.binance.com", pattern=r"^https?://\S+$")
    binance_symbols: str = "BTCUSDT,ETHUSDT"
    binance_weight_limit: int = Field(default=6000, gt=0)
    binance_weight_share: float = Field(default=0.8, gt=0, le=1)
    binance_weight_window_s: float = Field(default=60.0, gt=0)
    binance_page_limit: int = Field(default=1000, ge=1, le=1000)
    # Where a symbol with no history in Kafka starts: empty = now; else epoch ms or ISO-8601 time.
    binance_start_time: str = ""
    binance_connect_timeout_s: Seconds = 3.05
    binance_read_timeout_s: Seconds = 10.0
    source_min_poll_interval_s: float = Field(default=0.1, ge=0)
    source_max_poll_interval_s: Seconds = 5.0
    source_status_interval_s: Seconds = 5.0
    # websocket: live trades from Binance's aggTrade streams, REST only to backfill at start and at every seam;
    # rest: poll aggTrades per symbol (weight 4 a request, so a few dozen symbols at most stay live).
    binance_source_mode: Literal["websocket", "rest"] = "websocket"
    binance_ws_url: str = Field(default="wss://stream.binance.com:9443", pattern=r"^wss?://\S+$")
    # Binance allows 1024 streams per connection and 300 new connections per 5 minutes per IP.
    source_ws_streams_per_connection: int = Field(default=1024, ge=1, le=1024)
    source_ws_connections_per_5min: int = Field(default=240, ge=1, le=300)
    # A stream without an event this long is checked against REST; resubscribed when REST has newer trades.
    source_ws_silence_s: Seconds = 60.0

    # The stream job (flink/*.sql on Flink natively, ksql/*.sql on ksqlDB in docker-compose): the consumer group
    # Flink commits its offsets under (for lag), and the grace period, the watermark's delay.
    stream_consumer_group: str = "crypto-stream"
    stream_grace_s: int = Field(default=10, ge=0, le=3600)
    # How far ahead of this machine's clock a trade, candle or alert (and a trade's Kafka timestamp) may be before
    # every consumer refuses it (cryptopipe.schemas): the exchange's clock and ours agree within seconds, and a
    # record from further ahead would move the stream job's event time past every real trade after it. Below the
    # broker's own bound (log.message.timestamp.after.max.ms, 1 hour), so any record it takes can be judged.
    max_clock_skew_s: int = Field(default=schemas.DEFAULT_MAX_CLOCK_SKEW_S, ge=1, le=schemas.MAX_CLOCK_SKEW_LIMIT_S)
    # Alert rules: price move (high - low, % of open) in a 1-minute window; 1-minute quote volume.
    # Per-symbol overrides as SYMBOL:value,SYMBOL:value.
    alert_move_pct: float = Field(default=1.0, gt=0)
    alert_move_pct_symbols: str = ""
    alert_quote_volume: float = Field(default=5_000_000.0, gt=0)
    alert_quote_volume_symbols: str = ""

    # Redis sink function (functions/redis_sink).
    redis_sink_group: str = "crypto-redis-sink"
    redis_batch_size: int = Field(default=2000, ge=1)
    redis_history_length: int = Field(default=100, ge=1)
    redis_stale_after_s: Seconds = 60.0

    # Alert notification function (functions/alert_notifier): crypto.alerts -> a Slack-compatible webhook
    # and the log. An empty webhook URL means the log only.
    alert_notifier_group: str = "crypto-alert-notifier"
    # Static group membership: a restarted notifier takes its partition back at once instead of waiting
    # out the session timeout of its dead predecessor. Give each replica its own.
    alert_notifier_instance_id: str = "0"
    alert_webhook_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
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
    replay_port: Port = 8900
    replay_tape_dir: Path = ROOT / "data" / "binance"
    replay_speed: float = Field(default=0.0, ge=0)
    replay_shift_minutes: int = 0
    replay_weight_limit: int = Field(default=6000, gt=0)
    replay_ws_port: Port = 8901
    # Binance closes every stream connection after 24 hours; shorter here to exercise the reconnect.
    replay_ws_lifetime_s: Seconds = 86400.0
    # POST /_replay/faults (fault injection for tests) answers only requests with this bearer token.
    replay_token: SecretStr

    # make demo: how long to wait for the pipeline to catch up with the tape.
    demo_timeout_s: Seconds = 600.0

    # Airflow (api-server, scheduler, dag-processor, triggerer): metadata in the `airflow` database of the same
    # PostgreSQL, UI and REST API on airflow_host:airflow_port behind a login (user airflow_admin_user).
    airflow_host: str = "127.0.0.1"
    airflow_port: Port = 8080
    airflow_admin_user: str = "admin"
    airflow_admin_password: SecretStr
    airflow_db_password: SecretStr
    # Signs the tokens the api-server hands to task processes; every Airflow process needs the same one.
    airflow_jwt_secret: SecretStr
    # Task slots on this machine (LocalExecutor).
    airflow_parallelism: int = Field(default=4, ge=1)
    # Where crypto_reports writes its HTML reports.
    reports_dir: Path = ROOT / "reports"

    # Monitoring (ops/monitoring.py, monitoring/): Prometheus and Alertmanager behind the people's login
    # (monitoring_user); the exporters, the pipeline's own (ops/monitor.py) and the functions' metrics behind the
    # scrapers' login (user `prometheus`, metrics_password). Alertmanager's usual port, 9093, is Kafka's controller.
    prometheus_port: Port = 9090
    alertmanager_port: Port = 9095
    node_exporter_port: Port = 9100
    postgres_exporter_port: Port = 9187
    redis_exporter_port: Port = 9121
    monitor_port: Port = 9108
    # The JVMs' own metrics: the jmx_exporter java agent inside Kafka, Connect and Flink's JobManager and
    # TaskManager (rules in monitoring/jmx/), behind the scrapers' login like the exporters.
    kafka_metrics_port: Port = 9404
    connect_metrics_port: Port = 9405
    flink_jobmanager_metrics_port: Port = 9250
    flink_taskmanager_metrics_port: Port = 9251
    # Each function serves its metrics on its own port while it runs (and Prometheus finds it by a file in
    # var/monitoring/targets that the function writes at start).
    source_metrics_port: Port = 9111
    redis_sink_metrics_port: Port = 9112
    alert_notifier_metrics_port: Port = 9113
    # The address the functions and ops.monitor serve their metrics on: an IPv4 address (the server is IPv4 only).
    # Natively loopback: other accounts on this host are not trusted. docker-compose sets 0.0.0.0, the container's
    # own interfaces on the compose network, so that Prometheus (another container) can scrape; still behind the
    # scrapers' login, and published to the host on 127.0.0.1 only, like every port there.
    metrics_host: str = "127.0.0.1"
    monitoring_user: str = Field(default="operator", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    monitoring_password: SecretStr
    metrics_password: SecretStr
    # How often Prometheus scrapes and evaluates its rules; an alert fires within its `for:` plus two of these.
    scrape_interval_s: int = Field(default=10, ge=1, le=300)
    # Prometheus keeps its samples this long, or until they take this much space, whichever comes first.
    prometheus_retention_time: str = Field(default="15d", pattern=r"^[1-9][0-9]*(h|d|w|y)$")
    prometheus_retention_size: str = Field(default="1GB", pattern=r"^[1-9][0-9]*(MB|GB)$")

    # Servers that only the docker-compose twin runs: ksqlDB, Kafka UI.
    ksqldb_host: str = "127.0.0.1"
    ksqldb_port: Port = 8088
    kafka_ui_port: Port = 9000

    # Function logs: level, `text` or `json` lines, and rotation of logs/<function>.log (bytes, files kept).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_max_bytes: int = Field(default=10_000_000, ge=10_000)
    log_backups: int = Field(default=5, ge=1)

    # Readiness waits, seconds.
    start_timeout_s: float = Field(default=90.0, gt=0)

    @field_validator("binance_symbols")
    @classmethod
    def _symbols_valid(cls, value: str) -> str:
        symbols = split_symbols(value)
        bad = [s for s in symbols if not schemas.SYMBOL.match(s)]
        if not symbols or bad:
            raise ValueError(f"expected comma-separated symbols matching {schemas.SYMBOL.pattern}, got {value!r}")
        return value

    @field_validator("kafka_admin_password", "kafka_source_password", "kafka_stream_password",
                     "kafka_redis_sink_password", "kafka_alert_notifier_password", "kafka_connect_password",
                     "kafka_airflow_password", "kafka_ksqldb_password", "kafka_kafka_ui_password",
                     "connect_rest_password", "monitoring_password", "metrics_password")
    @classmethod
    def _login_quotable(cls, value: SecretStr) -> SecretStr:
        # These land inside JAAS options ("...") and SQL string literals ('...') of generated configs.
        if not re.fullmatch(r"[A-Za-z0-9._~+/=@%!^*()\[\]{},:?#-]{8,200}", value.get_secret_value()):
            raise ValueError("must be 8 to 200 characters without spaces, quotes, backslashes or ';' "
                             "(make setup generates one)")
        return value

    @field_validator("monitoring_password", "metrics_password")
    @classmethod
    def _bcrypt_hashable(cls, value: SecretStr) -> SecretStr:
        # bcrypt reads 72 bytes at most: a longer password would be checked on its first 72 only.
        if len(value.get_secret_value()) > 72:
            raise ValueError("must be at most 72 characters (bcrypt's limit)")
        return value

    @field_validator("metrics_host")
    @classmethod
    def _ipv4_address(cls, value: str) -> str:
        # An address to bind, never a name to resolve (nor anything else that would reach the server's call).
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"expected an IPv4 address such as 127.0.0.1 or 0.0.0.0, got {value!r}") from None
        return value

    @field_validator("alert_move_pct_symbols", "alert_quote_volume_symbols")
    @classmethod
    def _thresholds_valid(cls, value: str) -> str:
        parse_thresholds(value)
        return value

    @field_validator("source_max_poll_interval_s")
    @classmethod
    def _max_poll_not_below_min(cls, value: float, info: ValidationInfo) -> float:
        if value < info.data.get("source_min_poll_interval_s", 0):
            raise ValueError("must not be below SOURCE_MIN_POLL_INTERVAL_S")
        return value

    @property
    def symbols(self) -> list[str]:
        return split_symbols(self.binance_symbols)

    @property
    def max_clock_skew_ms(self) -> int:
        return self.max_clock_skew_s * 1000

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.kafka_host}:{self.kafka_port}"

    @property
    def connect_url(self) -> str:
        return f"http://{self.connect_host}:{self.connect_port}"

    @property
    def connect_auth(self) -> tuple[str, str]:
        """requests' `auth` for Kafka Connect's REST API (HTTP basic)."""
        return self.connect_rest_user, self.connect_rest_password.get_secret_value()

    # Flink's REST API and SQL Gateway take only clients holding the stack's client certificate (ops/flink_tls.py).
    @property
    def flink_url(self) -> str:
        return f"https://{self.flink_host}:{self.flink_port}"

    @property
    def flink_gateway_url(self) -> str:
        return f"https://{self.flink_host}:{self.flink_gateway_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{self.airflow_host}:{self.airflow_port}"

    @property
    def ksqldb_url(self) -> str:
        return f"http://{self.ksqldb_host}:{self.ksqldb_port}"

    def redis_url(self, user: str = "admin") -> str:
        """The URL redis-py connects with as one user of REDIS_USERS (password quoted into it)."""
        password = quote(getattr(self, f"redis_{user_field(user)}_password").get_secret_value(), safe="")
        return f"redis://{quote(self.REDIS_USERS[user], safe='')}:{password}@{self.redis_host}:{self.redis_port}/0"

    def dlq_topic(self, component: str) -> str:
        """The dead-letter topic of one component (source, stream, redis-sink, alert-notifier)."""
        return self.dlq_topic_prefix + component

    def kafka_config(self, component: str = "admin") -> dict[str, str]:
        """The client configuration every confluent-kafka client starts from: the bootstrap server and the SASL
        login of one component (a key of KAFKA_USERS)."""
        user = "admin" if self.kafka_as_admin else component
        return {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": self.KAFKA_USERS[user],
            "sasl.password": getattr(self, f"kafka_{user.replace('-', '_')}_password").get_secret_value(),
        }

    def pg_params(self, role: str = "owner") -> dict[str, object]:
        """psycopg2.connect() keywords for one of the roles in PG_ROLES."""
        return {
            "host": self.pg_host,
            "port": self.pg_port,
            "dbname": self.pg_database,
            "user": self.PG_ROLES[role],
            "password": getattr(self, f"pg_{role}_password").get_secret_value(),
            "connect_timeout": 5,
        }

    def jdbc_url(self) -> str:
        """The JDBC sinks' database URL. reWriteBatchedInserts: pgjdbc sends a batch as multi-row INSERTs."""
        return f"jdbc:postgresql://{self.pg_host}:{self.pg_port}/{self.pg_database}?reWriteBatchedInserts=true"


def user_field(user: str) -> str:
    """The middle of a Redis user's password setting: redis-sink -> sink, alert-notifier -> notifier."""
    return {"redis-sink": "sink", "alert-notifier": "notifier"}.get(user, user)


def split_symbols(text: str) -> list[str]:
    """BINANCE_SYMBOLS: 'btcusdt, ETHUSDT' -> ['BTCUSDT', 'ETHUSDT']."""
    return [s.strip().upper() for s in text.split(",") if s.strip()]


def parse_thresholds(text: str) -> dict[str, Decimal]:
    """ALERT_*_SYMBOLS: 'BTCUSDT:0.5,XRPETH:1' -> {symbol: threshold}. ValueError naming the first entry that
    is not SYMBOL:value with a symbol matching schemas.SYMBOL and a finite value above 0."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        symbol, colon, value = part.partition(":")
        symbol = symbol.strip().upper()
        try:
            threshold = Decimal(value.strip())
        except ArithmeticError:  # decimal.InvalidOperation: not a number
            threshold = Decimal("NaN")
        if not colon or not schemas.SYMBOL.match(symbol):
            raise ValueError(f"{part!r} is not SYMBOL:value with a symbol matching {schemas.SYMBOL.pattern}")
        if not threshold.is_finite() or threshold <= 0:
            raise ValueError(f"{part!r}: the threshold must be a finite number above 0")
        out[symbol] = threshold
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. A missing secret fails here, at start, naming the variable."""
    return Settings()


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def load_settings() -> Settings:
    """get_settings() for a command line: a missing or invalid variable ends the process with one clear line."""
    try:
        return get_settings()
    except ValidationError as err:
        errors = err.errors()
        problems = "; ".join(
            f"{'_'.join(str(p) for p in e['loc']).upper()}: {lower_first(e['msg'].removeprefix('Value error, '))}"
            for e in errors
        )
        fix = ("Run `make setup` (it writes .env with generated secrets) or set the variable in .env."
               if any(e["type"] == "missing" for e in errors) else "Set a valid value in .env or the environment.")
        raise SystemExit(f"error: configuration: {problems}. {fix}") from None
