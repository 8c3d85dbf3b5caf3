"""`make deploy-flink`: the stream job of flink/*.sql on the Flink session cluster, through its SQL Gateway.

    python -m ops.flink_deploy            start the job unless it runs; print a table of Flink's jobs
    python -m ops.flink_deploy --keep     the same every few seconds, for ever (the stack's `flink-job` keeper)
    python -m ops.flink_deploy --cancel   cancel the job (its checkpoints stay)
    python -m ops.flink_deploy --fresh    start it without its checkpointed state (at the offsets it committed)

The files are Jinja2 templates for the values that come from the settings (topics, grace period, alert thresholds
per symbol); everything else is plain Flink SQL. SET, CREATE and the functions run in one gateway session; every
INSERT of every file runs in one statement set, so the job reads binance.aggtrades once.

The job is found by its name (`pipeline.name`) in the JobManager's list: a running job is left alone, never
started twice. A job that is not running (the cluster was restarted after a crash: without high availability a
JobManager forgets its jobs) starts again from its newest completed checkpoint under var/flink/checkpoints/<job>,
so it resumes exactly where its last checkpoint left it; nobody has to find or type a path.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import sys
import time
from pathlib import Path

import requests
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from rich.console import Console
from rich.table import Table

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from cryptopipe.logs import setup_logging
from cryptopipe.run import read_status, write_status
from cryptopipe.settings import ROOT, Settings, load_settings
from ops import flink_tls
from ops.ksql_deploy import split_statements, threshold_case
from ops.services import Service

FLINK_DIR = ROOT / "flink"
KEEPER = "flink-job"
# Kafka's legal topic characters; the only values besides numbers that reach the SQL text.
NAME = re.compile(r"\A[A-Za-z0-9._-]{1,200}\Z")
ACTIVE = ("INITIALIZING", "CREATED", "RUNNING", "RESTARTING", "FAILING", "CANCELLING", "RECONCILING")
# Below the broker's transaction.max.timeout.ms (15 min); also how long the job may be down before the
# transactions of its last checkpoint are aborted by the broker.
TRANSACTION_TIMEOUT_MS = 900_000


class FlinkError(RuntimeError):
    """A statement the gateway refused, or a cluster that does not answer; str() says which and why."""


def interval(seconds: int) -> str:
    """A Flink SQL interval literal of whole seconds: `INTERVAL '100' SECOND` exceeds SECOND's default precision of
    2 digits, and the planner refuses a larger one (DAY_INTERVAL_TYPES precision), so minutes and seconds."""
    return f"INTERVAL '{seconds // 60}:{seconds % 60:02d}' MINUTE TO SECOND"


def values(settings: Settings) -> dict:
    names = {
        "job_name": settings.flink_job_name, "aggtrades_topic": settings.aggtrades_topic,
        "trades_topic": settings.trades_topic, "candles_topic": settings.candles_topic,
        "stats_topic": settings.stats_topic, "alerts_topic": settings.alerts_topic,
        "dlq_topic": settings.dlq_topic("stream"), "group": settings.stream_consumer_group,
    }
    for key, value in names.items():
        if not NAME.match(value):
            raise FlinkError(f"{key} {value!r} is not a Kafka name (letters, digits, '.', '_', '-')")
    login = settings.kafka_config("stream")
    return names | {
        "bootstrap": settings.kafka_bootstrap,
        "kafka_user": login["sasl.username"],
        "kafka_password": login["sasl.password"],
        "grace_s": int(settings.stream_grace_s),
        "max_clock_skew_s": int(settings.max_clock_skew_s),
        "interval": interval,
        "idle_timeout_s": int(settings.flink_idle_timeout_s),
        "parallelism": int(settings.flink_parallelism),
        "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
        "move_case": threshold_case(settings.alert_move_pct, settings.alert_move_pct_symbols),
        "volume_case": threshold_case(settings.alert_quote_volume, settings.alert_quote_volume_symbols),
    }


def render(settings: Settings) -> tuple[list[str], list[str]]:
    """(SET/CREATE statements, INSERT statements) of flink/*.sql, in file order."""
    env = Environment(loader=FileSystemLoader(FLINK_DIR), undefined=StrictUndefined, autoescape=False,
                      keep_trailing_newline=True)
    given = values(settings)
    setup, inserts = [], []
    for path in sorted(FLINK_DIR.glob("*.sql")):
        for statement in split_statements(env.get_template(path.name).render(given)):
            (inserts if statement.lstrip().upper().startswith("INSERT") else setup).append(statement)
    return setup, inserts


def checkpoint_dir(settings: Settings) -> Path:
    return settings.var_dir / "flink" / "checkpoints" / settings.flink_job_name


def newest_checkpoint(settings: Settings) -> Path | None:
    """The newest completed checkpoint of the job (any run of it): a chk-N holding _metadata."""
    done = list(checkpoint_dir(settings).glob("*/chk-*/_metadata"))
    return max(done, key=lambda p: p.stat().st_mtime).parent if done else None


class Gateway:
    """The few SQL Gateway REST calls a deployment needs: a session, statements, their results."""

    def __init__(self, settings: Settings):
        self.url = settings.flink_gateway_url
        self.http = flink_tls.session(settings)
        self.session = self.call("POST", "/v1/sessions", json={"sessionName": settings.flink_job_name,
                                                               "properties": {}})["sessionHandle"]

    def call(self, method: str, path: str, **kw) -> dict:
        resp = self.http.request(method, self.url + path, timeout=60, **kw)
        if resp.status_code >= 400:
            raise FlinkError(root_cause(resp.text))
        return resp.json() if resp.content else {}

    def run(self, statement: str, timeout: float = 120) -> list:
        """Run one statement and return its result rows (an INSERT's is its job id)."""
        op = self.call("POST", f"/v1/sessions/{self.session}/statements",
                       json={"statement": statement})["operationHandle"]
        base = f"/v1/sessions/{self.session}/operations/{op}"
        deadline = time.monotonic() + timeout
        while (status := self.call("GET", f"{base}/status")["status"]) in ("INITIALIZED", "PENDING", "RUNNING"):
            if time.monotonic() > deadline:
                raise FlinkError(f"no answer in {timeout:.0f} s to: {statement[:120]}")
            time.sleep(0.1)
        try:
            result = self.call("GET", f"/v2/sessions/{self.session}/operations/{op}/result/0?rowFormat=JSON")
        except FlinkError as err:
            raise FlinkError(f"{statement.splitlines()[0][:100]}...: {err}") from None
        if status != "FINISHED":
            raise FlinkError(f"{status}: {statement[:120]}")
        return [row.get("fields") for row in result.get("results", {}).get("data", [])]

    def close(self) -> None:
        self.http.delete(f"{self.url}/v1/sessions/{self.session}", timeout=10)


def root_cause(text: str) -> str:
    """The innermost 'Caused by' of a gateway error, which names the real problem."""
    try:
        text = "\n".join(json.loads(text).get("errors", [text]))
    except ValueError:
        pass
    causes = re.findall(r"Caused by: ([^\n]+)", text)
    return (causes[-1] if causes else text.strip().splitlines()[0] if text.strip() else "no details")[:500]


def jobs(settings: Settings) -> list[dict]:
    resp = flink_tls.session(settings).get(f"{settings.flink_url}/jobs/overview", timeout=10)
    resp.raise_for_status()
    return resp.json()["jobs"]


def running_job(settings: Settings) -> dict | None:
    return next((j for j in jobs(settings) if j["name"] == settings.flink_job_name and j["state"] in ACTIVE), None)


def submit(settings: Settings, restore: Path | None) -> str:
    """Start the job (from `restore`, a checkpoint, when given); returns its job id."""
    setup, inserts = render(settings)
    gateway = Gateway(settings)
    try:
        gateway.run(f"SET 'execution.checkpointing.dir' = '{checkpoint_dir(settings).as_uri()}'")
        if restore is not None:
            gateway.run(f"SET 'execution.state-recovery.path' = '{restore.as_uri()}'")
        for statement in setup:
            gateway.run(statement)
        body = "\n".join(s.rstrip().rstrip(";") + ";" for s in inserts)
        [[job_id]] = gateway.run(f"EXECUTE STATEMENT SET BEGIN\n{body}\nEND")
        return job_id
    finally:
        gateway.close()


def ensure(settings: Settings, log=print, fresh: bool = False) -> str:
    """The job's id, started (from its newest checkpoint, unless `fresh`) if it was not running. One deployment at
    a time per job (the keeper and `make deploy-flink` may look at once): both seeing no job must not start two."""
    checkpoint_dir(settings).mkdir(parents=True, exist_ok=True)
    with open(checkpoint_dir(settings) / ".deploy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        job = running_job(settings)
        if job is not None:
            return job["jid"]
        restore = None if fresh else newest_checkpoint(settings)
        try:
            job_id = submit(settings, restore)
        except FlinkError as err:
            if restore is None:
                raise
            # State a changed flink/*.sql cannot map. Without it the job still resumes at the offsets it committed
            # to Kafka; only windows open at that checkpoint start again empty.
            raise FlinkError(f"{err}; if flink/*.sql changed since {restore}, start the job without its state: "
                             "make deploy-flink ARGS=--fresh") from None
    log(f"started {settings.flink_job_name} as job {job_id}" + (f", restored from {restore}" if restore else ""))
    return job_id


def all_running(job: dict | None) -> bool:
    """The job runs with every task running (a restored job first deploys and restores its tasks)."""
    return job is not None and job["state"] == "RUNNING" and job["tasks"].get("running") == job["tasks"].get("total")


def wait_running(settings: Settings, timeout: float = 120) -> str:
    """The job's id once it and all its tasks run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = running_job(settings)
        if all_running(job):
            return job["jid"]
        time.sleep(0.5)
    raise FlinkError(f"{settings.flink_job_name} is not running after {timeout:.0f} s; see logs/flink-*.log")


def ensure_running(settings: Settings, log=print) -> str:
    """The job's id once it runs with all its tasks, started first if it was not running."""
    ensure(settings, log)
    return wait_running(settings)


def cancel(settings: Settings) -> None:
    job = running_job(settings)
    if job is not None:
        flink_tls.session(settings).patch(f"{settings.flink_url}/jobs/{job['jid']}?mode=cancel",
                                         timeout=10).raise_for_status()


def table(settings: Settings) -> Table:
    keeper = read_status(settings, KEEPER) or {}
    out = Table(title=f"Flink jobs on {settings.flink_url}", title_justify="left",
                caption=f"keeper: {keeper['last_error']}" if keeper.get("last_error") else None)
    for col in ("job", "id", "state", "running for", "tasks"):
        out.add_column(col)
    for j in sorted(jobs(settings), key=lambda j: -j["start-time"]):
        seconds = j["duration"] // 1000
        out.add_row(j["name"], j["jid"], j["state"], f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s",
                    f"{j['tasks'].get('running', 0)}/{j['tasks'].get('total', 0)} running")
    return out


def topics_exist(settings: Settings, admin: AdminClient) -> bool:
    names = admin.list_topics(timeout=10).topics
    return all(t in names for t in (settings.aggtrades_topic, settings.trades_topic, settings.candles_topic,
                                    settings.stats_topic, settings.alerts_topic, settings.dlq_topic("stream")))


def keep(settings: Settings) -> None:
    """Start the job whenever it is not running: after a crash of the cluster its supervisor restarts the
    processes and this resubmits the job from its newest checkpoint. Waits for the topics `make up` creates."""
    log = logging.getLogger("flink_job")
    log.info("keeping %s running on %s", settings.flink_job_name, settings.flink_url)
    report = {"resubmitted": 0, "last_error": None, "job_id": None}
    admin = AdminClient(settings.kafka_config())  # one client: librdkafka dislikes churn
    while True:
        try:
            if topics_exist(settings, admin):
                job_id = ensure(settings, log.info)
                report["resubmitted"] += job_id != report["job_id"] and report["job_id"] is not None
                report |= {"job_id": job_id, "last_error": None}
            else:
                report["last_error"] = "waiting for the topics (make up creates them)"
        except (requests.RequestException, FlinkError, KafkaException) as err:
            report["last_error"] = str(err)[:300]
            log.warning("%s not running yet: %s", settings.flink_job_name, report["last_error"])
        write_status(settings, KEEPER, {"updated_at": int(time.time() * 1000), **report})
        time.sleep(settings.flink_keep_interval_s)


class FlinkJobKeeper(Service):
    """The keeper as a service of the native stack, after the cluster: ready once it reports."""

    name, marker = KEEPER, "ops.flink_deploy"
    wait_later = True

    def start(self) -> None:
        self.spawn([sys.executable, "-m", "ops.flink_deploy", "--keep"])

    def ready(self) -> bool:
        status = read_status(self.s, KEEPER)
        return self.pid() is not None and status is not None and time.time() * 1000 - status["updated_at"] < 60_000


def main(argv: list[str]) -> int:
    settings = load_settings()
    try:
        if "--keep" in argv:
            setup_logging(settings)
            keep(settings)
        if "--cancel" in argv:
            cancel(settings)
        else:
            ensure(settings, fresh="--fresh" in argv)
        Console().print(table(settings))
    except requests.RequestException as err:
        print(f"error: no Flink cluster answers at {settings.flink_url} ({err.__class__.__name__}): run `make up`.",
              file=sys.stderr)
        return 1
    except FlinkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
