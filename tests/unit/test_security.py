"""Security basics, black-box where it matters: the worker binds localhost by default, a
production worker refuses the development hash key, and rule files and feature specs cannot
execute code however hostile they are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.settings import DEV_HASH_KEY, Settings
from features.spec import load_spec
from rules import RuleSetError, load_rule_set
from tests.rules_support import FEATURES


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}


def test_web_endpoints_bind_localhost_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.app import create_app

    for k in [k for k in os.environ if k.startswith("RISKSTREAM_")]:
        monkeypatch.delenv(k)
    settings = Settings()
    assert settings.web_host == "127.0.0.1"
    app = create_app(settings)
    assert str(app.conf.web_bind) == "127.0.0.1"


@pytest.mark.parametrize("key", [None, DEV_HASH_KEY, "short"])
def test_production_refuses_the_development_hash_key(key: str | None) -> None:
    env = {"env": "production"} | ({"hash_key": key} if key else {})
    with pytest.raises(ValidationError, match="RISKSTREAM_HASH_KEY"):
        Settings(**env)  # type: ignore[arg-type]
    assert Settings(env="production", hash_key="x" * 40).env == "production"  # type: ignore[arg-type]
    assert Settings().env == "development"  # the dev key is fine outside production


def test_a_production_worker_does_not_start_with_the_dev_key(tmp_path: Path) -> None:
    env = {**_clean_env(), "RISKSTREAM_ENV": "production", "RISKSTREAM_DATA_DIR": str(tmp_path),
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # fmt: skip
    res = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "engine.cli", "worker"], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("riskstream: error:")]
    assert lines and "RISKSTREAM_HASH_KEY" in lines[0] and DEV_HASH_KEY not in res.stderr


HOSTILE_YAML = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "rules:\n  - !!python/object/apply:os.system ['touch {marker}']",
    "rules:\n  - {{id: x, condition: !!python/object/apply:os.system ['touch {marker}'], "
    "action: block, reason: r}}",
    "rules:\n  - {{id: x, condition: \"__import__('os').system('touch {marker}')\", "
    "action: block, reason: r}}",
    'rules:\n  - {{id: x, condition: "txn.__class__.__mro__", action: block, reason: r}}',
    "rules:\n  - {{id: x, condition: \"eval('1')\", action: block, reason: r}}",
    "rules:\n  - {{id: x, condition: \"exec('import os')\", action: block, reason: r}}",
    "rules:\n  - {{id: x, condition: !!python/name:os.system , action: block, reason: r}}",
]


@pytest.mark.parametrize("text", HOSTILE_YAML)
def test_hostile_rule_files_are_refused_and_run_nothing(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "pwned"
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "evil.yaml").write_text(text.format(marker=marker))
    with pytest.raises(RuleSetError):
        load_rule_set(rules, FEATURES)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "- !!python/object/apply:os.system ['touch {marker}']",
        "- {{entity: !!python/object/apply:os.system ['touch {marker}'], agg: count, "
        "window: 1h, resolution: 1m}}",
        "- {{entity: card_id, agg: \"__import__('os').system('touch {marker}')\", window: 1h, "
        "resolution: 1m}}",
        '- {{entity: "card_id; import os", agg: count, window: 1h, resolution: 1m}}',
        "- {{entity: card_id, agg: count, window: 1h, resolution: 1m, "
        'filter: {{field: "__class__", equals: !!python/name:os.system }}}}',
        "- {{entity: card_id, agg: count, window: 1h, resolution: 1m, "
        "filter: {{field: amount, equals: \"__import__('os')\"}}}}",
    ],
)
def test_hostile_feature_specs_are_refused_and_run_nothing(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "pwned"
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.format(marker=marker))
    with pytest.raises(ValueError):  # noqa: PT011 - any clear refusal; nothing may run
        load_spec(spec)
    assert not marker.exists()
