"""The analyst review app in a real browser (Debian chromium driven by Playwright), against a
review server and a worker started here on the session's real Valkey and Tansu.

Steps: a small LightGBM champion is trained on simulated days (through the pipeline) and
promoted; a worker scores transactions (some raise review cases by rule); users are created with
the CLI; the review server is started with ``riskstream review serve``. In chromium: a bad
password is refused; sign in (HttpOnly, SameSite=Strict cookie); the queue lists exactly the
cases the worker queued, ranked by expected loss; filtering by reason keeps exactly the matching
cases; paging shows the right ranks; a transaction sent while the page is open appears without a
reload; open a case (claims it; contributions, rule descriptions, card history, training
percentiles shown); a second browser context (another analyst) sees who holds it in the queue
and on the case page, and its verdict is refused; a forged CSRF token is refused; decide
"fraud"; the label appears on the labels topic (source analyst, the analyst, the event id) and
the worker's learned-label count moves; the other analyst now sees "already decided by" and a
second verdict is refused (still one label); the review metrics moved; the lead page shows the
verdict and the audit CSV has it; the lead re-opens the case; a session idle past its lifetime
is sent back to sign-in and its POST refused. Screenshots go to
``$RISKSTREAM_REVIEW_SCREENSHOTS`` (``make review-screenshots`` sets ``.bench/review/test``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import redis

from engine.cardnumbers import contains_pan
from engine.review.process import ReviewServerProcess
from engine.review.store import QUEUE_KEY
from engine.sinks import ensure_topics
from engine.worker_process import WorkerProcess, metric_value, wait_until
from replay.kafka_io import produce, producer, read_topic
from tests.e2e.support import unique_topics

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SESSION_SECONDS = 20
T0 = 1768003200000  # 2026-01-10, after the simulated days the champion learned from


def _db(url: str, db: int) -> str:
    """The same server, another database (the review keys are global names)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _txn(i: int, country: str = "FR", amount: float | None = None) -> dict[str, object]:
    return {"event_id": f"t{i}", "ts": T0 + i * 60_000, "card_id": f"card_{i % 6}",
            "merchant_id": f"m{i % 4}", "amount": amount or 20.0 + i, "currency": "EUR",
            "channel": "web", "country": country}  # fmt: skip


def _add_user(env: dict[str, str], name: str, password: str, role: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "engine.cli", "review", "add-user", name, "--role", role,
         "--password-stdin"],
        input=password + "\n", text=True, env={**os.environ, **env}, check=True, timeout=60,
    )  # fmt: skip


def _train_champion(redis_url: str, data_dir: Path) -> str:
    """A small LightGBM champion trained on features the pipeline computed over simulated days
    (so the case page has real contributions and training-reference percentiles)."""
    import numpy as np

    from engine.build import build_service
    from engine.settings import Settings
    from engine.sinks import NullSink
    from models.reference import reference_histograms
    from models.registry import ModelRegistry
    from models.train import train_lightgbm
    from replay.backtest import feature_log
    from replay.simulate import simulate

    df = simulate(days=5, seed=11, n_customers=400, n_merchants=80)
    labels = df.loc[df["is_fraud"], ["event_id", "ts", "is_fraud"]].copy()
    labels["ts"] += 86_400_000
    settings = Settings(redis_url=redis_url, data_dir=data_dir)
    service = build_service(settings, sink=NullSink(), use_registry=False, live=False)
    x, names, _ = feature_log(service, df, labels)
    y = df["is_fraud"].to_numpy()
    cut = int(len(x) * 0.8)
    result = train_lightgbm(x[:cut], y[:cut], names, x[cut:], y[cut:], num_boost_round=40)
    registry = ModelRegistry(settings.models_dir)
    version = registry.register(result.scorer, {"source": "browser-test",
                                "reference_histograms": reference_histograms(x, names)})
    registry.promote(version)
    assert np.isfinite(x).any()
    return version


def _no_pan(page: object) -> None:
    assert not contains_pan(page.content())  # type: ignore[attr-defined]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed "
                    "(make test-tools installs it)")  # fmt: skip
def test_analyst_reviews_a_case_in_chromium(stack: dict[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("RISKSTREAM_REVIEW_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    suffix, topics = unique_topics()
    redis_url = _db(stack["RISKSTREAM_REDIS_URL"], 7)
    env = {**stack, **topics, "RISKSTREAM_REDIS_URL": redis_url,
           "RISKSTREAM_APP_ID": f"review-{suffix}", "RISKSTREAM_DATA_DIR": str(tmp_path),
           "RISKSTREAM_TOPIC_PARTITIONS": "1",
           "RISKSTREAM_REVIEW_SESSION_SECONDS": str(SESSION_SECONDS)}  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    champion = _train_champion(redis_url, tmp_path)
    bootstrap = stack["RISKSTREAM_KAFKA_BOOTSTRAP"]
    ensure_topics(bootstrap, list(topics.values()), 1)
    # Every 5th from a high-risk country and every 7th very large: review cases by rule.
    txns = [
        _txn(i, "KP" if i % 5 == 0 else "FR", 6000.0 + i if i % 7 == 3 else None)
        for i in range(60)
    ]
    large = {str(t["event_id"]) for t in txns if float(t["amount"]) > 5000}  # type: ignore[arg-type]
    prod = producer(bootstrap)

    for name, password, role in (("ann", "ann-secret-1", "analyst"),
                                 ("bob", "bob-secret-1", "analyst"),
                                 ("lee", "lee-secret-1", "lead")):  # fmt: skip
        _add_user(env, name, password, role)

    with (
        WorkerProcess(env, tmp_path / "worker.log") as worker,
        ReviewServerProcess(env, tmp_path / "review.log") as server,
        sync_playwright() as pw,
    ):
        produce(prod, topics["RISKSTREAM_TOPIC_TRANSACTIONS"],
                ((str(t["card_id"]).encode(), orjson.dumps(t)) for t in txns))  # fmt: skip
        scores = read_topic(bootstrap, topics["RISKSTREAM_TOPIC_SCORES"],
                            lambda v: len(v) >= len(txns), timeout=240)  # fmt: skip
        decisions = {d["event_id"]: d for d in map(orjson.loads, scores)}
        queued = {e for e, d in decisions.items() if d["decision"] == "review"}
        assert queued and queued & large, "the rules should have raised review cases"
        assert {m.decode() for m in client.zrange(QUEUE_KEY, 0, -1)} == queued
        learned_before = metric_value(worker.metrics(), "riskstream_labels_learned_total")

        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])

        def sign_in(name: str, password: str) -> object:
            ctx = browser.new_context(viewport={"width": 1400, "height": 900})
            page = ctx.new_page()
            page.goto(server.url + "/")
            expect(page).to_have_url(server.url + "/login?next=%2F")
            page.fill("input[name=username]", name)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            expect(page.locator("#who")).to_contain_text(name)
            return page

        # A session left idle past its lifetime: signed in now, used again at the end.
        idle = sign_in("bob", "bob-secret-1")
        idle_since = time.monotonic()

        # A bad password is refused.
        ctx = browser.new_context(viewport={"width": 1400, "height": 900})
        ann = ctx.new_page()
        ann.goto(server.url + "/")
        ann.fill("input[name=username]", "ann")
        ann.fill("input[name=password]", "not-her-password")
        ann.click("button[type=submit]")
        expect(ann.locator("#login-error")).to_contain_text("wrong user name or password")
        assert ctx.cookies() == [] or all(c["name"] != "rs_session" for c in ctx.cookies())

        # Sign in: the queue lists the worker's cases, highest expected loss first.
        ann.fill("input[name=username]", "ann")
        ann.fill("input[name=password]", "ann-secret-1")
        ann.click("button[type=submit]")
        expect(ann.locator("#total")).to_have_text(str(len(queued)))
        session = next(c for c in ctx.cookies() if c["name"] == "rs_session")
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        rows = ann.locator("#rows tr").evaluate_all("rs => rs.map(r => r.dataset.event)")
        assert set(rows) == queued
        ranked = sorted(queued, key=lambda e: -max(decisions[e]["score"], 0.5)
                        * decisions[e]["amount"])  # fmt: skip
        assert rows[0] == ranked[0]
        _no_pan(ann)
        ann.screenshot(path=str(shots / "queue.png"), full_page=True)

        # Filter by reason: exactly the large-amount cases.
        ann.select_option("#f-reason", "rule:large_amount")
        ann.click("#apply")
        expect(ann.locator("#total")).to_have_text(str(len(queued & large)))
        rows = ann.locator("#rows tr").evaluate_all("rs => rs.map(r => r.dataset.event)")
        assert set(rows) == queued & large
        ann.screenshot(path=str(shots / "queue-filtered.png"), full_page=True)

        # Paging: page 2 of 5 per page is ranks 6-10.
        ann.goto(server.url + "/?size=5&page=2")
        rows = ann.locator("#rows tr").evaluate_all("rs => rs.map(r => r.dataset.event)")
        assert rows == ranked[5:10]
        ann.click("#next")
        rows = ann.locator("#rows tr").evaluate_all("rs => rs.map(r => r.dataset.event)")
        assert rows == ranked[10:15]

        # A new case shows up on the open page without a reload.
        ann.goto(server.url + "/")
        ann.evaluate("window.__noReload = 42")
        fresh = _txn(1000, "KP", 4321.0)
        produce(prod, topics["RISKSTREAM_TOPIC_TRANSACTIONS"],
                [(b"card_x", orjson.dumps({**fresh, "card_id": "card_x"}))])  # fmt: skip
        expect(ann.locator('tr[data-event="t1000"]')).to_have_count(1, timeout=60_000)
        assert ann.evaluate("window.__noReload") == 42
        expect(ann.locator("#total")).to_have_text(str(len(queued) + 1))

        # Open the top large-amount case: it is claimed for ann.
        target = max(queued & large, key=lambda e: decisions[e]["amount"])
        ann.click(f'tr[data-event="{target}"] a')
        expect(ann.locator("#case-id")).to_have_text(target)
        expect(ann.locator("#claim")).to_contain_text("Claimed by you")
        expect(ann.locator("#rules")).to_contain_text("A single very large transaction.")
        expect(ann.locator("#transaction")).to_contain_text("card_")
        expect(ann.locator("#features")).to_contain_text("card_id_count_1h")
        assert decisions[target]["model"] == champion
        contributions = ann.locator("#contributions tbody tr")
        assert contributions.count() == len(decisions[target]["contributions"]) > 0
        expect(contributions.first).to_contain_text(decisions[target]["contributions"][0]["feature"])
        percentiles = ann.locator("#features tbody tr td:nth-child(3)").all_inner_texts()
        assert sum(p.strip().isdigit() for p in percentiles) >= 10
        card_rows = ann.locator(".panel:has(h2:text('Card history')) tbody tr").count()
        card = decisions[target]["card_id"]
        assert card_rows == sum(1 for d in decisions.values() if d["card_id"] == card)
        assert ann.locator("svg.timeline").count() == 2
        _no_pan(ann)
        ann.screenshot(path=str(shots / "case.png"), full_page=True)

        # A second analyst in another browser context cannot decide it.
        bob = sign_in("bob", "bob-secret-1")
        bob.goto(f"{server.url}/case/{target}")  # type: ignore[attr-defined]
        expect(bob.locator("#claimed")).to_contain_text("Claimed by ann")  # type: ignore[attr-defined]
        bob.goto(f"{server.url}/?reason=rule:large_amount")  # type: ignore[attr-defined]
        held = bob.locator(f'tr[data-event="{target}"] .holder')  # type: ignore[attr-defined]
        expect(held).to_have_text("ann")
        bob.goto(f"{server.url}/case/{target}")  # type: ignore[attr-defined]
        bob.check("input[value=legitimate]")  # type: ignore[attr-defined]
        bob.click("#decide")  # type: ignore[attr-defined]
        expect(bob.locator("#message")).to_contain_text("claimed by ann")  # type: ignore[attr-defined]

        # A forged CSRF token is refused, and nothing is decided.
        ann.check("input[value=fraud]")
        ann.evaluate("document.querySelector('#verdict-form input[name=csrf]').value = 'forged'")
        ann.click("#decide")
        expect(ann.locator("#error")).to_contain_text("CSRF")
        assert client.hget(f"rs:review:case:{target}", "verdict") is None

        # Decide it.
        ann.goto(f"{server.url}/case/{target}")
        ann.check("input[value=fraud]")
        ann.fill("textarea[name=comment]", "card testing pattern, customer unreachable")
        ann.click("#decide")
        expect(ann.locator("#decided")).to_contain_text("Already decided by ann")

        # The label is on the labels topic and the worker learned it.
        labels = read_topic(bootstrap, topics["RISKSTREAM_TOPIC_LABELS"],
                            lambda v: len(v) >= 1, timeout=60)  # fmt: skip
        assert [orjson.loads(v) for v in labels] == [
            {**orjson.loads(labels[0]), "event_id": target, "source": "analyst",
             "analyst": "ann", "is_fraud": True}  # fmt: skip
        ]
        assert wait_until(lambda: metric_value(worker.metrics(), "riskstream_labels_learned_total")
                          >= learned_before + 1, 60)  # fmt: skip
        assert client.exists(f"rs:label:{target}")

        # The other analyst now sees who decided; their verdict is refused, no second label.
        bob.goto(f"{server.url}/case/{target}")  # type: ignore[attr-defined]
        expect(bob.locator("#decided")).to_contain_text("Already decided by ann")  # type: ignore[attr-defined]
        assert bob.locator("#verdict-form").count() == 0  # type: ignore[attr-defined]
        resp = bob.request.post(  # type: ignore[attr-defined]
            f"{server.url}/case/{target}/verdict",
            form={"verdict": "legitimate", "csrf": bob.locator("input[name=csrf]").first  # type: ignore[attr-defined]
                  .get_attribute("value")},  # fmt: skip
        )
        assert resp.status == 409 and "already decided by ann" in resp.text()
        time.sleep(1)
        again = read_topic(bootstrap, topics["RISKSTREAM_TOPIC_LABELS"], lambda v: False, 3)
        assert len(again) == 1

        # Review metrics on the server's /metrics.
        text = server.metrics()
        assert metric_value(text, "riskstream_review_verdicts_total", {"verdict": "fraud"}) == 1
        assert metric_value(text, "riskstream_review_decision_seconds_count") == 1
        assert metric_value(text, "riskstream_review_queue_age_seconds") > 0

        # The lead sees the verdict per analyst and in the audit log (and its CSV).
        lee = sign_in("lee", "lee-secret-1")
        lee.goto(server.url + "/lead")  # type: ignore[attr-defined]
        expect(lee.locator("#throughput")).to_contain_text("ann")  # type: ignore[attr-defined]
        expect(lee.locator("#audit")).to_contain_text(target)  # type: ignore[attr-defined]
        csv_text = lee.request.get(server.url + "/lead/audit.csv").text()  # type: ignore[attr-defined]
        assert f",ann,analyst,verdict,{target},open,fraud," in csv_text
        lee.screenshot(path=str(shots / "lead.png"), full_page=True)  # type: ignore[attr-defined]

        # The lead re-opens the case: back in the queue, audited with before and after.
        lee.goto(f"{server.url}/case/{target}")  # type: ignore[attr-defined]
        lee.fill("input[name=comment]", "second look")  # type: ignore[attr-defined]
        lee.click("#reopen")  # type: ignore[attr-defined]
        expect(lee.locator("#claim")).to_contain_text("Claimed by you")  # type: ignore[attr-defined]
        assert client.zscore(QUEUE_KEY, target) is not None
        csv_text = lee.request.get(server.url + "/lead/audit.csv").text()  # type: ignore[attr-defined]
        assert f",lee,lead,reopen,{target},fraud by ann,open,second look" in csv_text

        # The idle session expired: back to sign-in, and its POST is refused.
        time.sleep(max(0.0, SESSION_SECONDS + 1 - (time.monotonic() - idle_since)))
        idle.goto(server.url + "/")  # type: ignore[attr-defined]
        expect(idle.locator("#expired")).to_contain_text("expired")  # type: ignore[attr-defined]
        resp = idle.request.post(f"{server.url}/case/{target}/reopen",  # type: ignore[attr-defined]
                                 form={"csrf": "x"})  # fmt: skip
        assert resp.status == 401
        browser.close()
        assert worker.alive() and server.alive()
