"""Flink's REST API and SQL Gateway take only clients holding the stack's client certificate; people reach the web
UI through its front door (ops/flink_ui.py), which asks for their login and only reads. All against the running
stack's JobManager, gateway and nginx."""

from __future__ import annotations

import shutil
import socket
import ssl
import uuid

import pytest
import requests

from cryptopipe.settings import ROOT
from ops import flink_deploy, flink_tls
from ops.flink_tls import FlinkTls
from ops.monitoring import people_login

ARTIFACTS = ROOT / "test-artifacts"


def anonymous(settings) -> requests.Session:
    """A client that trusts the stack's CA (so only its own missing certificate can stop it) and has no certificate."""
    http = requests.Session()
    http.verify, http.trust_env = str(FlinkTls(settings.flink_tls_dir).ca), False
    return http


def test_without_the_certificate_every_flink_request_fails_the_handshake(stack, settings):
    job = flink_deploy.wait_running(settings)
    jm, gw, anon = settings.flink_url, settings.flink_gateway_url, anonymous(settings)
    jar = {"jarfile": ("job.jar", b"PK\x05\x06" + bytes(18), "application/x-java-archive")}
    attempts = {
        "cancel the job": lambda: anon.patch(f"{jm}/jobs/{job}?mode=cancel", timeout=10),
        "upload a jar": lambda: anon.post(f"{jm}/jars/upload", files=jar, timeout=10),
        "submit a job": lambda: anon.post(f"{jm}/jobs", json={"jobGraphFileName": "x"}, timeout=10),
        "read the job's config": lambda: anon.get(f"{jm}/jobs/{job}/config", timeout=10),
        "read the JobManager's config": lambda: anon.get(f"{jm}/jobmanager/config", timeout=10),
        "open a gateway session": lambda: anon.post(f"{gw}/v1/sessions", json={}, timeout=10),
        "run a statement": lambda: anon.post(f"{gw}/v1/sessions/{uuid.uuid4()}/statements",
                                             json={"statement": "ADD JAR '/tmp/x.jar'"}, timeout=10),
    }
    for what, attempt in attempts.items():
        with pytest.raises(requests.exceptions.SSLError):
            attempt()
            pytest.fail(f"{what}: answered without a client certificate")
    # Flink's own RPC port (what a TaskManager talks to) asks for a certificate as well (internal TLS).
    context = ssl.create_default_context(cafile=str(FlinkTls(settings.flink_tls_dir).ca))
    context.check_hostname = False
    with socket.create_connection((settings.flink_host, settings.flink_rpc_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE"):
            with context.wrap_socket(raw) as tls:
                tls.recv(1)  # a refused certificate shows at the handshake (TLS 1.2) or at the first read (1.3)
    # Plain HTTP on the JobManager's port gets a redirect to https and nothing else.
    plain = requests.get(f"http://{settings.flink_host}:{settings.flink_port}/jobs/overview", timeout=10,
                         allow_redirects=False)
    assert plain.status_code in (301, 308) and job not in plain.text
    assert flink_deploy.running_job(settings)["jid"] == job  # nothing above reached the job


def test_with_the_certificate_the_same_requests_work_and_jar_upload_is_off(stack, settings):
    job = flink_deploy.wait_running(settings)
    jm, gw, http = settings.flink_url, settings.flink_gateway_url, flink_tls.session(settings)
    assert http.get(f"{jm}/jobs/{job}/config", timeout=10).json()["jid"] == job
    assert any(e["key"] == "rest.port" for e in http.get(f"{jm}/jobmanager/config", timeout=10).json())
    # web.submit.enable: false takes the jar routes away, certificate or not.
    assert http.get(f"{jm}/jars", timeout=10).status_code == 404
    jar = {"jarfile": ("job.jar", b"PK\x05\x06" + bytes(18), "application/x-java-archive")}
    # Flink's upload handler refuses a file sent to a route that takes none (400 "POST request not allowed").
    assert http.post(f"{jm}/jars/upload", files=jar, timeout=10).status_code == 400
    assert http.post(f"{jm}/jars/job.jar/run", json={}, timeout=10).status_code == 404
    features = http.get(f"{jm}/config", timeout=10).json()["features"]
    assert features["web-submit"] is False and features["web-cancel"] is False
    session = http.post(f"{gw}/v1/sessions", json={}, timeout=10).json()["sessionHandle"]
    try:
        op = http.post(f"{gw}/v1/sessions/{session}/statements", json={"statement": "SHOW CURRENT CATALOG"},
                       timeout=30).json()["operationHandle"]
        result = http.get(f"{gw}/v1/sessions/{session}/operations/{op}/result/0", timeout=30).json()
        while result["resultType"] == "NOT_READY":
            result = http.get(f"{gw}/v1/sessions/{session}/operations/{op}/result/0", timeout=30).json()
        assert result["results"]["data"][0]["fields"] == ["default_catalog"]
    finally:
        http.delete(f"{gw}/v1/sessions/{session}", timeout=10)


def test_the_ui_front_door_asks_for_the_login_and_only_reads(stack, settings):
    job = flink_deploy.wait_running(settings)
    base, login = f"http://127.0.0.1:{settings.flink_ui_port}", people_login(settings)
    assert requests.get(f"{base}/jobs/overview", timeout=10).status_code == 401
    assert requests.get(f"{base}/jobs/overview", auth=(login[0], login[1] + "x"), timeout=10).status_code == 401
    jobs = requests.get(f"{base}/jobs/overview", auth=login, timeout=10).json()["jobs"]
    assert [j["state"] for j in jobs if j["jid"] == job] == ["RUNNING"]
    refused = [
        ("PATCH", f"/jobs/{job}?mode=cancel"), ("GET", f"/jobs/{job}/yarn-cancel"), ("GET", f"/jobs/{job}/yarn-stop"),
        ("GET", f"//jobs/{job}/yarn-cancel/"), ("POST", f"/jobs/{job}/stop"), ("POST", f"/jobs/{job}/savepoints"),
        ("POST", "/jobs"), ("POST", "/jars/upload"), ("DELETE", "/cluster"),
        # Flink serves every file of its log folder, the stack's logs/: others' logs stay behind the door.
        ("GET", "/jobmanager/logs/airflow-api.log"), ("GET", "/jobmanager/logs/%61irflow-api.log"),
        ("GET", "/jobmanager/logs/flink-jobmanager.log%2F..%2Fpostgres.log"),
        ("GET", "/taskmanagers/tm-1/logs/kafka.log"),
    ]
    for method, path in refused:
        assert requests.request(method, base + path, auth=login, timeout=10).status_code == 403, (method, path)
    assert requests.get(f"{base}/jobmanager/logs/flink-jobmanager.log", auth=login, timeout=10).status_code == 200
    assert flink_deploy.running_job(settings)["jid"] == job


def test_no_page_behind_the_door_shows_a_password(stack, settings):
    """The job's SQL holds the stream's Kafka password: Flink keeps it in the job graph, and none of the UI's
    routes (job, plan, configs, exceptions, logs) may show it, nor the stores' password."""
    job = flink_deploy.wait_running(settings)
    base, login = f"http://127.0.0.1:{settings.flink_ui_port}", people_login(settings)
    tm = requests.get(f"{base}/taskmanagers", auth=login, timeout=10).json()["taskmanagers"][0]["id"]
    vertices = requests.get(f"{base}/jobs/{job}", auth=login, timeout=10).json()["vertices"]
    paths = [f"/jobs/{job}", f"/jobs/{job}/plan", f"/jobs/{job}/config", f"/jobs/{job}/exceptions",
             f"/jobs/{job}/checkpoints/config", "/jobmanager/config", "/jobmanager/environment", "/jobmanager/log",
             "/jobmanager/stdout", f"/taskmanagers/{tm}", f"/taskmanagers/{tm}/log", "/config",
             *(f"/jobs/{job}/vertices/{v['id']}" for v in vertices)]
    secrets = {"the stream's Kafka password": settings.kafka_stream_password.get_secret_value(),
               "the stores' password": (settings.flink_tls_dir / "store.password").read_text().strip()}
    for path in paths:
        page = requests.get(base + path, auth=login, timeout=30)
        assert page.status_code == 200, path
        for name, secret in secrets.items():
            assert secret not in page.text, f"{path} shows {name}"


def test_a_person_logs_in_to_the_flink_ui_in_chromium_and_sees_the_job_graph(stack, settings):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make setup` installs it (as root)"
    job = flink_deploy.wait_running(settings)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "flink-ui-job.png"
    shot.unlink(missing_ok=True)
    user, password = people_login(settings)
    url = f"http://127.0.0.1:{settings.flink_ui_port}/#/job/running/{job}/overview"
    failures: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            wrong = browser.new_context(http_credentials={"username": user, "password": password + "x"})
            assert wrong.new_page().goto(url, timeout=60_000).status == 401
            context = browser.new_context(viewport={"width": 1400, "height": 900},
                                          http_credentials={"username": user, "password": password})
            page = context.new_page()
            page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on("pageerror", lambda err: failures.append(f"script error: {err}"))
            assert page.goto(url, timeout=60_000).status == 200
            page.wait_for_selector("flink-dagre svg g.node", timeout=60_000)
            nodes = page.locator("flink-dagre svg g.node")
            graph = " ".join(nodes.nth(i).text_content() or "" for i in range(nodes.count()))
            cancel_buttons = page.get_by_text("Cancel Job").count()
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert failures == []
    # The job's operators, as Flink planned flink/*.sql: the Kafka source and the three sinks' writers.
    assert "KafkaSource" in graph and graph.count("Writer") >= 3, graph
    assert cancel_buttons == 0  # web.cancel.enable: false, so the UI offers nothing the door would refuse
    assert shot.stat().st_size > 10_000
