"""`make chaos`: the whole pipeline on a live replay while faults hit it, then every promise checked.

    python -m chaos [--seed N] [--minutes M] [--symbols K]

The replay server plays a generated multi-symbol tape (real XRPETH trades) at live speed; the source, stream,
Redis sink and alert notifier run under their supervisors (`make start`), Kafka, Connect and the JDBC sinks
as `make up` left them. It writes bursts of every class of malformed record to binance.aggtrades, then at random
moments and in random order SIGKILLs every function, Kafka, Connect and Flink, then stops PostgreSQL and Redis
for 85 s each; after each fault it waits until the pipeline is caught up again and times that, and notes the
alert Prometheus raised for it (chaos/alerts.py): fired within the rule's `for:` plus two scrape intervals (three
for a dead-letter burst), resolved after recovery. Nobody restarts anything: only the supervisors do. At the end,
against an oracle made from the tape alone: every trade exactly once in Kafka and in `trades`, `candles_1m` equal
to the tape's candles, each symbol's last price in Redis, the 5-minute statistics, the dead-letter topics holding
exactly the malformed records, no alert delivered twice.
Prints a table and writes chaos-results.json; exit 0 only when every invariant holds.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from chaos import check, tape
from chaos.alerts import AlertWatch
from chaos.faults import Faults
from chaos.probe import Probe
from chaos.webhook import Receiver
from cryptopipe.settings import ROOT, load_settings
from ops import connectors, flink_deploy, functions_ctl
from ops.process import port_open
from ops.stack import NativeStack

RESULTS = ROOT / "chaos-results.json"
FUNCTIONS = ("source", "redis-sink", "alert-notifier")


# Longer than ServiceDown's `for: 1m` plus the time it takes to be seen (a scrape, then an evaluation half a
# scrape later: 75 s at most, plus the service's own stop): an outage must alert.
OUTAGE_S = 85.0
# After the faults, how long the alerts they raised may take to resolve (ServiceRestarted's 2-minute window,
# DeadLetterTopicGrowing's 5 minutes from the first fault).
RESOLVE_WAIT_S = 300.0


def schedule(rng: random.Random, repeats: int) -> list[tuple[str, str, float]]:
    """(kind, target, length in seconds) for every fault, `repeats` times each: the malformed bursts first and
    the outages last, the kills shuffled between them, so the windows of the alerts the bursts and kills raise
    (5 and 2 minutes) close while the run goes on, not after it."""
    kills = [("kill", name, 0.0) for name in FUNCTIONS] + [("kill-service", "kafka", 0.0),
                                                           ("kill-service", "connect", 0.0),
                                                           # the stream engine: Flink's two processes
                                                           ("kill-service", "flink-jobmanager", 0.0),
                                                           ("kill-service", "flink-taskmanager", 0.0)]
    outages = [("outage", "postgres", OUTAGE_S), ("outage", "redis", OUTAGE_S)]
    kills, outages = kills * repeats, outages * repeats
    rng.shuffle(kills)
    rng.shuffle(outages)
    return [("malformed", "binance.aggtrades", 0.0)] * repeats + kills + outages


def run(seed: int, minutes: float, n_symbols: int, repeats: int, timeout_s: float, console: Console) -> dict:
    settings = load_settings()
    stack = NativeStack(settings)
    down = [svc.name for svc in stack.services if not svc.is_up()]
    if down:
        raise SystemExit(f"error: the native stack is not up ({', '.join(down)}): run `make up` first")
    if any(functions_ctl.running_pid(settings, name) for name in (*FUNCTIONS, "replay")):
        raise SystemExit("error: pipeline functions are running (make status); `make stop` them first")
    for port, var in ((settings.replay_port, "REPLAY_PORT"), (settings.replay_ws_port, "REPLAY_WS_PORT")):
        if port_open("127.0.0.1", port):
            raise SystemExit(f"error: port {port} for the replay server is in use; set {var}")
    rng = random.Random(seed)
    # Symbols new to the stack on every run (a seed repeats the faults, not the data: the source would
    # resume after a previous run's trades of the same symbols).
    tag = uuid.uuid4().hex[:6].upper()
    symbols = [f"CX{tag}{i}" for i in range(n_symbols)]
    log = lambda line: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {line}")  # noqa: E731

    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    trades = tape.generate(ROOT / "data" / "binance", work / "tape", symbols, minutes,
                           int(time.time() * 1000) + 5_000, per_symbol=12_000 // n_symbols)
    total = sum(len(t) for t in trades.values())
    log(f"seed {seed}: {total:,} real trades over {n_symbols} symbols ({', '.join(symbols)}), {minutes:g} min live")
    if connectors.deploy(settings.connect_url, console=console) != 0:
        raise SystemExit("error: the connectors did not deploy")
    receiver = Receiver()
    start_offsets = check.dlq_ends(settings)
    url = f"http://127.0.0.1:{settings.replay_port}"
    # The source polls REST here, the chaos run's known-good setup: a fresh-clone run with the source in
    # WebSocket mode lost its harness mid-run, not explained yet; that mode has its own fault tests.
    env = {"BINANCE_BASE_URL": url, "BINANCE_SOURCE_MODE": "rest", "BINANCE_SYMBOLS": ",".join(symbols),
           "BINANCE_START_TIME": "0", "ALERT_WEBHOOK_URL": receiver.url}
    functions_ctl.start(settings, "replay", ["--tape", str(work / "tape"), "--port", str(settings.replay_port),
                                            "--ws-port", str(settings.replay_ws_port), "--speed", "1"])
    flink_deploy.ensure_running(settings, log)  # the stack's keeper starts it as well; this one waits for it
    for name in ("redis-sink", "alert-notifier", "source"):
        functions_ctl.start(settings, name, env=env)
    tape_end = time.monotonic() + minutes * 60 + 5
    probe = Probe(settings, stack, symbols, {s: t[-1]["a"] for s, t in trades.items()}, total / (minutes * 60),
                  timeout_s, log)
    faults = Faults(settings, stack, log)
    watch = AlertWatch(settings, log)
    injected: list[dict] = []
    try:
        if probe.wait(tape_end, timeout_s=300) is None:
            raise SystemExit("error: the pipeline did not catch up with the tape before any fault; see logs/")
        for kind, target, length in schedule(rng, repeats):
            time.sleep(rng.uniform(1, 8))
            began, began_at = time.monotonic(), time.time()
            if kind == "kill":
                what = faults.kill_function(target)
            elif kind == "kill-service":
                what = faults.kill_service(target)
            elif kind == "outage":
                what = faults.outage(target, length)
            else:
                what = faults.malformed_burst(rng.choice(symbols))
            ended = time.monotonic()
            log(f"fault: {what}")
            recovered = probe.wait(tape_end)
            injected.append({"kind": f"{kind} {target}", "what": what, "length_s": round(ended - began, 1),
                             "recovery_s": round(recovered - ended, 1) if recovered else None,
                             "began_at": began_at, "fault": (kind, target)})
            if recovered:
                log(f"  caught up again after {recovered - ended:.1f} s")
        log("faults done; waiting for the tape to end and the pipeline to catch up")
        while time.monotonic() < tape_end:
            time.sleep(1)
        finished = probe.wait(0) is not None
        outcome = check.invariants(settings, trades, faults.sent, start_offsets, receiver.counts(), log)
        deadline = time.monotonic() + 120  # Airflow's processes come back from a PostgreSQL outage last
        while (down := [svc.name for svc in stack.services if not svc.is_up()]) and time.monotonic() < deadline:
            time.sleep(2)
        outcome["services_down"] = down
        outcome["ok"] &= not outcome["services_down"]
        answered(watch, injected, log)
    finally:
        for name in ("source", "redis-sink", "alert-notifier", "replay"):
            functions_ctl.stop(settings, name)
        receiver.close()
        probe.close()
        watch.close()
    recoveries = [f["recovery_s"] for f in injected if f["recovery_s"] is not None]
    unalerted = [f["kind"] for f in injected if not alert_ok(f)]
    results = {
        "seed": seed, "symbols": symbols, "trades": total, "minutes": minutes,
        "faults_injected": dict(Counter(f["kind"] for f in injected)),
        "faults_not_recovered": sum(f["recovery_s"] is None for f in injected) + (not finished),
        "recovery_s_p50": round(statistics.median(recoveries), 1) if recoveries else None,
        "recovery_s_max": max(recoveries) if recoveries else None,
        "faults_unalerted": len(unalerted), "faults_unalerted_kinds": unalerted,
        **outcome, "faults": injected,
    }
    results["ok"] = bool(finished and results["faults_not_recovered"] == 0 and outcome["ok"] and not unalerted)
    return results


def answered(watch: AlertWatch, injected: list[dict], log) -> None:
    """Each fault's alert into its entry, once they have all resolved (or RESOLVE_WAIT_S has passed)."""
    log("waiting for the faults' alerts to resolve")
    deadline = time.monotonic() + RESOLVE_WAIT_S
    while True:
        for f in injected:
            f["alert"] = watch.answer(*f["fault"], f["began_at"])
        if all(f["alert"]["resolved"] or f["alert"]["fired_after_s"] is None for f in injected) \
                or time.monotonic() > deadline:
            break
        time.sleep(5)
    for f in injected:
        a = f["alert"]
        if a["fired_after_s"] is None:
            fired = "did not fire"
        else:
            fired = (f"fired {a['fired_after_s']:.0f} s after the fault"
                     + (" (already firing)" if a["already_firing"] else "")
                     + (f", resolved at {a['resolved_at']}" if a["resolved"] else ", not resolved"))
        log(f"  {f['kind']}: {a['alert']} {fired} (limit {a['limit_s']:.0f} s)")
        del f["fault"]


def alert_ok(fault: dict) -> bool:
    """The fault's alert fired within its limit and resolved after recovery."""
    a = fault.get("alert") or {}
    return a.get("fired_after_s") is not None and a["fired_after_s"] <= a["limit_s"] and a["resolved"]


def report(results: dict, console: Console) -> None:
    table = Table(title=f"Chaos run (seed {results['seed']}, {results['trades']:,} trades)", title_justify="left")
    table.add_column("fault")
    table.add_column("injected", justify="right")
    table.add_column("recovery p50 / max", justify="right")
    table.add_column("alert (fired after, limit)")
    by_kind: dict[str, list[dict]] = {}
    for f in results["faults"]:
        by_kind.setdefault(f["kind"], []).append(f)
    for kind, faults in sorted(by_kind.items()):
        times = [f["recovery_s"] if f["recovery_s"] is not None else float("inf") for f in faults]
        alerts = []
        for f in faults:
            a = f.get("alert") or {}
            after = "none" if a.get("fired_after_s") is None else f"{a['fired_after_s']:.0f} s"
            colour = "green" if alert_ok(f) else "red"
            alerts.append(f"[{colour}]{a.get('alert', '?')} {after} / {a.get('limit_s', 0):.0f} s"
                          f"{'' if a.get('resolved') else ', unresolved'}[/]")
        table.add_row(kind, str(len(times)), f"{statistics.median(times):.1f} s / {max(times):.1f} s",
                      "; ".join(alerts))
    console.print(table)
    for name in ("records_lost", "duplicates", "candles_wrong", "stats_wrong", "stats_missing", "redis_prices_wrong",
                 "dlq_missing", "dlq_unexpected", "alerts_delivered_twice", "faults_not_recovered",
                 "faults_unalerted"):
        value = results[name]
        console.print(f"  {name:<24} {'[green]' if value == 0 else '[red]'}{value}[/]")
    console.print(f"  recovery after a fault: p50 {results['recovery_s_p50']} s, max {results['recovery_s_max']} s")
    console.print("[green]every invariant holds[/green]" if results["ok"] else "[red]an invariant failed[/red]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Faults against the running pipeline, then every invariant checked.")
    parser.add_argument("--seed", type=int, default=None, help="for a run that repeats another (default: random)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the live tape")
    parser.add_argument("--symbols", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="how often each kind of fault is injected")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds a fault may take to heal")
    args = parser.parse_args(argv)
    console = Console()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    results = run(seed, args.minutes, args.symbols, args.repeats, args.timeout, console)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    report(results, console)
    console.print(f"written {RESULTS.name}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
