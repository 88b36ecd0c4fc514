"""Static checks of the deployment files: compose.yaml, Dockerfile and deploy/prometheus/*.

Nothing here needs Docker: the files are parsed and compared with the code's own contracts
(``engine.settings.Settings`` field names, the metric names of DESIGN.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
ALERTS_YML = PROMETHEUS_DIR / "alerts.yml"

#: DESIGN.md, "Metric names".
DESIGN_METRICS = frozenset(
    {
        "riskstream_events_total",
        "riskstream_decisions_total",
        "riskstream_decision_latency_seconds",
        "riskstream_stage_seconds",
        "riskstream_feature_psi",
        "riskstream_score_psi",
        "riskstream_drift_detected_total",
        "riskstream_review_queue_depth",
        "riskstream_dead_letter_total",
        "riskstream_model_info",
        "riskstream_model_average_precision",
    }
)
#: Histograms also expose these series.
HISTOGRAMS = frozenset({"riskstream_decision_latency_seconds", "riskstream_stage_seconds"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

PROMQL_KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
        "and", "or", "unless", "offset", "inf", "nan",
    }
)  # fmt: skip

ENV_PREFIX = "RISKSTREAM_"


# ---------------------------------------------------------------------------------------------
# helpers


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load(COMPOSE)
    assert isinstance(data, dict)
    assert isinstance(data.get("services"), dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` in either compose form (mapping or list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {k: v for k, v in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
)


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose variable interpolation: ``$$``, ``${X}``, ``${X:-default}``, ``${X:?error}``."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op in (":?", "?"):
            msg = f"compose needs {name}: {arg}"
            raise LookupError(msg)
        return arg if op in (":-", "-") else ""

    return _INTERPOLATION.sub(repl, value)


def _bind_sources(service: dict[str, Any]) -> list[str]:
    """Host paths of a service's bind mounts (short and long volume syntax)."""
    sources = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                sources.append(source)
        elif vol.get("type") == "bind":
            sources.append(vol["source"])
    return sources


def _promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers not functions, keywords or labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range / subquery durations
    # label lists of by / without / on / ignoring / group_left / group_right
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    names = set()
    # A function call, or an aggregation operator followed by its grouping clause, is no metric.
    pattern = r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*(?:\(|\bby\b|\bwithout\b))?"
    for m in re.finditer(pattern, text):
        ident, call = m.group(1), m.group(2)
        if call or ident.lower() in PROMQL_KEYWORDS:
            continue
        names.add(ident)
    return names


def _alert_rules() -> list[dict[str, Any]]:
    data = _load(ALERTS_YML)
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


# ---------------------------------------------------------------------------------------------
# compose.yaml


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    assert {"kafka", "redis", "worker", "prometheus"} <= set(compose["services"])


def test_every_riskstream_variable_is_a_settings_field(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    seen = 0
    for name, service in compose["services"].items():
        for key in _environment(service):
            if key.startswith(ENV_PREFIX):
                seen += 1
                field = key.removeprefix(ENV_PREFIX).lower()
                assert field in fields, f"service {name}: {key} is not a Settings field"
    assert seen, "no RISKSTREAM_* variable in compose.yaml"


def test_worker_settings_validate(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    # What the operator must supply (${VAR:?...} in compose.yaml).
    host_env = {"RISKSTREAM_HASH_KEY": "test-secret-0123456789abcdef"}
    env = {
        k: _interpolate(v, host_env) for k, v in _environment(compose["services"]["worker"]).items()
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    from_env = Settings()
    kwargs = {
        k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)
    }
    from_kwargs = Settings(**kwargs)

    for s in (from_env, from_kwargs):
        assert s.kafka_bootstrap == "kafka:9092"
        assert s.redis_url == "redis://redis:6379/0"
        assert s.data_dir == Path("/data")
        assert s.web_host == "0.0.0.0"  # noqa: S104 - inside a container, on purpose
        assert s.web_port == 6066
        assert s.hash_key.get_secret_value() == host_env["RISKSTREAM_HASH_KEY"]
    assert from_env == from_kwargs


def test_worker_needs_a_hash_key_from_the_operator(compose: dict[str, Any]) -> None:
    """The built-in development key must never reach a deployed worker."""
    raw = _environment(compose["services"]["worker"])["RISKSTREAM_HASH_KEY"]
    with pytest.raises(LookupError):
        _interpolate(raw, {})


def test_worker_service_shape(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["build"] in (".", {"context": "."})
    command = worker["command"]
    assert (command if isinstance(command, str) else " ".join(command)) == "worker"
    assert worker["deploy"]["replicas"] >= 2
    for dep in ("kafka", "redis"):
        assert worker["depends_on"][dep]["condition"] == "service_healthy"
    # Enough partitions for every replica to own at least one.
    partitions = int(_environment(worker).get("RISKSTREAM_TOPIC_PARTITIONS", 4))
    assert partitions >= worker["deploy"]["replicas"]
    # Replicas cannot share a fixed host port.
    assert not worker.get("ports"), "a fixed host port would collide across replicas"
    assert "container_name" not in worker


@pytest.mark.parametrize("name", ["kafka", "redis"])
def test_healthchecks(compose: dict[str, Any], name: str) -> None:
    assert compose["services"][name]["healthcheck"]["test"]


def test_kafka_is_kraft_and_reachable_as_kafka_9092(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.0"
    env = _environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    assert controller in listeners
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert "kafka:9092" in advertised.values()
    assert controller not in advertised
    protocols = dict(
        item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) <= set(protocols)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"  # single node


def test_mounted_repo_files_exist(compose: dict[str, Any]) -> None:
    mounted = 0
    for name, service in compose["services"].items():
        for source in _bind_sources(service):
            mounted += 1
            assert (ROOT / source).exists(), f"service {name} mounts missing {source}"
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert (ROOT / context / dockerfile).is_file()
    assert mounted


def test_prometheus_mounts_its_config(compose: dict[str, Any]) -> None:
    sources = {
        Path(s).resolve()
        for s in (ROOT / p for p in _bind_sources(compose["services"]["prometheus"]))
    }
    assert PROMETHEUS_YML.resolve() in sources
    assert ALERTS_YML.resolve() in sources


# ---------------------------------------------------------------------------------------------
# Prometheus


def test_prometheus_config_scrapes_the_workers() -> None:
    config = _load(PROMETHEUS_YML)
    assert any(Path(f).name == "alerts.yml" for f in config["rule_files"])
    jobs = [j for j in config["scrape_configs"] if j.get("metrics_path", "/metrics") == "/metrics"]
    targets = set()
    for job in jobs:
        for sd in job.get("dns_sd_configs", []):
            targets |= {f"{n}:{sd['port']}" for n in sd["names"]}
        for sc in job.get("static_configs", []):
            targets |= set(sc["targets"])
    assert "worker:6066" in targets


def test_every_alert_is_complete() -> None:
    rules = _alert_rules()
    assert len(rules) >= 4
    for rule in rules:
        name = rule["alert"]
        assert isinstance(rule.get("expr"), str), name
        assert rule["expr"].strip(), name
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        assert rule.get("annotations", {}).get("summary"), name
        assert rule.get("annotations", {}).get("description"), name


def test_alerts_cover_the_on_call_cases() -> None:
    exprs = " ".join(rule["expr"] for rule in _alert_rules())
    for needle in (
        "riskstream_dead_letter_total",
        "riskstream_decision_latency_seconds_bucket",
        "riskstream_events_total",
        "riskstream_decisions_total",
        "riskstream_review_queue_depth",
    ):
        assert needle in exprs


def test_alert_metric_names_are_riskstream_metrics_and_design_names_exist() -> None:
    """Alerts use riskstream_ metrics of the code's registry (tests/unit/test_deploy_monitoring
    checks that), and every DESIGN.md metric is exported."""
    from engine.metrics import metric_names

    exported = metric_names()
    for name in DESIGN_METRICS:
        assert name in exported or {name + s for s in HISTOGRAM_SUFFIXES} <= exported, name
    for rule in _alert_rules():
        names = _promql_metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        for metric in names:
            assert metric.startswith("riskstream_"), f"{rule['alert']}: {metric}"
            assert metric in exported, f"{rule['alert']}: {metric} is not exported"


def test_promql_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(riskstream_decision_latency_seconds_bucket"
        '{job="x"}[5m]))) > 0.25 unless on (instance) up offset 5m'
    )
    assert _promql_metric_names(expr) == {"riskstream_decision_latency_seconds_bucket", "up"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH")
def test_promtool_check_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS_YML)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Dockerfile


def _final_stage(text: str) -> list[str]:
    """Instructions of the last build stage, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return lines[last_from:]


def _instruction(stage: list[str], keyword: str) -> str | None:
    found = [ln.split(None, 1)[1] for ln in stage if ln.split(None, 1)[0].upper() == keyword]
    return found[-1] if found else None


def test_dockerfile_entrypoint_and_runtime() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stage = _final_stage(text)
    assert stage[0].split()[1] == "python:3.11-slim"
    assert json.loads(_instruction(stage, "ENTRYPOINT") or "null") == ["riskstream"]
    assert json.loads(_instruction(stage, "CMD") or "null") == ["worker"]
    user = _instruction(stage, "USER")
    assert user is not None
    assert user.split(":")[0] not in {"root", "0"}
    assert "/data" in (_instruction(stage, "VOLUME") or "")
    assert "RISKSTREAM_DATA_DIR=/data" in " ".join(
        ln for ln in stage if ln.upper().startswith("ENV ")
    )
    assert re.search(r"pip install[^\n]*\s\.(\s|$)", text, flags=re.MULTILINE)


def test_dockerfile_env_names_settings_fields() -> None:
    fields = set(Settings.model_fields)
    for name in re.findall(r"\b(RISKSTREAM_[A-Z0-9_]+)=", DOCKERFILE.read_text(encoding="utf-8")):
        assert name.removeprefix(ENV_PREFIX).lower() in fields, name


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = {
        ln.strip() for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    }
    assert {".git", ".venv"} <= ignored
