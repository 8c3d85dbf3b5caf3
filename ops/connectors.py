"""`make deploy-connectors`: create or update every connectors/*.json through the Connect REST API.

    python -m ops.connectors [--restart-failed] [--timeout S]

Each file is exactly the body of `PUT /connectors/{file name}/config` (idempotent: 201 created, 200
updated). It waits until every connector and task is RUNNING, printing the failed task's trace on a timeout,
retries 409s while the workers rebalance, and ends with a table. `--restart-failed` first restarts failed
connectors and tasks at once (the Connect watchdog, ops/connect_watchdog.py, does it by itself with backoff).
Exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import requests
from rich.console import Console
from rich.table import Table

from cryptopipe.settings import ROOT, get_settings, load_settings

CONNECTOR_DIR = ROOT / "connectors"


class DeployError(Exception):
    pass


def load_configs(folder: Path = CONNECTOR_DIR) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def call(method: str, url: str, tries: int = 10, **kwargs) -> requests.Response:
    """One REST call; 409 (a rebalance in progress) and connection errors are retried with backoff."""
    for attempt in range(tries):
        try:
            resp = requests.request(method, url, timeout=30, auth=get_settings().connect_auth, **kwargs)
        except requests.ConnectionError as err:
            if attempt == tries - 1:
                raise DeployError(f"Kafka Connect is not reachable at {url}: {err}. Is it up? (make status)") from None
        else:
            if resp.status_code != 409:
                return resp
        time.sleep(min(0.5 * 2 ** attempt, 5))
    raise DeployError(f"{method} {url} kept answering 409 (rebalance in progress)")


def put_config(base: str, name: str, config: dict) -> str:
    resp = call("PUT", f"{base}/connectors/{name}/config", json=config)
    if resp.status_code not in (200, 201):
        raise DeployError(f"{name}: Connect refused the config (HTTP {resp.status_code}): {resp.text[:500]}")
    return "created" if resp.status_code == 201 else "updated"


def status(base: str, name: str) -> dict:
    resp = call("GET", f"{base}/connectors/{name}/status")
    return resp.json() if resp.status_code == 200 else {"connector": {"state": f"HTTP {resp.status_code}"}, "tasks": []}


def all_statuses(base: str, http=requests, timeout: float = 10) -> dict[str, dict]:
    """Every connector's status in one call (GET /connectors?expand=status): {name: status}, None for a
    connector created a moment ago that has none yet. Raises
    requests.RequestException or ValueError when Connect does not answer properly."""
    resp = http.get(f"{base}/connectors", params={"expand": "status"}, timeout=timeout,
                    auth=get_settings().connect_auth)
    resp.raise_for_status()
    return {name: info.get("status") for name, info in resp.json().items()}


def is_running(st: dict) -> bool:
    return st["connector"]["state"] == "RUNNING" and bool(st["tasks"]) and all(
        t["state"] == "RUNNING" for t in st["tasks"])


def restart_failed(base: str, names: list[str]) -> None:
    for name in names:
        resp = call("POST", f"{base}/connectors/{name}/restart", params={"includeTasks": "true", "onlyFailed": "true"})
        if resp.status_code not in (200, 202, 204):
            raise DeployError(f"{name}: restart refused (HTTP {resp.status_code}): {resp.text[:300]}")


def wait_running(base: str, names: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        states = {name: status(base, name) for name in names}
        if all(is_running(st) for st in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def table(configs: dict[str, dict], states: dict[str, dict]) -> Table:
    out = Table(title="Connectors", title_justify="left")
    for col in ("connector", "state", "tasks", "topic -> table"):
        out.add_column(col)
    for name, st in states.items():
        tasks = ", ".join(f"{t['id']}:{t['state']}" for t in st["tasks"]) or "none"
        cfg = configs[name]
        out.add_row(name, st["connector"]["state"], tasks, f"{cfg['topics']} -> {cfg.get('collection.name.format')}")
    return out


def deploy(base: str, restart: bool = False, timeout: float = 90.0, console: Console | None = None) -> int:
    console = console or Console()
    configs = load_configs()
    try:
        for name, config in configs.items():
            console.print(f"  {name}: {put_config(base, name, config)}")
        if restart:
            restart_failed(base, list(configs))
            console.print("  restarted failed connectors and tasks")
        states = wait_running(base, list(configs), timeout)
    except DeployError as err:
        console.print(f"[red]error: {err}[/red]")
        return 1
    console.print(table(configs, states))
    failed = {n: st for n, st in states.items() if not is_running(st)}
    for name, st in failed.items():
        for task in st["tasks"]:
            if task.get("trace"):
                console.print(f"[red]{name} task {task['id']} {task['state']}:[/red]\n{task['trace']}")
        if st["connector"].get("trace"):
            console.print(f"[red]{name}:[/red]\n{st['connector']['trace']}")
    if failed:
        console.print(f"[red]error: not RUNNING after {timeout:.0f} s: {', '.join(failed)}. Fix the cause above; the "
                      "Connect watchdog then restarts it (logs/connect-watchdog.log), or at once: "
                      "make deploy-connectors ARGS=--restart-failed[/red]")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deploy connectors/*.json to Kafka Connect.")
    parser.add_argument("--restart-failed", action="store_true", help="restart failed connectors and tasks first")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for RUNNING")
    parser.add_argument("--connect-url", default=None, help="default: CONNECT_HOST/CONNECT_PORT from the settings")
    args = parser.parse_args(argv)
    base = args.connect_url or load_settings().connect_url
    return deploy(base.rstrip("/"), args.restart_failed, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
