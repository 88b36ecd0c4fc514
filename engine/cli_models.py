"""``riskstream models ...`` and ``riskstream train``: the model registry and training commands.

Composition-root code like :mod:`engine.cli`: stage packages and ``replay`` are imported inside
the commands so that ``riskstream --help`` stays fast. Errors are raised as
:class:`ModelsCliError` (or the stage's own ``...Error``), which ``engine.cli.main`` prints as one
line with exit code 2.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from models.registry import ModelRegistry, Roles
    from replay.training import TrainingReport

app = typer.Typer(
    name="models",
    help="The model registry: list, show, promote, shadow, retire.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


class ModelsCliError(Exception):
    """A user-facing error of the models/train commands (one line, exit code 2)."""


def _registry() -> ModelRegistry:
    from engine.settings import Settings
    from models.registry import ModelRegistry

    return ModelRegistry(Settings().models_dir)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if value != value else f"{value:.4f}"  # noqa: PLR0124 - nan check
    return "—" if value is None else str(value)


def _print_roles(roles: Roles) -> None:
    out.print(f"champion: {roles.champion or '— (rules only)'}")
    out.print(f"shadows:  {', '.join(roles.shadows) or '—'}")


@app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every registered model, oldest first, with its role and validation metrics."""
    rows = _registry().list()
    if as_json:
        slim = [{k: v for k, v in m.items() if k != "reference_histograms"} for m in rows]
        print(json.dumps(slim, indent=2, sort_keys=True))
        return
    table = Table(title=f"models ({len(rows)})")
    for col in ("version", "role", "created", "trees", "AUC ROC", "AP", "CP@100", "training"):
        table.add_column(col, justify="right" if col in ("trees", "AUC ROC", "AP", "CP@100")
                         else "left", no_wrap=col in ("version", "role"))  # fmt: skip
    for m in rows:
        metrics = m.get("metrics") or {}
        window = m.get("training_window") or {}
        table.add_row(
            m["version"],
            m.get("role", "champion" if m.get("champion") else "candidate"),
            str(m.get("created_at", ""))[:19],
            _fmt(m.get("num_trees")),
            _fmt(metrics.get("auc_roc")),
            _fmt(metrics.get("average_precision")),
            _fmt(metrics.get("card_precision_at_100")),
            f"{str(window.get('start', ''))[:10]} .. {str(window.get('end', ''))[:10]}"
            if isinstance(window, dict) and window else "—",
        )  # fmt: skip
    out.print(table)


@app.command()
def show(
    version: Annotated[str, typer.Argument(help="Model version (12 hex characters).")],
    full: Annotated[bool, typer.Option(help="Include the reference histograms.")] = False,
) -> None:
    """A model's metadata (role, feature names, windows, metrics, data fingerprint) as JSON."""
    registry = _registry()
    meta = registry.metadata(version)
    meta["role"] = registry.role(version)
    if not full and "reference_histograms" in meta:
        hist = meta["reference_histograms"]
        meta["reference_histograms"] = {
            "features": sorted((hist.get("features") or {}).keys()),
            "score": "present" if hist.get("score") else None,
            "hint": "--full prints the histograms",
        }
    print(json.dumps(meta, indent=2, sort_keys=True))


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
) -> None:
    """Make VERSION the champion; running workers switch within seconds, without restart."""
    _print_roles(_registry().promote(version))


@app.command()
def shadow(
    version: Annotated[str, typer.Argument(help="Model version to score in shadow.")],
) -> None:
    """Score VERSION in shadow on every transaction (recorded and evaluated, never deciding)."""
    _print_roles(_registry().shadow(version))


@app.command()
def retire(
    version: Annotated[str, typer.Argument(help="Model version to stop scoring.")],
) -> None:
    """Stop scoring VERSION (a shadow or candidate); its files stay for audit and rollback."""
    _print_roles(_registry().retire(version))


# ----------------------------------------------------------------------------------- train


def _print_report(report: TrainingReport) -> None:
    table = Table(title=f"model {report.version}: held-out metrics")
    for col in ("period", "model", "AUC ROC", "AP", "CP@100", "rows", "fraud rate"):
        table.add_column(col, justify="left" if col in ("period", "model") else "right")
    for period, by_model in report.metrics.items():
        for model, m in by_model.items():
            table.add_row(
                period, model, _fmt(m.get("auc_roc")), _fmt(m.get("average_precision")),
                _fmt(m.get("card_precision_at_100")), f"{int(m.get('n', 0)):,}",
                f"{m.get('positive_rate', float('nan')):.3%}",
            )  # fmt: skip
    out.print(table)
    out.print(
        f"replay {report.replay_events_per_second:,.0f} events/s; total {report.seconds:.1f}s; "
        + ("[green]promoted to champion[/]" if report.promoted
           else f"promote with: riskstream models promote {report.version}"),
        soft_wrap=True,
    )  # fmt: skip


def train(
    transactions: Annotated[Path, typer.Option(help="Transactions file (.parquet/.csv/.jsonl).")],
    train_start: Annotated[str, typer.Option(help="First training time (YYYY-MM-DD, ISO, ms).")],
    train_end: Annotated[str, typer.Option(help="End of training = start of validation.")],
    valid_end: Annotated[
        str | None, typer.Option(help="End of the validation period (default: end of file).")
    ] = None,
    test_end: Annotated[
        str | None, typer.Option(help="Optional held-out test period [valid-end, test-end).")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Labels file (event_id, ts, is_fraud[, source]).")
    ] = None,
    label_delay: Annotated[
        str | None, typer.Option(help="Without --labels: is_fraud known this late (e.g. 1d).")
    ] = None,
    label_lag: Annotated[
        str, typer.Option(help="Max event-time lag of a label behind its arrival in replay.")
    ] = "5m",
    warmup: Annotated[
        str | None,
        typer.Option(
            help="History replayed before --train-start (default: longest feature window)."
        ),  # fmt: skip
    ] = None,
    scratch_db: Annotated[
        int, typer.Option(help="Redis DB used (and flushed) when RISKSTREAM_REDIS_URL is set.")
    ] = 15,
    rounds: Annotated[
        int, typer.Option(min=1, help="Max boosting rounds (early stopping).")
    ] = 1000,
    promote_it: Annotated[
        bool, typer.Option("--promote", help="Promote the new model to champion.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show the replay progress bar.")] = True,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first bad row instead of quarantining it.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Directory for rejected.parquet (default DATA_DIR/train).")
    ] = None,
) -> None:
    """Train LightGBM on features replayed through the pipeline; evaluate; register."""
    if labels is not None and label_delay is not None:
        msg = "give either --labels or --label-delay, not both"
        raise ModelsCliError(msg)
    if not transactions.is_file():
        msg = f"--transactions: no such file: {transactions}"
        raise ModelsCliError(msg)
    if labels is not None and not labels.is_file():
        msg = f"--labels: no such file: {labels}"
        raise ModelsCliError(msg)
    import redis

    from engine.settings import Settings
    from engine.stack import EmbeddedStack
    from features.spec import parse_duration
    from replay.training import (
        TrainingConfig,
        claim_scratch,
        parse_time,
        scratch_url,
        train_from_history,
    )

    def duration_ms(name: str, value: str) -> int:
        try:
            return parse_duration(value) * 1000
        except ValueError as exc:
            msg = f"{name}: {exc}"
            raise ModelsCliError(msg) from exc

    cfg = TrainingConfig(
        transactions=transactions,
        labels=labels,
        train_start=parse_time(train_start),
        train_end=parse_time(train_end),
        valid_end=parse_time(valid_end) if valid_end is not None else None,
        test_end=parse_time(test_end) if test_end is not None else None,
        label_delay_ms=duration_ms("--label-delay", label_delay) if label_delay else None,
        label_lag_ms=duration_ms("--label-lag", label_lag),
        warmup_ms=duration_ms("--warmup", warmup) if warmup else None,
        num_boost_round=rounds,
        promote=promote_it,
        progress=progress,
        strict=strict,
        out=out,
    )
    settings = Settings()
    with ExitStack() as stack:
        live_url = os.environ.get("RISKSTREAM_REDIS_URL")
        if live_url:
            url = scratch_url(live_url, scratch_db)
            client = redis.Redis.from_url(url)
            claim_scratch(client, live_url, url)
        else:
            err.print("starting a private Redis-protocol server for the replay")
            url = stack.enter_context(EmbeddedStack()).redis_url
            client = redis.Redis.from_url(url)
        stack.callback(client.close)
        report = train_from_history(settings, cfg, client, log=err.print)
    _print_report(report)
