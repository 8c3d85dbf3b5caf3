"""Run one DAG with dag.test() in this process and print its task states as JSON: `python -m cryptopipe.dag_test
<dag_id> <conf json> <dags folder> [logical date]`. The tests and the report benchmark run it in a fresh process, so
Airflow's configuration comes from the environment they set."""

import json
import sys
from datetime import datetime

from airflow.dag_processing.dagbag import DagBag

dag_id, conf = sys.argv[1], json.loads(sys.argv[2])
bag = DagBag(dag_folder=sys.argv[3])
assert not bag.import_errors, bag.import_errors
run = bag.get_dag(dag_id).test(run_conf=conf, logical_date=datetime.fromisoformat(sys.argv[4]) if len(sys.argv) > 4 else None)
print("RESULT " + json.dumps({ti.task_id: ti.state for ti in run.get_task_instances()}))
