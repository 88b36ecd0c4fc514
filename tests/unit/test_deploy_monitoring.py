"""On-call material in deploy/: every alert has a runbook and promtool unit tests, the Grafana
dashboard's queries parse, and no alert or panel refers to a metric the code never exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import metrics
from tests.drift_support import shortened_rules
from tests.unit.test_deploy_compose import _promql_metric_names

ROOT = Path(__file__).resolve().parents[2]
ALERTS_YML = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
RUNBOOKS = ROOT / "deploy" / "runbooks"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "riskstream.json"
COMPOSE = ROOT / "compose.yaml"
#: Series Prometheus itself adds to every scrape.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH")


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS_YML.read_text(encoding="utf-8"))
    return [r for g in data["groups"] for r in g["rules"] if "alert" in r]


def _panel_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def test_the_registry_lists_every_series_name() -> None:
    names = metrics.metric_names()
    assert "riskstream_decisions_total" in names  # a counter: _total
    assert "riskstream_decision_latency_seconds_bucket" in names  # a histogram: _bucket
    assert "riskstream_feature_psi" in names and "riskstream_feature_ks" in names


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_referenced_is_exported_by_the_code(source: str) -> None:
    """A rule or panel on a metric nobody emits would stay silent forever."""
    exported = metrics.metric_names() | PROMETHEUS_SERIES
    exprs = [(r["alert"], r["expr"]) for r in _rules()] if source == "alerts" else _panel_exprs()
    assert exprs
    for where, expr in exprs:
        names = _promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{where}: {sorted(unknown)} not in engine/metrics.py"


def test_every_alert_links_a_runbook_that_exists_and_says_what_to_do() -> None:
    for rule in _rules():
        url = rule["annotations"].get("runbook_url", "")
        assert url == f"deploy/runbooks/{rule['alert']}.md", rule["alert"]
        text = (ROOT / url).read_text(encoding="utf-8")
        assert text.startswith(f"# {rule['alert']}\n")
        for section in ("## Meaning", "## What to check", "## What to do"):
            assert section in text, f"{url} lacks {section}"


def test_every_alert_has_a_promtool_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load(ALERTS_TEST_YML.read_text(encoding="utf-8"))["tests"]
    fired = {
        case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")
    }
    assert {r["alert"] for r in _rules()} <= fired


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", ALERTS_TEST_YML.name], cwd=ALERTS_TEST_YML.parent,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query, as a recording rule, passes ``promtool check rules`` (PromQL parser)."""
    assert PROMTOOL is not None
    rules = [
        {"record": f"riskstream:panel_{i}", "expr": expr}
        for i, (_, expr) in enumerate(_panel_exprs())
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_covers_what_on_call_needs() -> None:
    exprs = " ".join(e for _, e in _panel_exprs())
    for needle in (
        "riskstream_events_total",  # throughput
        "riskstream_decision_latency_seconds_bucket",  # latency quantiles
        "riskstream_decisions_total",  # decision mix
        "riskstream_review_queue_depth",
        "riskstream_dead_letter_total",
        "riskstream_feature_psi",  # drift per feature
        "riskstream_model_average_precision",
    ):
        assert needle in exprs, needle
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "riskstream"


def test_compose_provisions_grafana_with_the_dashboard() -> None:
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert {"prometheus", "alertmanager", "grafana"} <= set(services)
    mounts = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/dashboards" in mounts and "./deploy/grafana/provisioning" in mounts
    datasources = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    ds = yaml.safe_load(datasources.read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["uid"] == "prometheus"


def test_test_only_rule_overrides_change_durations_only() -> None:
    original = ALERTS_YML.read_text(encoding="utf-8")
    short = shortened_rules(original)
    assert "for: 30m" in original and "for: 30m" not in short and "for: 3s" in short
    strip = re.compile(r"for:\s*\S+|\[\d+[smh]\]")
    assert strip.sub("", short) == strip.sub("", original)
