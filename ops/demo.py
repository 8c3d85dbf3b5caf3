"""`make demo [TAPE=<dir>]`: the whole pipeline on recorded real Binance trades, checked end to end.

It deploys the connectors (and the ksql statements when a ksqlDB answers), serves the tape through the
replay server (event times moved to the present), runs the source, the stream function and the Redis sink
as processes (logs in logs/), shows progress until everything has landed, checks the numbers against the
tape and prints a summary. Exit 0 only when trades in = rows in `trades`, the candles equal those recomputed
from the trades, and Redis holds each symbol's last trade. Running it again is harmless: the source resumes
after what Kafka already holds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import psycopg2
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cryptopipe.run import read_status
from cryptopipe.settings import ROOT, Settings, load_settings
from ops import connectors, flink_deploy, functions_ctl, ksql_deploy, supervise
from ops.airflow import AirflowClient
from ops.kafka_admin import consumer_lag
from ops.monitoring import alert_holds, prometheus_api
from ops.process import port_open
from replay.tape import load_tapes

CHECK_SQL = ROOT / "dags" / "sql" / "candles_vs_trades.sql"


def pg(settings: Settings, sql: str, params: dict | tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(**settings.pg_params("reader"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def run(settings: Settings, tape_dir: Path, console: Console) -> int:
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    tapes = load_tapes(tape_dir)
    symbols = sorted(tapes)
    total = sum(len(t.ids) for t in tapes.values())
    console.print(f"[bold]Tape[/bold] {tape_dir}: {', '.join(symbols)} ({total:,} real trades)")

    if connectors.deploy(settings.connect_url, restart=True, console=console) != 0:
        return 1
    ksql_deploy.deploy(settings, out=console.print)
    # The stream engine: Flink's job (the stack's keeper starts it too; this waits until its tasks run).
    flink_deploy.ensure_running(settings, console.print)

    for port, var in ((settings.replay_port, "REPLAY_PORT"), (settings.replay_ws_port, "REPLAY_WS_PORT")):
        if port_open("127.0.0.1", port):
            console.print(f"[red]error: port {port} for the replay server is in use; set {var} in .env[/red]")
            return 1
    url = f"http://127.0.0.1:{settings.replay_port}"
    names = ("replay", "redis-sink", "alert-notifier", "source")
    try:
        functions_ctl.start(settings, "replay", ["--tape", str(tape_dir), "--port", str(settings.replay_port),
                                                 "--ws-port", str(settings.replay_ws_port), "--speed", "0",
                                                 "--shift-to-now"])
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", settings.replay_port):
            check_alive(settings, ["replay"])
            if time.monotonic() > deadline:
                raise RuntimeError("the replay server did not start; see logs/replay.log")
            time.sleep(0.2)
        functions_ctl.start(settings, "redis-sink")
        functions_ctl.start(settings, "alert-notifier")
        # The WebSocket mode, as live: the whole tape has happened already (speed 0), so it all comes from
        # the REST backfill, and then the streams are live.
        functions_ctl.start(settings, "source", env={
            "BINANCE_BASE_URL": url, "BINANCE_WS_URL": f"ws://127.0.0.1:{settings.replay_ws_port}",
            "BINANCE_SYMBOLS": ",".join(symbols), "BINANCE_START_TIME": "0"})
        ok = follow(settings, tapes, symbols, total, lambda: check_alive(settings, names), console)
    finally:
        for name in reversed(names):
            functions_ctl.stop(settings, name)
    if not ok:
        return 1
    dag_runs = run_dags(settings, symbols, console)
    dag_runs |= run_dags(settings, symbols, console, (RECONCILIATION,))
    failed = summary(settings, tapes, symbols, dag_runs, console)
    return failed or no_alarm(settings, started, console)


def scheduler_runs(settings: Settings, started: datetime) -> dict[str, list[str]]:
    """{dag_id: scheduled runs that failed since `started`} of the DAGs the demo runs."""
    client = AirflowClient(settings)
    out = {}
    for dag_id in (*DAGS, RECONCILIATION):
        runs = client.call("GET", f"/dags/{dag_id}/dagRuns", params={"run_type": "scheduled", "state": "failed",
                                                                     "order_by": "-run_after", "limit": 20})
        out[dag_id] = [r["dag_run_id"] for r in runs["dag_runs"]
                       if r.get("end_date") and datetime.fromisoformat(r["end_date"]) >= started]
    return out


def settled_alerts(settings: Settings, started: datetime, console: Console) -> list[dict]:
    """Prometheus' alerts once none that became active during the demo is still pending: a pending alert (its
    condition true, its `for:` not over yet) either fires or clears, and only then is known to be an alarm or not.
    Waits at most until each one's `for:` is over, plus two evaluations."""
    holds = alert_holds(settings)
    told = set()
    while True:
        alerts = prometheus_api(settings, "alerts")["alerts"]
        pending = [a for a in alerts if a["state"] == "pending" and datetime.fromisoformat(a["activeAt"]) >= started]
        due = max((datetime.fromisoformat(a["activeAt"]).timestamp() + holds.get(a["labels"]["alertname"], 0)
                   + 2 * settings.scrape_interval_s for a in pending), default=0)
        if not pending or time.time() > due:
            return alerts
        for a in pending:
            if a["labels"]["alertname"] not in told:
                told.add(a["labels"]["alertname"])
                console.print(f"[yellow]alert {a['labels']['alertname']} pending since {a['activeAt'][:19]}Z: waiting "
                              f"until it fires or clears (at most {due - time.time():.0f} s)[/yellow]")
        time.sleep(settings.scrape_interval_s)


def no_alarm(settings: Settings, started: datetime, console: Console) -> int:
    """After two rule evaluations (the demo's last state judged), no alert may have gone off during the demo:
    one would be a false alarm. Alerts already active before it are shown, not held against it. An alert pending
    (a burst of late trades while the tape is backfilled, say) is waited for: it counts if it fires."""
    time.sleep(2 * settings.scrape_interval_s)
    alerts = settled_alerts(settings, started, console)
    hourly = scheduler_runs(settings, started)
    # A run the scheduler added itself, while the demo had its DAG unpaused for the demo's own run, checks the last
    # hour, which a replayed tape leaves empty: its failure is shown, not held against the demo.
    for dag_id, run_ids in hourly.items():
        for run_id in run_ids:
            console.print(f"[yellow]Airflow's hourly run {dag_id} {run_id}, added while the demo ran the DAG, failed "
                          "(the last hour holds no live trades)[/yellow]")
    # Still pending here means it neither fired nor cleared within its `for:`: held against the demo too.
    raised = [a for a in alerts if datetime.fromisoformat(a["activeAt"]) >= started
              and not (a["labels"].get("alertname") == "AirflowDagRunFailed" and hourly.get(a["labels"].get("dag_id")))]
    for a in sorted(alerts, key=lambda a: a["activeAt"]):
        labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k not in ("alertname", "severity"))
        when = ("during the demo" if a in raised else "before the demo"
                if datetime.fromisoformat(a["activeAt"]) < started else "the scheduler's hourly run")
        console.print(f"[{'red' if a in raised else 'yellow'}]alert {a['labels'].get('alertname')} {a['state']} "
                      f"({labels}), active since {a['activeAt'][:19]}Z, {when}[/]")
    if raised:
        console.print(f"[red]demo FAILED: {len(raised)} alert(s) went off during the demo[/red]")
        return 1
    console.print(f"[green]no alert went off during the demo[/green] (Prometheus: "
                  f"http://127.0.0.1:{settings.prometheus_port}/alerts, user {settings.monitoring_user})")
    return 0


# Run together, then RECONCILIATION: it compares what the other two looked at with Kafka, so it goes last.
DAGS = ("data_quality_check", "crypto_reports")
RECONCILIATION = "kafka_reconciliation"


def run_dags(settings: Settings, symbols: list[str], console: Console, dag_ids=DAGS) -> dict[str, dict]:
    """Trigger `dag_ids` in the running Airflow, over the minutes the tape filled, and wait for them.

    A paused DAG's runs wait in the queue, so each is unpaused for its run and paused again after (the
    scheduler may add its own hourly run while it is unpaused)."""
    start, end = pg(settings, "SELECT min(window_start), max(window_start) + interval '1 minute' FROM candles_1m "
                              "WHERE symbol = ANY(%s)", (symbols,))[0]
    conf = {"start": start.isoformat(), "end": end.isoformat(), "symbols": symbols}
    client = AirflowClient(settings)
    runs: dict[str, dict] = {}
    paused = {dag_id: client.wait_for_dag(dag_id, timeout=120)["is_paused"] for dag_id in dag_ids}
    columns = (TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            for dag_id in dag_ids:
                if paused[dag_id]:
                    client.set_paused(dag_id, False)
                run_id = client.trigger(dag_id, conf)
                runs[dag_id] = {"run_id": run_id, "state": "queued",
                                "bar": progress.add_task(f"Airflow {dag_id}", total=None)}
            deadline = time.monotonic() + settings.demo_timeout_s
            while time.monotonic() < deadline and any(r["state"] not in ("success", "failed") for r in runs.values()):
                for dag_id, run in runs.items():
                    run["state"] = client.run_state(dag_id, run["run_id"])
                    run["tasks"] = client.task_states(dag_id, run["run_id"])
                    done = sum(state in ("success", "failed", "skipped", "upstream_failed")
                               for state in run["tasks"].values())
                    progress.update(run["bar"], total=len(run["tasks"]), completed=done)
                time.sleep(2)
    finally:
        for dag_id, was_paused in paused.items():
            if was_paused:
                client.set_paused(dag_id, True)
    return runs


def check_alive(settings: Settings, names) -> None:
    """Each function runs; a crash is restarted by its supervisor, a crash loop ends the demo."""
    for name in names:
        if functions_ctl.running_pid(settings, name) is None:
            raise RuntimeError(f"{name} is not running; see logs/{name}.log")
        status = functions_ctl.supervisor_status(settings, name)
        if supervise.crash_looping(status):
            raise RuntimeError(f"{name} keeps crashing ({status['restarts']} restarts, last: {status['last_exit']}); "
                               f"see logs/{name}.log and logs/{name}.out")


def follow(settings: Settings, tapes, symbols, total: int, alive, console: Console) -> bool:
    """Progress bars until trades, candles and Redis have all caught up with the tape."""
    r = redis.Redis.from_url(settings.redis_url("reader"), decode_responses=True)
    last_ids = {s: tapes[s].ids[-1] for s in symbols}
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    deadline = time.monotonic() + settings.demo_timeout_s

    def alerts_lag() -> int | None:
        return consumer_lag(settings.kafka_config(), settings.alert_notifier_group,
                            (settings.alerts_topic,), from_start=True).get(settings.alerts_topic)

    with Progress(*columns, console=console) as progress:
        produced = progress.add_task("trades produced", total=total)
        loaded = progress.add_task("rows in trades", total=total)
        candles = progress.add_task("candles in PostgreSQL", total=None)
        cached = progress.add_task("symbols in Redis", total=len(symbols))
        notified = progress.add_task("alerts handled by notifier", total=None)
        while time.monotonic() < deadline:
            alive()
            report = read_status(settings, "source") or {"symbols": {}}
            done_ids = {s: (v.get("cursor") or 0) - 1 for s, v in report["symbols"].items()}
            n_produced = sum(min(len(tapes[s].ids), max(0, done_ids.get(s, 0) - tapes[s].ids[0] + 1)) for s in symbols)
            n_rows = sum(c for _, c in pg(settings, "SELECT symbol, count(*) FROM trades WHERE symbol = ANY(%s) "
                                                    "GROUP BY symbol", (symbols,)))
            n_candles = pg(settings, "SELECT count(*) FROM candles_1m WHERE symbol = ANY(%s)", (symbols,))[0][0]
            n_cached = sum(r.hget(f"price:{s}", "agg_id") == str(last_ids[s]) for s in symbols)
            progress.update(produced, completed=n_produced)
            progress.update(loaded, completed=n_rows)
            progress.update(candles, completed=n_candles)
            progress.update(cached, completed=n_cached)
            progress.update(notified, completed=sum(notifier_outcomes(settings).values()))
            # The lag probe opens a Kafka admin client and a consumer: only once the cheap checks pass.
            if (n_rows >= total and n_cached == len(symbols) and alerts_lag() == 0
                    and not candle_problems(settings, symbols)):
                return True
            time.sleep(1)
    console.print(f"[red]error: the pipeline had not caught up after {settings.demo_timeout_s:.0f} s; "
                  "see logs/ and make status[/red]")
    return False


def notifier_outcomes(settings: Settings) -> dict[str, int]:
    """What became of each alert the notifier read (delivered, logged, suppressed, ...), from its status file."""
    return (read_status(settings, "alert-notifier") or {}).get("outcomes", {})


def candle_problems(settings: Settings, symbols: list[str]) -> list[tuple]:
    return pg(settings, CHECK_SQL.read_text(), {"symbols": symbols, "start": "-infinity", "end": "infinity"})


def summary(settings: Settings, tapes, symbols, dag_runs: dict[str, dict], console: Console) -> int:
    r = redis.Redis.from_url(settings.redis_url("reader"), decode_responses=True)
    # The quality checks, and the reconciliation's line after them.
    checks = pg(settings, "SELECT check_name, passed, detail FROM quality_results WHERE run_id = ANY(%s) "
                          "ORDER BY check_name = %s, check_name",
                ([dag_runs["data_quality_check"]["run_id"], dag_runs[RECONCILIATION]["run_id"]], RECONCILIATION))
    passed = sum(ok for _, ok, _ in checks)
    table = Table(title="Demo summary", title_justify="left")
    for col in ("symbol", "trades in tape", "rows in trades", "candles", "alerts", "last price (tape)",
                "last price (Redis)", "quality checks", "check"):
        table.add_column(col, justify="left" if col in ("symbol", "check") else "right")
    all_ok = True
    for s in symbols:
        tape = tapes[s]
        rows = pg(settings, "SELECT count(*), min(agg_id), max(agg_id) FROM trades WHERE symbol = %s", (s,))[0]
        n_candles = pg(settings, "SELECT count(*) FROM candles_1m WHERE symbol = %s", (s,))[0][0]
        n_alerts = pg(settings, "SELECT count(*) FROM alerts WHERE symbol = %s", (s,))[0][0]
        price = r.hgetall(f"price:{s}")
        last = tape.trades[-1]
        ok = (rows == (len(tape.ids), tape.ids[0], tape.ids[-1])
              and price.get("agg_id") == str(last["a"]) and Decimal(price.get("price", "0")) == Decimal(last["p"]))
        all_ok &= ok
        table.add_row(s, f"{len(tape.ids):,}", f"{rows[0]:,}", f"{n_candles:,}", str(n_alerts), last["p"],
                      price.get("price", "-"), f"{passed}/{len(checks)}", "[green]ok[/green]" if ok else "[red]MISMATCH[/red]")
    problems = candle_problems(settings, symbols)
    console.print(table)
    all_ok &= airflow_summary(settings, dag_runs, checks, console)
    if problems:
        all_ok = False
        console.print("[red]candles differ from those recomputed from trades:[/red]")
        for row in problems[:10]:
            console.print(f"  {row}")
    else:
        console.print("candles_1m equals the candles recomputed from the trades table, minute by minute.")
    outcomes = notifier_outcomes(settings)
    where = "the webhook" if settings.alert_webhook_url else "logs/alert-notifier.log (no ALERT_WEBHOOK_URL set)"
    console.print(f"Alert notifier: {', '.join(f'{k} {n:,}' for k, n in outcomes.items() if n) or 'no alerts'}"
                  f" -> {where}")
    console.print(f"Airflow UI: {settings.airflow_url} (user {settings.airflow_admin_user}, password "
                  "AIRFLOW_ADMIN_PASSWORD in .env)")
    console.print(f"Flink UI: http://127.0.0.1:{settings.flink_ui_port} (user {settings.monitoring_user}, password "
                  "MONITORING_PASSWORD in .env)")
    console.print(f"Kafka Connect REST: {settings.connect_url}/connectors?expand=status (user "
                  f"{settings.connect_rest_user}, password CONNECT_REST_PASSWORD in .env)")
    console.print(f"PostgreSQL: make psql (as crypto_reader; ROLE=owner for the owner), {settings.pg_host}:"
                  f"{settings.pg_port}/{settings.pg_database}")
    console.print(f"Redis: REDISCLI_AUTH=<REDIS_READER_PASSWORD from .env> redis-cli -p {settings.redis_port} "
                  f"--user reader hgetall price:{symbols[0]}")
    console.print("Logs: logs/source.log, logs/flink-taskmanager.log, logs/redis-sink.log, logs/alert-notifier.log, "
                  "logs/replay.log, logs/airflow/ (task logs)")
    console.print("[green]demo OK: the numbers agree end to end[/green]" if all_ok
                  else "[red]demo FAILED: the numbers do not agree[/red]")
    return 0 if all_ok else 1


def reconciliation_figures(detail: str | None) -> str:
    """kafka_reconciliation's JSON detail as one line: the trades on each side and what was done about the rest."""
    try:
        d = json.loads(detail or "")
        kafka = sum(s["kafka"] for s in d["symbols"].values())
        postgres = sum(s["postgres"] for s in d["symbols"].values())
        missing = sum(s["missing_in_kafka"]["count"] for s in d["symbols"].values())
    except (ValueError, KeyError, TypeError):
        return (detail or "")[:100]
    return (f"Kafka {kafka:,} trades, PostgreSQL {postgres:,}; repaired {d.get('repaired', 0):,}, missing in Kafka "
            f"{missing:,}, invalid {d.get('invalid', 0):,}; {d.get('retention') or 'Kafka holds the whole window'}")


def airflow_summary(settings: Settings, dag_runs: dict[str, dict], checks: list[tuple], console: Console) -> bool:
    """The DAG runs, the quality checks and the report's files; True when every run succeeded."""
    table = Table(title="Quality checks (data_quality_check and kafka_reconciliation in Airflow)", title_justify="left")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    for name, ok, detail in checks:
        shown = reconciliation_figures(detail) if name == RECONCILIATION else (detail or "")[:100]
        table.add_row(name, "[green]passed[/green]" if ok else "[red]FAILED[/red]", shown)
    console.print(table)
    reports = pg(settings, "SELECT period, path FROM reports WHERE run_id = %s ORDER BY period",
                 (dag_runs["crypto_reports"]["run_id"],))
    for period, path in reports:
        console.print(f"Report ({period}): {path}")
    for dag_id, run in dag_runs.items():
        colour = "green" if run["state"] == "success" else "red"
        console.print(f"Airflow run {dag_id} {run['run_id']}: [{colour}]{run['state']}[/{colour}] "
                      f"({settings.airflow_url}/dags/{dag_id}/runs/{run['run_id']})")
    return all(run["state"] == "success" for run in dag_runs.values()) and bool(checks) and bool(reports)


def main() -> int:
    settings = load_settings()
    tape = Path(os.environ.get("TAPE") or settings.replay_tape_dir).resolve()
    # Long paths and messages stay on one line, greppable; piped (CI, a log file), the tables get room too.
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    try:
        load_tapes(tape)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        console.print(f"[red]error: TAPE={tape}: {err}. A tape folder holds <symbol>_aggtrades*.json files, each "
                      "a list of Binance aggTrades objects in ascending id (see README).[/red]")
        return 1
    return run(settings, tape, console)


if __name__ == "__main__":
    sys.exit(main())
