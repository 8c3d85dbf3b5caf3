"""Run one DAG with dag.test(), outside the running Airflow, in a process of its own.

    python -m ops.dag_run <dag_id> <conf json> <dags folder> [logical date]

prints the task states as JSON after `RESULT `. The tests and the report benchmark call `environment()` (an
Airflow home of their own, migrated, with the stack's connections) and `run_dag()`, which runs this in a fresh
process so Airflow's configuration comes from that environment. An operator can use it the same way to try
a DAG change without the scheduler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from cryptopipe.settings import ROOT, Settings
from ops.airflow import AIRFLOW_BIN
from ops.airflow_env import airflow_connections

DAGS = ROOT / "dags"


def environment(settings: Settings, home: Path, migrate_timeout: float = 300, **extra: str) -> dict[str, str]:
    """The environment for dag.test() runs in `home` (its metadata database migrated), plus `extra` variables."""
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), **airflow_connections(settings), **extra}
    subprocess.run([AIRFLOW_BIN, "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=migrate_timeout)
    return env


def run_dag(env: dict[str, str], dag_id: str, conf: dict, logical_date: datetime | None = None,
            timeout: float = 600) -> dict[str, str]:
    """dag.test() in a fresh process: the task states. With a logical date, a run like the scheduler's (params
    at their defaults). Raises with the run's output when it printed no result."""
    extra = [logical_date.isoformat()] if logical_date else []
    result = subprocess.run([sys.executable, "-m", "ops.dag_run", dag_id, json.dumps(conf), str(DAGS), *extra],
                            env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{dag_id} gave no result:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(argv: list[str]) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag_id, conf = argv[1], json.loads(argv[2])
    bag = DagBag(dag_folder=argv[3])
    assert not bag.import_errors, bag.import_errors
    logical_date = datetime.fromisoformat(argv[4]) if len(argv) > 4 else None
    run = bag.get_dag(dag_id).test(run_conf=conf, logical_date=logical_date)
    print("RESULT " + json.dumps({ti.task_id: ti.state for ti in run.get_task_instances()}))


if __name__ == "__main__":
    main(sys.argv)
