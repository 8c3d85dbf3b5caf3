"""Benchmarks of the Binance source: throughput against a bare producer, and symbols kept under 2 s lag
(REST) or 1 s lag (WebSocket)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import requests
from confluent_kafka.admin import AdminClient

from bench.common import (RESULTS, TAPES, ReplayProcess, Scraped, copies_of, free_port, fresh_topic, produce_all,
                          record)
from cryptopipe.settings import get_settings
from functions.binance_source.live import StreamSource
from functions.binance_source.source import BinanceSource
from functions.binance_source.trades import trade_value


def busy_market(workdir: Path) -> tuple[list[str], Path, list[dict]]:
    """16 symbols each replaying the real XRPETH tape (what both throughput figures run on): the names, the
    tape folder (written once per bench run) and the tape's trades."""
    names = [f"XRPETH{c}" for c in "ABCDEFGHIJKLMNOP"]
    folder = workdir / "tp"
    if not folder.exists():
        copies_of("xrpeth_aggtrades_20191011-13.json", names, folder)
    return names, folder, json.loads((TAPES / "xrpeth_aggtrades_20191011-13.json").read_text())


def throughput(workdir: Path) -> None:
    settings = get_settings()
    admin = AdminClient(settings.kafka_config())
    names, tape_dir, trades = busy_market(workdir)
    total = len(trades) * len(names)

    # Bare producer: the same records, serialized beforehand, same producer settings.
    values = [(n.encode(), *trade_value(n, t)[1:]) for n in names for t in trades]
    topic = fresh_topic(admin, "raw")
    start = time.perf_counter()
    produce_all(settings.kafka_config(), topic, values, **{
        "enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4",
        "batch.num.messages": 10_000})
    raw_rate = total / (time.perf_counter() - start)

    # Metrics off, on, on, off: the noise of this machine, and any drift over the four runs (warming up), lands on
    # both sides alike.
    runs = {False: [], True: []}
    for metrics in (False, True, True, False):
        rate, startup, counted = source_rate(workdir, admin, names, tape_dir, total, metrics)
        runs[metrics].append(rate)
    rate = runs[False][0]
    record(source_trades_per_s=round(rate), raw_producer_trades_per_s=round(raw_rate),
           source_vs_raw_producer=round(rate / raw_rate, 3), source_bench_trades=counted,
           source_startup_s=round(startup, 2),
           source_runs_metrics_off_per_s=[round(r) for r in runs[False]],
           source_runs_metrics_on_per_s=[round(r) for r in runs[True]],
           metrics_overhead_source=round(sum(runs[True]) / sum(runs[False]), 3))


def source_rate(workdir: Path, admin: AdminClient, names: list[str], tape_dir: Path, total: int,
                metrics: bool) -> tuple[float, float, int]:
    """(trades/s from the first acknowledged trade to the last, start-up seconds, trades counted) of the source
    over the busy market; with `metrics`, serving them and scraped every second (ten times Prometheus' rate)."""
    settings = get_settings()
    replay = ReplayProcess(tape_dir)
    try:
        s = settings.model_copy(update={"kafka_as_admin": True,
            "binance_base_url": replay.url, "binance_symbols": ",".join(names), "binance_start_time": "0",
            "aggtrades_topic": fresh_topic(admin, "source"), "var_dir": workdir / "var",
            "source_status_interval_s": 60.0, "source_metrics_port": free_port(),
        })
        source = BinanceSource(s)
        with Scraped(s, source.counters) if metrics else contextlib.nullcontext():
            thread = threading.Thread(target=source.run)
            launched = time.perf_counter()
            thread.start()
            # Steady state: from the first acknowledged trade to the last; start-up (exchangeInfo, resume
            # scan) is reported on its own.
            while source.counters["trades_produced"] == 0:
                time.sleep(0.0005)
            start = time.perf_counter()
            first = source.counters["trades_produced"]
            while source.counters["trades_produced"] < total:
                time.sleep(0.002)
            elapsed = time.perf_counter() - start
            source.stop()
            thread.join(30)
    finally:
        replay.stop()
    print(f"    source, metrics {'on' if metrics else 'off'}: {(total - first) / elapsed:,.0f} trades/s")
    return (total - first) / elapsed, start - launched, total - first


def lag_samples(workdir: Path, n_symbols: int, mode: str, seconds: float = 25.0, warmup: float = 6.0) -> list[float]:
    """Every symbol's lag ten times a second after warm-up, with n symbols replayed at live speed in 6000
    weight/min, the source in `mode` (rest or websocket).

    A symbol's lag at a moment: 0 when every trade the exchange has released is acknowledged in Kafka,
    else the time since the release of the oldest trade that is not."""
    settings = get_settings()
    admin = AdminClient(settings.kafka_config())
    tapes = ["btcusdt_aggtrades_20210404.json", "ethusdt_aggtrades_20210404.json", "dotusdt_aggtrades_20210404.json"]
    folder = workdir / f"{mode}{n_symbols}"
    names = [f"{tapes[i % 3][:3].upper()}{i:04d}USDT" for i in range(n_symbols)]
    for i, name in enumerate(names):
        copies_of(tapes[i % 3], [name], folder)
    raw = {t: [(x["a"], x["T"]) for x in json.loads((TAPES / t).read_text())] for t in tapes}
    replay = ReplayProcess(folder, "--speed", "1", "--shift-to-now", "--weight-limit", "6000")
    samples: list[float] = []
    try:
        offset_ms = time.time() * 1000 - replay.stats()["now_ms"]  # wall clock minus tape clock
        first_id, first_t = raw[tapes[0]][0]
        served = requests.get(f"{replay.url}/api/v3/aggTrades", timeout=5,
                              params={"symbol": names[0], "fromId": first_id, "limit": 1}).json()
        shift_ms = served[0]["T"] - first_t  # the server moved the tape to the present
        trades = {n: [(a, t + shift_ms) for a, t in raw[tapes[i % 3]]] for i, n in enumerate(names)}
        s = settings.model_copy(update={"kafka_as_admin": True,
            "binance_base_url": replay.url, "binance_ws_url": replay.ws_url, "binance_source_mode": mode,
            "binance_symbols": ",".join(names), "binance_start_time": "",
            "aggtrades_topic": fresh_topic(admin, f"lag-{mode}"), "var_dir": workdir / "var",
            "source_status_interval_s": 60.0,
        })
        source = StreamSource(s) if mode == "websocket" else BinanceSource(s)
        thread = threading.Thread(target=source.run)
        thread.start()
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(0.1)
            if time.monotonic() - start < warmup:
                continue
            tape_now = time.time() * 1000 - offset_ms
            for name, state in list(source.states.items()):
                if state.cursor is None:
                    continue  # no trade of it yet
                idx = max(0, state.cursor - trades[name][0][0])
                late = idx < len(trades[name]) and trades[name][idx][1] <= tape_now
                samples.append((tape_now - trades[name][idx][1]) / 1000 if late else 0.0)
        source.stop()
        thread.join(30)
    finally:
        replay.stop()
    return sorted(samples)


def most_symbols_under(workdir: Path, mode: str, counts: tuple[int, ...], limit_s: float, measure) -> tuple[int, dict]:
    """The most symbols whose lag, as `measure` sums up the samples, stays within `limit_s`; stops at the first
    count past it. Returns it and each count's figure."""
    best, results = 0, {}
    for n in counts:
        lag = measure(lag_samples(workdir, n, mode))
        results[n] = round(lag, 3)
        print(f"    {n} symbols ({mode}): {lag:.3f} s")
        if lag > limit_s:
            break
        best = n
    return best, results


def symbols_under_lag(workdir: Path) -> None:
    best, results = most_symbols_under(workdir, "rest", (10, 15, 20, 25, 30, 40), 2.0,
                                       lambda lags: max(lags, default=float("inf")))
    record(source_symbols_under_2s_lag=best, source_lag_worst_s_by_symbols=results)


def ws_throughput(workdir: Path) -> None:
    """The WebSocket mode's rate on 16 busy streams, against the bare producer measured by `throughput`.

    The tapes play in about a second once the clock starts, faster than any source takes them, so the
    source is what sets the pace: the replay holds back what the source's socket cannot take yet."""
    settings = get_settings()
    admin = AdminClient(settings.kafka_config())
    names, tape_dir, trades = busy_market(workdir)
    total = len(trades) * len(names)
    span_s = (trades[-1]["T"] - trades[0]["T"]) / 1000
    # The clock waits while the source connects and subscribes, then every trade arrives on the streams.
    replay = ReplayProcess(tape_dir, "--speed", str(span_s), "--delay-s", "6")
    try:
        s = settings.model_copy(update={"kafka_as_admin": True,
            "binance_base_url": replay.url, "binance_ws_url": replay.ws_url, "binance_source_mode": "websocket",
            "binance_symbols": ",".join(names), "binance_start_time": "",
            "aggtrades_topic": fresh_topic(admin, "ws"), "var_dir": workdir / "var", "source_status_interval_s": 60.0,
        })
        source = StreamSource(s)
        thread = threading.Thread(target=source.run)
        thread.start()
        deadline = time.monotonic() + 120
        while source.counters["trades_produced"] == 0 and time.monotonic() < deadline:
            time.sleep(0.0005)
        start = time.perf_counter()
        first = source.counters["trades_produced"]
        while source.counters["trades_produced"] < total and time.monotonic() < deadline:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        produced, via_stream = source.counters["trades_produced"], source.counters["stream_trades"]
        source.stop()
        thread.join(30)
    finally:
        replay.stop()
    if produced < total:
        raise RuntimeError(f"the WebSocket source produced {produced} of {total} trades in 120 s")
    raw_rate = json.loads(RESULTS.read_text())["raw_producer_trades_per_s"]
    rate = (total - first) / elapsed
    record(source_ws_trades_per_s=round(rate), source_ws_vs_raw_producer=round(rate / raw_rate, 3),
           source_ws_stream_share=round(via_stream / total, 3))


def ws_symbols_under_lag(workdir: Path) -> None:
    best, results = most_symbols_under(workdir, "websocket", (100, 200, 400, 800, 1600, 3200), 1.0,
                                       lambda lags: lags[int(0.99 * (len(lags) - 1))] if lags else float("inf"))
    record(source_ws_symbols_under_1s_lag=best, source_ws_lag_p99_s_by_symbols=results)
