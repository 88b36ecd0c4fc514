"""``riskstream review ...``: the analyst web app and the same operations for scripts.

Mounted by :mod:`engine.cli`. ``list``, ``show`` and ``decide`` call the very code the pages
call (:class:`engine.review.service.ReviewService`), so a script and a browser see and do the
same. Misuse prints one line and exits 2.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="review",
    help="The analyst review app: serve it, manage users, list/show/decide cases.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    print(f"riskstream: error: {message}", file=sys.stderr)
    return typer.Exit(2)


def _service() -> Any:
    """The review service on the configured Redis; one clear line if it cannot be reached."""
    import redis

    from engine.review.service import ReviewService
    from engine.settings import Settings

    settings = Settings()
    svc = ReviewService(settings)
    try:
        svc.redis.ping()
    except redis.RedisError as exc:
        msg = f"cannot reach Redis at {settings.redis_url}: {exc}"
        raise _fail(msg) from None
    return svc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Serve the review app; also follows the labels topic for the lead's agreement figures."""
    import uvicorn

    from engine.review.service import OutcomeFollower, ReviewService
    from engine.review.web import create_review_app
    from engine.settings import Settings

    settings = Settings()
    service: ReviewService = _service()
    service.refresh()
    service.publish_outbox()  # labels of verdicts written while the broker was away
    follower = OutcomeFollower(settings, service.store)
    follower.start()
    host = host or settings.review_host
    port = settings.review_port if port is None else port
    err.print(f"review app on http://{host}:{port}/ ({len(service.index)} cases queued)")
    try:
        uvicorn.run(create_review_app(settings, service), host=host, port=port,
                    log_level="warning", timeout_graceful_shutdown=3)  # fmt: skip
    finally:
        follower.stopping.set()


@app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="User name (a-z 0-9 . _ -).")],
    role: Annotated[str, typer.Option(help="analyst or lead.")] = "analyst",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin (scripts).")
    ] = False,
) -> None:
    """Create or reset a user; the password is prompted for (or read from stdin)."""
    from engine.review.users import Accounts, UserError

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    svc = _service()
    try:
        user = Accounts(svc.redis).add_user(name, password, role)
    except UserError as exc:
        raise _fail(str(exc)) from None
    out.print(f"user [bold]{user.name}[/] ({user.role}) saved")


@app.command("list")
def list_cases(
    status: Annotated[str, typer.Option(help="open or needinfo.")] = "open",
    decision: Annotated[str, typer.Option()] = "",
    reason: Annotated[str, typer.Option(help="A reason code, e.g. rule:large_amount.")] = "",
    merchant: Annotated[str, typer.Option()] = "",
    country: Annotated[str, typer.Option()] = "",
    amount_min: Annotated[float | None, typer.Option()] = None,
    amount_max: Annotated[float | None, typer.Option()] = None,
    older_than: Annotated[float | None, typer.Option(help="Minutes queued, at least.")] = None,
    newer_than: Annotated[float | None, typer.Option(help="Minutes in the queue, at most.")] = None,
    page: Annotated[int, typer.Option(min=1)] = 1,
    size: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The queue, ranked by expected loss, with the page's filters."""
    from engine.review.index import STATUSES, QueueFilter

    if status not in STATUSES:
        msg = f"--status must be one of {', '.join(STATUSES)}"
        raise _fail(msg)
    flt = QueueFilter(status, decision, reason, merchant, country.upper(), amount_min,
                      amount_max, older_than, newer_than, page, size)  # fmt: skip
    pg = _service().page(flt)
    if as_json:
        for r in pg.rows:
            print(json.dumps(r, default=str))
        return
    t = Table(title=f"{pg.total} {status} cases, page {pg.page}/{pg.pages}")
    for col in ("event", "time", "amount", "merchant", "country", "score", "exp. loss",
                "reasons", "held by"):  # fmt: skip
        t.add_column(col)
    from engine.review.web import _utc

    for r in pg.rows:
        t.add_row(r["event_id"], _utc(r["ts"], ms=True), f"{r['amount']:,.2f} {r['currency']}",
                  r["merchant_id"], r["country"], f"{r['score']:.3f}",
                  f"{r['expected_loss']:,.2f}", "; ".join(r["reason_words"][:3]),
                  r["holder"] or "-")  # fmt: skip
    out.print(t)


@app.command()
def show(
    event_id: Annotated[str, typer.Argument()],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One case as the case page shows it (without claiming it)."""
    from engine.review.service import ReviewError

    try:
        case = _service().case(event_id)
    except ReviewError as exc:
        raise _fail(str(exc)) from None
    for k in ("card_plot", "merchant_plot", "claim_result"):
        case.pop(k, None)
    if as_json:
        print(json.dumps(case, default=str, indent=2))
        return
    v = case["verdict"]
    out.print(f"[bold]{case['event_id']}[/] {case['amount']:,.2f} at {case['merchant_id']}, "
              f"score {case['score']:.3f}, {case['decision']}; "
              + (f"decided {v['verdict']} by {v['analyst']}" if v else "open"))  # fmt: skip
    for r in case["reason_rows"]:
        out.print(f"  {r['code']}: {r['words']}")
    for c in case.get("contributions") or []:
        out.print(f"  contribution {c['feature']} = {c['value']:.4g}: {c['contribution']:+.3f}")
    for f in case["feature_rows"]:
        p = "n/a" if f["percentile"] is None else f"p{f['percentile']:.0f}"
        out.print(f"  {f['name']:28s} {f['value']:>12.4g}  {p}")


@app.command()
def decide(
    event_id: Annotated[str, typer.Argument()],
    verdict: Annotated[str, typer.Option(help="fraud, legitimate or needs_more_info.")],
    user: Annotated[str, typer.Option("--user", help="The analyst deciding (must exist).")],
    comment: Annotated[str, typer.Option()] = "",
) -> None:
    """Claim and decide a case as ``--user``; a final verdict publishes its label."""
    from engine.review.service import ReviewError
    from engine.review.users import Accounts

    svc = _service()
    who = Accounts(svc.redis).get(user)
    if who is None:
        msg = f"no user {user!r} (create one with riskstream review add-user)"
        raise _fail(msg)
    verdict = verdict.replace("-", "_")
    try:
        claim = svc.store.claim(event_id, who.name)
        if not claim["ok"]:
            from engine.review.service import refusal

            raise ReviewError(refusal(claim))
        record = svc.decide(event_id, who, verdict, comment)
    except ReviewError as exc:
        raise _fail(str(exc)) from None
    left = len(svc.store.outbox())
    out.print(f"{event_id}: {record['verdict']} by {record['analyst']}"
              + (f" ({left} labels waiting for the broker)" if left else ""))  # fmt: skip


@app.command()
def bench(
    cases: Annotated[int, typer.Option(min=1000, help="Cases in the queue.")] = 100_000,
    out: Annotated[str, typer.Option(help="Where the figures go.")] = ".bench/review-paging.json",
    repeat: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """Time queue pages over HTTP on a queue of ``cases`` synthetic cases (embedded Valkey)."""
    from pathlib import Path

    from engine.review.bench import run_review_bench

    results = run_review_bench(cases, Path(out), repeat)
    t = Table(title=f"review queue pages, {cases:,} cases, {repeat} requests each")
    for col in ("request", "median ms", "p95 ms", "max ms"):
        t.add_column(col)
    for name, v in results.items():
        if isinstance(v, dict):
            t.add_row(name, f"{v['median_ms']:.1f}", f"{v['p95_ms']:.1f}", f"{v['max_ms']:.1f}")
        elif name.endswith("_ms"):
            t.add_row(name, f"{v:.1f}", "", "")
    out_console = Console()
    out_console.print(t)
    out_console.print(f"figures: {out}")
