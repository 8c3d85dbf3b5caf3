"""Live mode runs the batch layer: `make run` unpauses the scheduled DAGs, `make stop` pauses them again.

    python -m ops.dag_schedule on     unpause every scheduled DAG that is paused; remember which
    python -m ops.dag_schedule off    pause again exactly those `on` unpaused

Airflow pauses new DAGs, so without this a live pipeline would never get its hourly checks, rollups, reports
and reconciliation. `off` leaves alone a DAG the user unpaused (or paused) themselves: what `on` changed is
kept in var/run/dags-unpaused.json, and only that is undone.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

import requests

from cryptopipe.settings import Settings, load_settings
from ops.airflow import AirflowClient
from ops.dag_run import DAGS

# How long past its due time a scheduled run may not have started before `make status` calls its DAG late: the
# scheduler starts a due run within seconds, but a busy machine's task slots may hold it a while.
LATE_AFTER_S = 15 * 60


def record_file(settings: Settings):
    return settings.var_dir / "run" / "dags-unpaused.json"


def scheduled(client: AirflowClient, timeout: float = 120) -> list[dict]:
    """The DAGs of dags/ that have a schedule, once Airflow has parsed every one of them."""
    ids = sorted(p.stem for p in DAGS.glob("*.py") if "DAG(" in p.read_text() or "@dag" in p.read_text())
    dags = [client.wait_for_dag(dag_id, timeout) for dag_id in ids]
    return [d for d in dags if d.get("timetable_summary") not in (None, "None")]


def unpause(settings: Settings) -> list[str]:
    client = AirflowClient(settings)
    turned_on = [d["dag_id"] for d in scheduled(client) if d["is_paused"]]
    for dag_id in turned_on:
        client.set_paused(dag_id, False)
    path = record_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    before = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(sorted(set(before) | set(turned_on))))
    return turned_on


def pause(settings: Settings) -> list[str]:
    path = record_file(settings)
    if not path.exists():
        return []
    client = AirflowClient(settings)
    turned_on = json.loads(path.read_text())
    for dag_id in turned_on:
        client.set_paused(dag_id, True)
    path.unlink()
    return turned_on


def lateness(dag: dict, now: datetime | None = None) -> str:
    """'-' for a paused or unscheduled DAG, else 'no', or 'yes' with how long its next run has been due."""
    due = dag.get("next_dagrun_run_after")
    if dag.get("is_paused") or not due:
        return "-"
    now = now or datetime.now(timezone.utc)
    overdue = (now - datetime.fromisoformat(due.replace("Z", "+00:00"))).total_seconds()
    return f"yes, due {overdue / 60:.0f} min ago" if overdue > LATE_AFTER_S else "no"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("on", "off"):
        print("usage: python -m ops.dag_schedule on|off", file=sys.stderr)
        return 2
    settings = load_settings()
    try:
        changed = unpause(settings) if argv[1] == "on" else pause(settings)
    except (RuntimeError, requests.RequestException) as err:  # an error from Airflow, or none at all
        print(f"error: Airflow at {settings.airflow_url}: {err}. Is it up? (make status)", file=sys.stderr)
        return 1
    verb = "unpaused (they run on their schedules)" if argv[1] == "on" else "paused again"
    print(f"  DAGs {verb}: {', '.join(changed) if changed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
