"""``make benchmark-handbook``: the handbook's world and protocol, our engine, its baselines.

Per seed: simulate the handbook world (5,000 customers, 10,000 terminals, from 2018-04-01),
backtest with its protocol (train on the 7 days from 2018-07-25, 7-day label delay, test on the
following 7 days, known compromised cards removed) and print the table beside the handbook's
best published figures on its own data.

Beside the oracle (scores = labels) the table shows a tighter ceiling: our scores with every fraud
the data could reveal at scoring time moved to the top (:func:`replay.metrics.revealed_frauds`:
a compromised terminal's frauds before a label of its current run is known look exactly like
legitimate payments), and how many test frauds were unrevealed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.settings import Settings
from replay.backtest import DAY_MS, Period, run_backtest
from replay.handbook import simulate_handbook
from replay.merge import parse_time
from replay.metrics import HANDBOOK_BASELINES
from replay.sources import write_transactions

console = Console(width=180)  # the table is wide; do not squeeze it into 80 columns
TRAIN_START = "2018-07-25"
COLUMNS = (
    "auc_roc", "average_precision", "card_precision_at_100",
    "revealed_ceiling_card_precision_at_100", "oracle_card_precision_at_100",
    "n_test", "n_test_frauds", "n_test_frauds_unrevealed",
    "events_per_second", "seconds",
)  # fmt: skip


_HEADERS = {
    "auc_roc": "AUC ROC", "average_precision": "AP", "card_precision_at_100": "CP@100",
    "revealed_ceiling_card_precision_at_100": "ceiling CP@100",
    "oracle_card_precision_at_100": "oracle CP@100", "n_test": "test txns",
    "n_test_frauds_unrevealed": "unrevealed frauds",
    "n_test_frauds": "test frauds", "events_per_second": "events/s", "seconds": "seconds",
}  # fmt: skip


def handbook_period() -> Period:
    t0 = parse_time(TRAIN_START)
    return Period(t0, t0 + 7 * DAY_MS, t0 + 14 * DAY_MS, t0 + 21 * DAY_MS)


def run_handbook_benchmark(seeds: list[int], out: Path, redis_url: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        console.print(f"[bold]seed {seed}[/]: simulating the handbook world")
        path = out / f"handbook-seed{seed}.parquet"
        write_transactions(simulate_handbook(seed=seed), path)
        settings = Settings(redis_url=redis_url, data_dir=out / f"data-seed{seed}")
        report = run_backtest(
            settings, path, handbook_period(), out / f"seed{seed}", label_delay_ms=7 * DAY_MS,
            seed=seed,
        )  # fmt: skip
        rows[f"seed {seed}"] = {k: report[k] for k in COLUMNS}
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in COLUMNS}
    result = {
        "seeds": seeds,
        "per_seed": rows,
        "mean": mean,
        "published": {
            "average_precision_random_forest": HANDBOOK_BASELINES["average_precision"][
                "random_forest"
            ],
            "card_precision_at_100_logistic_regression": HANDBOOK_BASELINES[
                "card_precision_at_100"
            ]["logistic_regression"],
        },
        "targets": {"average_precision": 0.72, "card_precision_at_100": 0.33},
    }
    (out / "handbook.json").write_text(json.dumps(result, indent=2) + "\n")
    _print(rows, mean)
    return result


def _print(rows: dict[str, dict[str, Any]], mean: dict[str, float]) -> None:
    table = Table(title="Handbook benchmark (test week 2018-08-08 .. 2018-08-14)")
    table.add_column("run", no_wrap=True)
    for k in COLUMNS:
        table.add_column(_HEADERS.get(k, k), justify="right", no_wrap=True)

    def fmt(v: Any, k: str = "") -> str:
        if isinstance(v, float) and math.isnan(v):
            return "-"
        if k.startswith("n_") or k == "events_per_second":  # counts and rates: whole numbers
            return f"{v:,.0f}"
        if k == "seconds":
            return f"{v:,.1f}"
        return f"{v:,.3f}" if isinstance(v, float) else f"{v:,}"

    for name, r in rows.items():
        table.add_row(name, *(fmt(r[k], k) for k in COLUMNS))
    table.add_row("[bold]mean[/]", *(fmt(mean[k], k) for k in COLUMNS))
    ap_rf = HANDBOOK_BASELINES["average_precision"]["random_forest"]
    cp_lr = HANDBOOK_BASELINES["card_precision_at_100"]["logistic_regression"]
    rest = len(COLUMNS) - 3
    table.add_row("handbook best (published)", "-", fmt(ap_rf), fmt(cp_lr), *["-"] * rest)
    table.add_row("target", "-", "0.720", "0.330", *["-"] * rest)
    console.print(table)
