"""``riskstream review bench``: queue pages over HTTP on a 100,000-case queue in a real Valkey.

Fills an embedded Valkey with synthetic cases (the same writer the scoring service uses), serves
the review app in-process (uvicorn), signs in like a browser and times whole HTTP requests
(filter + rank + page + claims + rendering) for a set of filters, deep pages, and the first page
after new cases arrived (the incremental refresh).
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from engine.review.store import add_cases
from engine.review.users import Accounts
from engine.settings import Settings
from engine.stack import EmbeddedStack, free_port, wait_for_port

COUNTRIES = ["FR", "DE", "GB", "US", "ES", "IT", "NL", "BE", "PL", "SE", "KP", "IR", "RU", "BR",
             "IN", "CN", "JP", "CA", "AU", "MX"]  # fmt: skip
REASONS = ["rule:large_amount", "rule:high_risk_country", "rule:card_testing_burst",
           "model:card_id_count_1h", "model:amount", "model:card_id_sum_24h",
           "model:merchant_id_fraud_rate_7d_delay7d", "score>=0.5"]  # fmt: skip


def synthetic_cases(n: int, seed: int = 0, start: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    now = time.time()
    amounts = np.round(rng.lognormal(4.0, 1.3, n), 2) + 1
    scores = rng.uniform(0.5, 0.9, n)
    queued = now - rng.uniform(0, 3 * 86400, n)
    cases = []
    for i in range(n):
        k = rng.integers(1, 4)
        reasons = list(rng.choice(REASONS, size=k, replace=False))
        eid = f"bench-{start + i}"
        cases.append({
            "event_id": eid, "card_id": f"card_{rng.integers(0, 20000)}",
            "ts": int(queued[i] * 1000), "scored_at": float(queued[i]),
            "score": float(scores[i]), "decision": "review", "reasons": reasons,
            "amount": float(amounts[i]), "expected_loss": float(scores[i] * amounts[i]),
            "merchant_id": f"m{rng.integers(0, 2000)}", "contributions": [],
            "transaction": {"event_id": eid, "currency": "EUR", "channel": "web",
                            "country": COUNTRIES[int(rng.integers(0, len(COUNTRIES)))]},
            "features": {},
        })  # fmt: skip
    return cases


def fill(client: redis.Redis, cases: list[dict[str, Any]], chunk: int = 5000) -> None:
    for i in range(0, len(cases), chunk):
        pipe = client.pipeline(transaction=False)
        add_cases(pipe, cases[i : i + chunk])
        pipe.execute()


def _timed(http: Any, url: str, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = http.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    times.sort()
    return {"median_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
            "max_ms": times[-1]}  # fmt: skip


def run_review_bench(n_cases: int, out: Path, repeat: int = 20) -> dict[str, Any]:
    import httpx
    import uvicorn

    from engine.review.service import ReviewService
    from engine.review.web import create_review_app

    with EmbeddedStack(with_kafka=False) as stack:
        settings = Settings(redis_url=stack.redis_url, data_dir=out.parent / "review-bench")
        client = redis.Redis.from_url(settings.redis_url)
        t0 = time.perf_counter()
        fill(client, synthetic_cases(n_cases))
        fill_s = time.perf_counter() - t0
        Accounts(client).add_user("bench", "bench-password")
        service = ReviewService(settings, client)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_review_app(settings, service),
                                               host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for_port(port, 30)
        base = f"http://127.0.0.1:{port}"
        results: dict[str, Any] = {"cases": n_cases, "repeat": repeat, "fill_seconds": fill_s}
        try:
            with httpx.Client(base_url=base, follow_redirects=True, timeout=60) as http:
                page = http.get("/login").text
                csrf = re.search(r'name="csrf" value="([^"]+)"', page)
                assert csrf is not None  # noqa: S101 - our own page
                t0 = time.perf_counter()
                r = http.post("/login", data={"username": "bench", "password": "bench-password",
                                              "csrf": csrf.group(1)})  # fmt: skip
                r.raise_for_status()
                results["first_page_with_full_load_ms"] = (time.perf_counter() - t0) * 1000
                scenarios = {
                    "page_1": "/",
                    "page_1000_deep": "/?page=1000",
                    "country": "/?country=KP",
                    "reason": "/?reason=rule:large_amount",
                    "amount_range": "/?amount_min=100&amount_max=500",
                    "merchant": "/?merchant=m42",
                    "age_older_than_1d": "/?older_than=1440",
                    "combined": "/?country=FR&reason=model:amount&amount_min=50&older_than=60",
                    "rows_fragment": "/queue/rows?reason=score>=0.5&page=3",
                }
                for name, url in scenarios.items():
                    results[name] = _timed(http, url, repeat)
                new = synthetic_cases(1000, seed=1, start=n_cases)
                fill(client, new)
                t0 = time.perf_counter()
                http.get("/").raise_for_status()
                results["first_page_after_1000_new_cases_ms"] = (time.perf_counter() - t0) * 1000
                results["queue_after"] = len(service.index)
        finally:
            server.should_exit = True
            thread.join(10)
    pages = [v["p95_ms"] for v in results.values() if isinstance(v, dict)]
    results["worst_p95_ms"] = max(pages)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results
