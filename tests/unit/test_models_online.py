"""OnlineLogisticModel: cold start, learning, both scoring paths, NaN safety, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import roc_auc_score

from models import online
from models.errors import FeatureMismatchError
from models.online import OnlineLogisticModel

NAMES = ["amount_z", "card_count_1h", "ip_risk", "noise"]


def make_data(n: int, seed: int) -> tuple[npt.NDArray[np.float64], list[bool]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NAMES))) * [50.0, 3.0, 1.0, 10.0] + [100.0, 2.0, 0.0, 0.0]
    y = (x[:, 0] - 100.0) / 50.0 + (x[:, 1] - 2.0) / 3.0 > 1.5
    return x, y.tolist()


def test_cold_start_scores_zero() -> None:
    model = OnlineLogisticModel(NAMES)
    x, _ = make_data(300, 1)  # both scoring paths
    assert model.n_learned == 0
    np.testing.assert_array_equal(model.score_batch(x), np.zeros(300))
    np.testing.assert_array_equal(model.score_batch(x[:3]), np.zeros(3))


def test_learns_and_auc_improves() -> None:
    model = OnlineLogisticModel(NAMES)
    x_test, y_test = make_data(1000, 2)
    before = model.score_batch(x_test)
    assert roc_auc_score(y_test, before) == 0.5  # constant scores carry no ranking
    x, y = make_data(2000, 3)
    for start in range(0, 2000, 100):  # labels arrive in small batches
        model.learn_batch(x[start : start + 100], y[start : start + 100])
    assert model.n_learned == 2000
    after = model.score_batch(x_test)
    assert ((after >= 0.0) & (after <= 1.0)).all() and after.shape == (1000,)
    assert roc_auc_score(y_test, after) > 0.95


def test_unlabelled_rows_are_skipped() -> None:
    model = OnlineLogisticModel(NAMES)
    x, y = make_data(4, 4)
    model.learn_batch(x, [y[0], None, y[2], None])
    assert model.n_learned == 2
    with pytest.raises(ValueError, match="labels"):
        model.learn_batch(x, y[:3])


def trained_model(n: int = 500) -> OnlineLogisticModel:
    model = OnlineLogisticModel(NAMES, learning_rate=0.05)
    x, y = make_data(n, 5)
    model.learn_batch(x, y)
    return model


def test_batch_and_row_paths_agree_including_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model()
    x, _ = make_data(400, 6)
    x[::7, 1] = np.nan
    x[3, 0] = np.inf
    assert x.shape[0] >= online.MANY_THRESHOLD
    many = model.score_batch(x)
    monkeypatch.setattr(online, "MANY_THRESHOLD", 10**9)
    one = model.score_batch(x)
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-12)
    assert np.isfinite(many).all()


def test_array_path_equals_rivers_frame_path_bit_for_bit() -> None:
    model = trained_model()
    x, _ = make_data(300, 8)
    x[::5, 2] = np.nan
    x[:, 3] = 1.0  # a constant column: zero variance, left unscaled as River does
    model.learn_batch(x[:100], [bool(i % 9 == 0) for i in range(100)])
    assert np.array_equal(model._proba_many(x), model._proba_many_river(x))


def test_nan_never_poisons_learning() -> None:
    model = trained_model()
    x, y = make_data(50, 7)
    x[:, 2] = np.nan
    model.learn_batch(x, y)
    x_test, _ = make_data(200, 8)
    assert np.isfinite(model.score_batch(x_test)).all()


def test_version_is_stable_while_learning_and_depends_on_config() -> None:
    a, b = OnlineLogisticModel(NAMES), trained_model()
    assert a.version.startswith("river-logreg-")
    assert OnlineLogisticModel(NAMES).version == a.version
    assert OnlineLogisticModel(NAMES, learning_rate=0.05).version == b.version
    assert OnlineLogisticModel(NAMES[:3]).version != a.version
    assert b.snapshot == f"{b.version}@500"


def test_save_load_restores_identical_predictions(tmp_path: Path) -> None:
    model = trained_model()
    path = tmp_path / "ckpt" / "river.pkl"
    model.save(path)
    restored = OnlineLogisticModel.load(path)
    assert (restored.version, restored.n_learned) == (model.version, model.n_learned)
    x, y = make_data(300, 9)
    np.testing.assert_array_equal(restored.score_batch(x), model.score_batch(x))
    np.testing.assert_array_equal(restored.score_batch(x[:5]), model.score_batch(x[:5]))
    # and it keeps learning exactly like the original would
    model.learn_batch(x, y)
    restored.learn_batch(x, y)
    np.testing.assert_array_equal(restored.score_batch(x), model.score_batch(x))
    assert [p.name for p in path.parent.iterdir()] == ["river.pkl"]


def test_load_rejects_foreign_pickle(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="not an OnlineLogisticModel checkpoint"):
        OnlineLogisticModel.load(path)


def test_feature_mismatch_raises() -> None:
    model = trained_model()
    with pytest.raises(FeatureMismatchError):
        model.score_batch(np.zeros((2, len(NAMES) + 1)))
    with pytest.raises(FeatureMismatchError):
        model.learn_batch(np.zeros((2, 1)), [True, False])
