"""The running Airflow that `make up` starts: bound to loopback, behind a login, listing the four DAGs, and
usable in a real browser (Debian's Chromium, headless, driven by Playwright; the screenshot is kept in
test-artifacts/)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests

from ops import airflow as airflow_services
from cryptopipe.settings import ROOT
from tests.helpers import restart_service, wait_for

DAG_IDS = {"crypto_batch_processing", "crypto_analysis", "crypto_reports", "data_quality_check"}
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def airflow(stack, settings):
    return settings


def listed_dags(settings) -> set[str]:
    return {d["dag_id"] for d in airflow_services.AirflowClient(settings).call("GET", "/dags")["dags"]}


def test_api_server_listens_on_loopback_only(airflow):
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    addresses = {line.split()[3] for line in listening.splitlines()}
    assert f"127.0.0.1:{airflow.airflow_port}" in addresses
    assert not {f"0.0.0.0:{airflow.airflow_port}", f"[::]:{airflow.airflow_port}", f"*:{airflow.airflow_port}"} & addresses
    # Airflow's worker log servers (8793, 8794) would listen everywhere; the stack runs without them.
    assert not {a for a in addresses if a.rsplit(":", 1)[1] in ("8793", "8794")}


def test_login_is_required_and_the_password_comes_from_env(airflow):
    page = requests.get(f"{airflow.airflow_url}/auth/login", timeout=10)
    assert page.status_code == 200 and "<title>Airflow</title>" in page.text
    assert requests.get(f"{airflow.airflow_url}/api/v2/dags", timeout=10).status_code == 401
    wrong = requests.post(f"{airflow.airflow_url}/auth/token", timeout=10,
                          json={"username": airflow.airflow_admin_user, "password": "not-the-password"})
    assert wrong.status_code == 401
    assert airflow_services.token(airflow)  # the password in .env works


def test_the_four_dags_are_listed_through_the_rest_api(airflow):
    # The dag-processor parses new files within its refresh interval.
    wait_for(lambda: DAG_IDS <= listed_dags(airflow), timeout=120, what="the four DAGs in the REST API", interval=2)
    assert DAG_IDS <= listed_dags(airflow)


def test_headless_chromium_logs_in_and_sees_the_dag_list(airflow):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make setup` installs it (as root)"
    wait_for(lambda: DAG_IDS <= listed_dags(airflow), timeout=120, what="the four DAGs in the REST API", interval=2)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "airflow-dags.png"
    shot.unlink(missing_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{airflow.airflow_url}/dags", timeout=60_000)
            page.wait_for_selector("input[name=username]", timeout=60_000)  # sent to the login form
            page.fill("input[name=username]", airflow.airflow_admin_user)
            page.fill("input[name=password]", airflow.airflow_admin_password.get_secret_value())
            page.keyboard.press("Enter")
            page.wait_for_url("**/dags**", timeout=60_000)
            for dag_id in sorted(DAG_IDS):
                page.get_by_text(dag_id, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(shot), full_page=True)
            body = page.inner_text("body")
        finally:
            browser.close()
    assert DAG_IDS <= set(body.split())
    assert shot.stat().st_size > 10_000


def test_airflow_comes_back_after_a_postgres_outage(stack, airflow):
    # The scheduler, dag-processor and triggerer exit when their metadata database goes away; the stack
    # runs them under a supervisor that starts them again.
    from datetime import datetime, timezone

    names = ["airflow-api", *airflow_services.COMPONENTS]
    supervisors = {name: stack.service(name).pid() for name in names}
    assert all(supervisors.values()), supervisors
    sizes = {name: stack.service(name).log_file.stat().st_size for name in names}
    restart_service(stack, "postgres", down_s=20)
    back = datetime.now(timezone.utc)

    def beating_since_back() -> bool:
        # Healthy alone could be a heartbeat from before the outage, still inside the health threshold.
        try:
            return all(airflow_services.component_healthy(airflow, c, since=back)
                       for c in airflow_services.COMPONENTS.values())
        except (requests.RequestException, ValueError):  # the api-server itself may be reconnecting
            return False

    wait_for(beating_since_back, timeout=180, what="a heartbeat from every Airflow component after the outage",
             interval=2)
    for svc in stack.services:
        if svc.name in names:
            assert svc.pid() == supervisors[svc.name], svc.name  # the same supervisor, still running
    restarts = "".join(stack.service(name).log_file.read_bytes()[sizes[name]:].decode(errors="replace") for name in names)
    assert "restarting in" in restarts  # at least one of them did exit and was restarted
    assert DAG_IDS <= listed_dags(airflow)
