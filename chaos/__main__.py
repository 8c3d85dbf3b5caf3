"""`make chaos`: the whole pipeline on a live replay while faults hit it, then every promise checked.

    python -m chaos [--seed N] [--minutes M] [--symbols K]

The replay server plays a generated multi-symbol tape (real XRPETH trades) at live speed; the source, stream,
Redis sink and alert notifier run under their supervisors (`make start`), Kafka, Connect and the JDBC sinks
as `make up` left them. At random moments it SIGKILLs every function, Kafka and Connect, stops PostgreSQL for
60 s and Redis for 30 s, and writes bursts of every class of malformed record to binance.aggtrades, each
kind twice or more; after each fault it waits until the pipeline is caught up again and times that. Nobody
restarts anything: only the supervisors do. At the end, against an oracle made from the tape alone: every
trade exactly once in Kafka and in `trades`, `candles_1m` equal to the tape's candles, each symbol's last
price in Redis, the 5-minute statistics, the dead-letter topics holding exactly the malformed records, no alert
delivered twice.
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
from chaos.faults import Faults
from chaos.probe import Probe
from chaos.webhook import Receiver
from cryptopipe.settings import ROOT, load_settings
from ops import connectors, flink_deploy, functions_ctl
from ops.process import port_open
from ops.stack import NativeStack

RESULTS = ROOT / "chaos-results.json"
FUNCTIONS = ("source", "redis-sink", "alert-notifier")


def schedule(rng: random.Random, repeats: int) -> list[tuple[str, str, float]]:
    """(kind, target, length in seconds) for every fault, `repeats` times each, shuffled."""
    faults = [("kill", name, 0.0) for name in FUNCTIONS] + [("kill-service", "kafka", 0.0),
                                                            ("kill-service", "connect", 0.0),
                                                            # the stream engine: Flink's two processes
                                                            ("kill-service", "flink-jobmanager", 0.0),
                                                            ("kill-service", "flink-taskmanager", 0.0),
                                                            ("outage", "postgres", 60.0), ("outage", "redis", 30.0),
                                                            ("malformed", "binance.aggtrades", 0.0)]
    out = faults * repeats
    rng.shuffle(out)
    return out


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
    injected: list[dict] = []
    try:
        if probe.wait(tape_end, timeout_s=300) is None:
            raise SystemExit("error: the pipeline did not catch up with the tape before any fault; see logs/")
        for kind, target, length in schedule(rng, repeats):
            time.sleep(rng.uniform(1, 8))
            began = time.monotonic()
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
                             "recovery_s": round(recovered - ended, 1) if recovered else None})
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
    finally:
        for name in ("source", "redis-sink", "alert-notifier", "replay"):
            functions_ctl.stop(settings, name)
        receiver.close()
        probe.close()
    recoveries = [f["recovery_s"] for f in injected if f["recovery_s"] is not None]
    results = {
        "seed": seed, "symbols": symbols, "trades": total, "minutes": minutes,
        "faults_injected": dict(Counter(f["kind"] for f in injected)),
        "faults_not_recovered": sum(f["recovery_s"] is None for f in injected) + (not finished),
        "recovery_s_p50": round(statistics.median(recoveries), 1) if recoveries else None,
        "recovery_s_max": max(recoveries) if recoveries else None,
        **outcome, "faults": injected,
    }
    results["ok"] = bool(finished and results["faults_not_recovered"] == 0 and outcome["ok"])
    return results


def report(results: dict, console: Console) -> None:
    table = Table(title=f"Chaos run (seed {results['seed']}, {results['trades']:,} trades)", title_justify="left")
    table.add_column("fault")
    table.add_column("injected", justify="right")
    table.add_column("recovery p50 / max", justify="right")
    by_kind: dict[str, list[float]] = {}
    for f in results["faults"]:
        by_kind.setdefault(f["kind"], []).append(f["recovery_s"] if f["recovery_s"] is not None else float("inf"))
    for kind, times in sorted(by_kind.items()):
        table.add_row(kind, str(len(times)), f"{statistics.median(times):.1f} s / {max(times):.1f} s")
    console.print(table)
    for name in ("records_lost", "duplicates", "candles_wrong", "stats_wrong", "stats_missing", "redis_prices_wrong",
                 "dlq_missing", "dlq_unexpected", "alerts_delivered_twice", "faults_not_recovered"):
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
