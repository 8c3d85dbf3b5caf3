"""The monitoring dashboard: Prometheus' console templates (monitoring/consoles), rendered by Debian's Chromium
against the running stack, behind the people's login, with real series drawn."""

from __future__ import annotations

import shutil

import requests

from cryptopipe.settings import ROOT
from ops.monitoring import people_login

from .helpers import wait_for

ARTIFACTS = ROOT / "test-artifacts"
PAGES = ("index", "source", "kafka", "stream", "connect", "sinks", "host")
# Overview graphs whose series exist on any running stack: every stage's topic counts and request times come
# from the broker, lag and dead-letter depths from the monitor.
DRAWN_ON_THE_OVERVIEW = ("stage_rates", "latencies", "consumer_lag", "dlq_depth")


def drawn(page, graph: str) -> list[str]:
    """The series names a graph drew (its legend), once it has stopped loading; [] for an empty graph."""
    page.wait_for_selector(f"#{graph} img.prom_graph_loading", state="detached", timeout=60_000)
    # Attached, not visible: a series flat at zero is a line of no height.
    page.wait_for_selector(f"#{graph} td.rickshaw_graph svg path.path, #{graph} .prom_graph_error", state="attached",
                           timeout=60_000)
    if page.locator(f"#{graph} td.rickshaw_graph svg path.path").count() == 0:
        return []
    return page.locator(f"#{graph} .rickshaw_legend li.line span.label").all_inner_texts()


def test_every_console_page_asks_for_the_login_and_renders(stack, settings):
    base = f"http://127.0.0.1:{settings.prometheus_port}/consoles"
    for name in PAGES:
        assert requests.get(f"{base}/{name}.html", timeout=10).status_code == 401, name
        page = requests.get(f"{base}/{name}.html", auth=people_login(settings), timeout=10)
        assert page.status_code == 200, (name, page.text[:300])
        assert "error executing template" not in page.text and "crypto pipeline" in page.text, name


def test_the_overview_draws_real_series_in_chromium(stack, settings):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make setup` installs it (as root)"
    # Graphs look back an hour: a stack just started needs a few scrapes before its lines have two points.
    wait_for(lambda: requests.get(f"http://127.0.0.1:{settings.prometheus_port}/api/v1/query",
                                  params={"query": "count_over_time(up[5m]) > 2"}, auth=people_login(settings),
                                  timeout=10).json()["data"]["result"],
             6 * settings.scrape_interval_s, "three scrapes in Prometheus")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "console-overview.png"
    shot.unlink(missing_ok=True)
    user, password = people_login(settings)
    failures: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                          http_credentials={"username": user, "password": password})
            page = context.new_page()
            page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on("pageerror", lambda err: failures.append(f"script error: {err}"))
            page.goto(f"http://127.0.0.1:{settings.prometheus_port}/consoles/index.html", timeout=60_000)
            series = {graph: drawn(page, graph) for graph in DRAWN_ON_THE_OVERVIEW}
            menu = page.locator("#pipeline_menu a").all_inner_texts()
            page.screenshot(path=str(shot), full_page=True)
            host = context.new_page()
            host.goto(f"http://127.0.0.1:{settings.prometheus_port}/consoles/host.html", timeout=60_000)
            host_series = drawn(host, "host_cpu")
        finally:
            browser.close()
    assert failures == []
    for graph, names in series.items():
        assert names and all(n.strip() for n in names), f"{graph} drew no series"
    # The lag graph's lines are the pipeline's consumer groups, the dead letters' its dead-letter topics.
    assert any(settings.stream_consumer_group in n for n in series["consumer_lag"]), series["consumer_lag"]
    assert any(settings.dlq_topic("stream") in n for n in series["dlq_depth"]), series["dlq_depth"]
    assert len(menu) == len(PAGES), menu
    assert host_series, "the host page drew no CPU series"
    assert shot.stat().st_size > 20_000
