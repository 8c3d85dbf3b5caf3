"""Prometheus alert rules (monitoring/rules): valid, proven by promtool's unit tests, and each one actionable."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from cryptopipe.settings import ROOT

RULES = ROOT / "monitoring" / "rules" / "pipeline.rules.yml"
TESTS = ROOT / "monitoring" / "rules" / "pipeline.test.yml"


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run `make setup`")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["check", "test"])
def test_promtool_accepts_the_rules_and_their_tests(command):
    target = RULES if command == "check" else TESTS
    result = promtool(command, "rules", str(target.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_says_how_bad_where_and_what_to_do(rule):
    assert "for" in rule
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule["labels"]["component"]
    assert rule["annotations"]["summary"]
    runbook = rule["annotations"]["runbook"]
    assert "make " in runbook or "logs/" in runbook, runbook


def test_every_alert_has_a_promtool_case_where_it_fires():
    firing = {case["alertname"]
              for test in yaml.safe_load(TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    assert {rule["alert"] for rule in alert_rules()} - firing == set()
