"""The dashboard and the alert rules name only what the service exposes, and they work.

Every metric (and every label a selector matches on) that a Grafana panel or an
alert rule names must be one a real ``uvicorn app.main:app`` process exposes at
``/metrics`` after answering a prediction. The rules pass ``promtool check rules``,
their unit tests (``deploy/monitoring/catdog-rules.test.yml``) fire each alert on
synthetic series, and the dashboard's queries parse as PromQL (promtool checks them
as recording rules). promtool comes with Debian's ``prometheus`` package
(``.ci/run`` installs it); without it those tests skip and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from servicekit import start_uvicorn, stop, wait_ready
from tests.app.helpers import good_image
from tests.deploy import k8s

MONITORING = k8s.ROOT / "deploy" / "monitoring"
RULES = MONITORING / "catdog-rules.yml"
RULE_TESTS = MONITORING / "catdog-rules.test.yml"
DASHBOARD = MONITORING / "grafana" / "catdog.json"
PROMETHEUS_RULE = k8s.K8S / "common" / "prometheusrule.yaml"
PROMETHEUS_CONFIG = k8s.ROOT / "docker" / "prometheus.yml"
SHIPPED = k8s.ROOT / "models" / "catdog"
# Labels Prometheus adds to every scraped series (target labels), and a histogram's own.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "service", "endpoint"}
# What the issue asks the dashboard to show, as the metric each panel must read.
PANEL_METRICS = {
    "requests/s by status": "catdog_requests_total",
    "p50/p99": "catdog_request_duration_seconds_bucket",
    "images in flight": "catdog_images_in_flight",
    "batch size": "catdog_batch_size_bucket",
    "503 rate": "catdog_rejected_total",
    "neither share": "catdog_predictions_total",
    "served version": "catdog_model_version",
}
ALERTS = {
    "CatdogNoReadyReplica",
    "CatdogHighErrorRate",
    "CatdogSlowAnswers",
    "CatdogNeitherShareDoubled",
}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; .ci/run does)"
)

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"\b(catdog_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


# ---------------------------------------------------------------- what the files name


def rule_exprs() -> dict[str, str]:
    """Alert name -> PromQL of every rule in the rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r.get("alert") or r["record"]: r["expr"] for g in groups for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    """``panel title / refId`` -> PromQL of every query of the dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {f"{p['title']} / {t['refId']}": t["expr"] for p in panels for t in p["targets"]}


def selectors(expr: str) -> dict[str, set[str]]:
    """Metric name -> the label names its selectors match on, in one PromQL expression."""
    found: dict[str, set[str]] = {}
    for name, braces in _SELECTOR.findall(expr):
        labels = set(_MATCHER.findall(braces)) if braces else set()
        found.setdefault(name, set()).update(labels)
    return found


def all_selectors() -> dict[str, dict[str, set[str]]]:
    named = {f"rule {k}": v for k, v in rule_exprs().items()}
    named.update({f"panel {k}": v for k, v in dashboard_exprs().items()})
    return {where: selectors(expr) for where, expr in named.items()}


# ---------------------------------------------------------------- what the service exposes


def exposed(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from a /metrics page (families without samples yet
    included under the names their type gives them)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
    }
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture(scope="module")
def served_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real server's /metrics page after one prediction."""
    log = tmp_path_factory.mktemp("monitoring") / "server.log"
    server = start_uvicorn(SHIPPED, log, poll_interval_s=0)
    try:
        wait_ready(server)
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            files = {"file": ("cat.jpg", good_image(), "image/jpeg")}
            assert client.post("/predict", files=files).status_code == 200
            text = client.get("/metrics").text
    finally:
        stop(server)
    return text


@pytest.fixture(scope="module")
def served_metrics(served_page: str) -> dict[str, set[str]]:
    """Sample name -> label names of that page."""
    return exposed(served_page)


def test_a_ready_replica_reports_ready(served_page: str) -> None:
    """The gauge the no-ready-replica alert and the dashboard read."""
    [ready] = [
        s.value
        for f in text_string_to_metric_families(served_page)
        for s in f.samples
        if s.name == "catdog_ready"
    ]
    assert ready == 1.0


def test_every_metric_named_is_exposed(served_metrics: dict[str, set[str]]) -> None:
    missing = [
        f"{where}: {name}"
        for where, found in all_selectors().items()
        for name in found
        if name not in served_metrics
    ]
    assert not missing, missing


def test_every_label_matched_is_one_the_metric_has(served_metrics: dict[str, set[str]]) -> None:
    wrong = []
    for where, found in all_selectors().items():
        for name, labels in found.items():
            known = served_metrics.get(name, set()) | TARGET_LABELS
            wrong += [f"{where}: {name}{{{label}}}" for label in labels - known]
    assert not wrong, wrong


def test_the_name_check_would_catch_a_typo() -> None:
    assert selectors('rate(catdog_request_total{status=~"5.."}[5m])') == {
        "catdog_request_total": {"status"}
    }
    assert "catdog_request_total" not in exposed("# TYPE catdog_requests counter\n")


def test_the_dashboard_has_the_panels_asked_for() -> None:
    named = {name for found in all_selectors().values() for name in found}
    panel_names = {
        name
        for where, found in all_selectors().items()
        if where.startswith("panel")
        for name in found
    }
    missing = {what: m for what, m in PANEL_METRICS.items() if m not in panel_names}
    assert not missing, missing
    assert named  # the regex found something at all
    dashboard = json.loads(DASHBOARD.read_text())
    [variable] = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_rules_are_the_alerts_asked_for() -> None:
    assert set(rule_exprs()) == ALERTS


def test_the_kubernetes_rule_carries_the_same_groups() -> None:
    [doc] = k8s.load_file(PROMETHEUS_RULE)
    assert doc["spec"] == yaml.safe_load(RULES.read_text())


# ---------------------------------------------------------------- promtool


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_alert_fires_in_promtool_unit_tests() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    assert fired == ALERTS, ALERTS - fired
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_fail_when_an_alert_does_not_fire(tmp_path: Path) -> None:
    """The unit tests bite: with the error-rate bound at 5%, the 1.96% case fails."""
    rules = RULES.read_text().replace("> 0.01", "> 0.05")
    (tmp_path / RULES.name).write_text(rules)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert result.returncode != 0 and "CatdogHighErrorRate" in result.stdout + result.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"catdog:panel_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(dashboard_exprs().values())
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_compose_prometheus_config_passes_promtool() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
