"""`make status`: the native stack's health in readable tables; exit 1 when a service is down.

    python -m ops.status
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

import redis
import requests
from confluent_kafka import Consumer
from rich.console import Console
from rich.table import Table

from cryptopipe import topics
from cryptopipe.run import read_status
from cryptopipe.settings import Settings, load_settings
from ops import flink_deploy, functions_ctl, supervise
from ops.airflow import AirflowClient
from ops.dag_schedule import lateness
from ops.connectors import all_statuses, load_configs
from ops.db import newest_per_symbol, table_counts
from ops.kafka_admin import LagProbe, records_held
from ops.monitoring import people_login
from ops.process import StackError, tree_rss_mb
from ops.stack import NativeStack


RECENT_EXIT_S = 600  # a supervised process that exited within this shows yellow


def ago(epoch_ms: int) -> str:
    seconds = time.time() - epoch_ms / 1000
    return f"{seconds:,.0f} s ago" if seconds < 120 else f"{seconds / 60:,.0f} min ago"


def restart_cells(status: dict | None) -> tuple[str, str]:
    """Restarts and last exit from a supervisor's state: red in a crash loop, yellow after a recent exit."""
    if status is None:
        return "-", "-"
    last = f"{status['last_exit']}, {ago(status['last_exit_at'])}" if status.get("last_exit") else "-"
    if supervise.crash_looping(status):
        colour = "red"
    elif status.get("last_exit_at") and time.time() - status["last_exit_at"] / 1000 < RECENT_EXIT_S:
        colour = "yellow"
    else:
        return str(status["restarts"]), last
    return f"[{colour}]{status['restarts']}[/{colour}]", f"[{colour}]{last}[/{colour}]"


def restarts_and_last_exit(status: dict | None) -> str:
    restarts, last = restart_cells(status)
    return restarts if last == "-" else f"{restarts} (last: {last})"


def service_table(stack: NativeStack) -> tuple[Table, set[str]]:
    """The services table, and the names of the services that answered."""
    table = Table(title="Services (restarts: by its supervisor)", title_justify="left")
    for col in ("service", "state", "pid", "memory", "restarts", "address", "log"):
        table.add_column(col, justify="right" if col == "memory" else "left", no_wrap=col != "log")
    up_names, total_mb = set(), 0.0
    for svc in stack.services:
        up = svc.is_up()
        if up:
            up_names.add(svc.name)
        pid = svc.pid()
        rss = tree_rss_mb(pid) if pid else 0.0
        total_mb += rss
        table.add_row(
            svc.name,
            "[green]up[/green]" if up else "[red]down[/red]",
            str(pid or "-"),
            f"{rss:,.0f} MiB" if pid else "-",
            restarts_and_last_exit(svc.supervisor_status()),
            svc.address,
            os.path.relpath(svc.log_file),
        )
    table.add_row("[bold]total[/bold]", "", "", f"{total_mb:,.0f} MiB", "", "", "")
    return table, up_names


def topic_table(stack: NativeStack) -> Table:
    """The declared topics with their record counts; a dead-letter topic holding records shows red."""
    consumer = Consumer({**stack.s.kafka_config(), "group.id": "cryptopipe-status"})
    table = Table(title="Kafka topics (records = retained offsets)", title_justify="left")
    for col in ("topic", "partitions", "records"):
        table.add_column(col, justify="left" if col == "topic" else "right")
    declared = topics.declared(stack.s)
    try:
        present = consumer.list_topics(timeout=5).topics
        for topic in declared:
            if topic.name not in present:
                table.add_row(topic.name, "-", "[red]missing[/red]")
                continue
            parts = present[topic.name].partitions
            records = records_held(consumer, topic.name, parts)
            shown = f"{records:,}"
            if topic.dead_letter and records:
                shown = f"[red]{records:,}[/red]"
            table.add_row(topic.name, str(len(parts)), shown)
    finally:
        consumer.close()
    others = len([t for t in present if not t.startswith("_")]) - len(declared)
    if others > 0:
        table.caption = f"and {others} other topics (tests, benchmarks, internal state)"
    return table


def consumer_groups(settings: Settings) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The pipeline's consumer groups: what reads with each, and the topics it reads now (a group may still hold
    offsets of a topic it read before; those are not its lag)."""
    s = settings
    groups = {s.stream_consumer_group: ("stream", (s.aggtrades_topic,)),
              s.redis_sink_group: ("redis-sink", (s.aggtrades_topic, s.candles_topic)),
              s.alert_notifier_group: ("alert-notifier", (s.alerts_topic,))}
    # Kafka Connect names a sink connector's group connect-<connector>.
    for name, config in load_configs().items():
        groups[f"connect-{name}"] = (f"connector {name}", tuple(t.strip() for t in config["topics"].split(",")))
    return groups


def lag_table(stack: NativeStack) -> Table:
    """Per consumer group and topic: records not yet committed (end offset minus committed offset)."""
    table = Table(title="Consumer lag", title_justify="left")
    for col in ("group", "reader", "topic", "lag"):
        table.add_column(col, justify="right" if col == "lag" else "left")
    probe = LagProbe(stack.s.kafka_config())
    try:
        for group, (reader, topics) in consumer_groups(stack.s).items():
            lag = probe.lag(group, topics)
            if lag is None:
                table.add_row(group, reader, "-", "[yellow]no commits yet[/yellow]")
                continue
            for topic, n in sorted(lag.items()):
                table.add_row(group, reader, topic, f"[{'green' if n == 0 else 'yellow'}]{n:,}[/]")
    finally:
        probe.close()
    return table


def freshness_table(stack: NativeStack) -> Table:
    """Per symbol: how old the newest trade in PostgreSQL, the newest candle and the Redis price are."""
    now = time.time()

    def age(epoch_s: float | None) -> str:
        if epoch_s is None:
            return "-"
        seconds = now - epoch_s
        return f"{seconds:,.0f} s" if seconds < 3600 else f"{seconds / 3600:,.1f} h"

    rows = newest_per_symbol(stack.s, include=(read_status(stack.s, "source") or {}).get("symbols", {}))
    client = redis.Redis.from_url(stack.s.redis_url("reader"), socket_timeout=2, decode_responses=True)
    table = Table(title="Data freshness (age of the newest, event time; the symbols the source follows, then the 20 "
                  "freshest)", title_justify="left")
    for col in ("symbol", "trade in PostgreSQL", "candle in PostgreSQL", "price in Redis", "Redis stale"):
        table.add_column(col, justify="left" if col == "symbol" else "right")
    for symbol, last_trade, last_candle in rows:
        redis_t, stale = redis_price(client, symbol)
        table.add_row(symbol, age(last_trade), age(last_candle),
                      age(redis_t), {True: "[yellow]yes[/yellow]", False: "no"}.get(stale, "-"))
    return table


def redis_price(client: redis.Redis, symbol: str) -> tuple[float | None, bool | None]:
    """(event time of the symbol's price in Redis in epoch seconds, whether the sink marked it stale); None
    for what is not there."""
    price = client.hgetall(f"price:{symbol}")
    price = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in price.items()}
    when = int(price["trade_time"]) / 1000 if price.get("trade_time") else None
    return when, {"1": True, "0": False}.get(price.get("stale", ""))


def connect_tables(stack: NativeStack) -> list[Table]:
    base = stack.s.connect_url
    plugins = Table(title="Connect plugins", title_justify="left")
    plugins.add_column("class")
    plugins.add_column("type")
    plugins.add_column("version")
    for p in requests.get(f"{base}/connector-plugins", auth=stack.s.connect_auth, timeout=5).json():
        plugins.add_row(p["class"], p["type"], p.get("version", ""))
    connectors = Table(title="Connectors (restarts: by the connect watchdog)", title_justify="left")
    for col in ("connector", "state", "tasks", "restarts", "last failure"):
        connectors.add_column(col, justify="right" if col == "restarts" else "left")
    watched = (read_status(stack.s, "connect-watchdog") or {}).get("connectors", {})
    statuses = all_statuses(base, timeout=5)
    for name, st in sorted(statuses.items()):
        tasks = Counter(t["state"] for t in st.get("tasks", []))
        watch = watched.get(name, {})
        reason = watch.get("last_cause") or watch.get("last_failure")  # the root cause says more than line one
        failure = f"{reason[:90]}, {ago(watch['last_failure_at'])}" if reason else "-"
        connectors.add_row(name, st["connector"]["state"], ", ".join(f"{n} {s}" for s, n in tasks.items()) or "none",
                           str(watch.get("restarts", "-")), failure)
    if not statuses:
        connectors.add_row("(none deployed)", "", "", "", "")
    return [plugins, connectors]


def postgres_table(stack: NativeStack) -> Table:
    table = Table(title=f"PostgreSQL {stack.s.pg_database}", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in table_counts(stack.s).items():
        table.add_row(name, f"{count:,}")
    return table


def redis_table(stack: NativeStack) -> Table:
    client = redis.Redis.from_url(stack.s.redis_url("reader"), socket_timeout=2)
    prefixes = Counter(key.split(b":", 1)[0].decode(errors="replace") for key in client.scan_iter(count=1000))
    table = Table(title="Redis keys", title_justify="left")
    table.add_column("prefix")
    table.add_column("keys", justify="right")
    for prefix, count in sorted(prefixes.items()):
        table.add_row(prefix, str(count))
    table.add_row("[bold]total[/bold]", str(client.dbsize()))
    return table


def source_table(stack: NativeStack) -> Table | None:
    """The Binance source's own report (var/run/source.json), if it has run."""
    report = read_status(stack.s, "source")
    if report is None:
        return None
    age = time.time() - report["updated_at"] / 1000
    mode = report.get("mode", "rest")
    via = f"streams {report['ws_url']}, REST {report['base_url']}" if mode == "websocket" else report["base_url"]
    table = Table(title=f"Binance source, {mode} mode ({via}, report {age:.0f} s old, weight "
                        f"{report['weight_used']}/{report['weight_budget']} of limit {report['weight_limit']})",
                  title_justify="left")
    for col in ("symbol", "mode", "produced", "trades/s", "lag", "next id", "last seam", "reconnects"):
        table.add_column(col, justify="left" if col in ("symbol", "mode", "last seam") else "right")
    for symbol, v in sorted(report["symbols"].items()):
        lag = f"{v['lag_ms'] / 1000:,.1f} s" if v["lag_ms"] is not None else "-"
        seam = v.get("seam")
        seam_text = (f"at id {seam['agg_id']}: {seam['backfilled']:,} from REST ({seam['reason']})" if seam else "-")
        table.add_row(symbol, v.get("mode", "poll"), f"{v['produced']:,}", f"{v['rate_per_s']:,.1f}", lag,
                      str(v["cursor"]), seam_text, str(v.get("reconnects", "-")))
    problems = {k: n for k, n in report["counters"].items() if k != "trades_produced"}
    if problems:
        table.caption = "counters: " + ", ".join(f"{k} {n}" for k, n in sorted(problems.items()))
    return table


def function_table(stack: NativeStack) -> Table:
    """Each function's state under its supervisor (pid: the function's own), restarts and last exit."""
    table = Table(title="Functions", title_justify="left")
    for col in ("function", "state", "pid", "restarts", "last exit", "log"):
        table.add_column(col)
    for name in functions_ctl.MODULES:
        pid = functions_ctl.running_pid(stack.s, name)
        status = functions_ctl.supervisor_status(stack.s, name)
        state = "[green]running[/green]" if pid else "stopped"
        if supervise.crash_looping(status):
            state = "[red]crash loop[/red]"
        elif status and status["state"] != "running":
            state = "[yellow]restarting[/yellow]"
        shown_pid = status.get("pid") if status else pid
        table.add_row(name, state, str(shown_pid or "-"), *restart_cells(status), f"logs/{name}.log")
    return table


def airflow_table(stack: NativeStack) -> Table:
    s = stack.s
    table = Table(title=f"Airflow: {s.airflow_url} (user {s.airflow_admin_user}, password AIRFLOW_ADMIN_PASSWORD "
                        "in .env)", title_justify="left")
    for col in ("DAG", "paused", "schedule", "last run", "state", "late"):
        table.add_column(col)
    client = AirflowClient(s)
    dags = client.call("GET", "/dags")["dags"]
    for dag in sorted(dags, key=lambda d: d["dag_id"]):
        runs = client.call("GET", f"/dags/{dag['dag_id']}/dagRuns",
                           params={"order_by": "-run_after", "limit": 1}).get("dag_runs", [])
        last = runs[0] if runs else {}
        state = last.get("state", "-")
        colour = {"success": "green", "failed": "red"}.get(state, "yellow")
        late = lateness(dag)
        table.add_row(dag["dag_id"], "yes" if dag["is_paused"] else "no", str(dag.get("timetable_summary") or "-"),
                      str(last.get("run_after") or "-")[:19], f"[{colour}]{state}[/{colour}]" if last else "-",
                      f"[red]{late}[/red]" if late.startswith("yes") else late)
    if not dags:
        table.add_row("(no DAG parsed yet)", "", "", "", "", "")
    return table


def alerts_table(stack: NativeStack) -> Table:
    """The alerts Alertmanager holds firing now, as it pages them: silenced and inhibited ones counted apart."""
    resp = requests.get(f"http://127.0.0.1:{stack.s.alertmanager_port}/api/v2/alerts", params={"active": "true"},
                        auth=people_login(stack.s), timeout=5)
    resp.raise_for_status()
    alerts = resp.json()
    paging = [a for a in alerts if a["status"]["state"] == "active"]
    table = Table(title=f"Alerts firing ({len(paging)}; Prometheus on 127.0.0.1:{stack.s.prometheus_port}, "
                        "logs/alerts.log)", title_justify="left")
    for col in ("alert", "severity", "where", "since", "summary"):
        table.add_column(col)
    colour = {"critical": "red", "warning": "yellow"}
    for a in sorted(paging, key=lambda a: (a["labels"].get("severity") != "critical", a["startsAt"])):
        labels = dict(a["labels"])
        name, severity = labels.pop("alertname", "?"), labels.pop("severity", "?")
        where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        table.add_row(name, f"[{colour.get(severity, 'white')}]{severity}[/]", where, a["startsAt"][:19] + "Z",
                      a["annotations"].get("summary", ""))
    if not paging:
        table.add_row("[green]none[/green]", "", "", "", "")
    held = len(alerts) - len(paging)
    if held:
        table.caption = f"and {held} silenced or inhibited (their cause pages instead)"
    return table


def print_status(stack: NativeStack) -> int:
    console = Console(width=None if sys.stdout.isatty() else 160)  # piped, the tables still get room
    services, up = service_table(stack)
    all_up = len(up) == len(stack.services)
    console.print(services)
    console.print(function_table(stack))
    sections = [
        ("kafka", lambda: [topic_table(stack), lag_table(stack)]),
        ("connect", lambda: connect_tables(stack)),
        ("flink-jobmanager", lambda: [flink_deploy.table(stack.s)]),
        ("postgres", lambda: [postgres_table(stack)]),
        ("redis", lambda: [redis_table(stack)]),
        ("postgres", lambda: [freshness_table(stack)]),
        ("airflow-api", lambda: [airflow_table(stack)]),
        ("kafka", lambda: [t for t in [source_table(stack)] if t is not None]),
        ("alertmanager", lambda: [alerts_table(stack)]),
    ]
    for name, build in sections:
        if name not in up:
            continue
        try:
            for table in build():
                console.print(table)
        except Exception as err:  # a section that cannot be read is reported, the others still print
            console.print(f"[red]{name}: {err}[/red]")
            all_up = False
    console.print("[green]all services up[/green]" if all_up else "[red]some services are down[/red]")
    return 0 if all_up else 1


def main() -> int:
    try:
        return print_status(NativeStack(load_settings()))
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
