"""The models satisfy the engine's protocols structurally (checked by mypy, smoke-run here).

Only this test imports ``engine``; the ``models`` package itself never does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightgbm as lgb
import numpy as np

from engine.protocols import BatchScorer, OnlineLearner
from models.lgbm import LightGBMScorer
from models.online import OnlineLogisticModel

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def as_batch_scorer(scorer: LightGBMScorer) -> BatchScorer:
    return scorer  # mypy: LightGBMScorer must be a structural BatchScorer


def as_online_learner(model: OnlineLogisticModel) -> OnlineLearner:
    return model  # mypy: OnlineLogisticModel must be a structural OnlineLearner


def test_protocols_smoke(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = x[:, 0] > 0
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_threads": 2},
        lgb.Dataset(x, y.astype(int), feature_name=["a", "b"]),
        5,
    )
    scorer = as_batch_scorer(LightGBMScorer(booster))
    assert scorer.score_batch(x).shape == (200,)
    assert len(scorer.explain_batch(x, top=1)[0]) == 1
    learner = as_online_learner(OnlineLogisticModel(["a", "b"]))
    learner.learn_batch(x, y.tolist())
    assert learner.score_batch(x).shape == (200,)
    learner.save(tmp_path / "ckpt.pkl")


def test_models_never_import_engine_agents_or_faust() -> None:
    forbidden = {"engine", "agents", "faust", "mode"}
    for path in MODELS_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & forbidden, f"{path.name} imports {roots & forbidden}"
