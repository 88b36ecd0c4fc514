"""The review app's guards over HTTP (in-process, real Valkey): every POST route checks the CSRF
token, pages need a session, lead pages need a lead, headers and cookies are locked down."""

from __future__ import annotations

import re

import pytest
import redis
from fastapi.testclient import TestClient

from engine.review.bench import fill, synthetic_cases
from engine.review.service import ReviewService
from engine.review.users import Accounts
from engine.review.web import create_review_app
from engine.settings import Settings

pytestmark = pytest.mark.integration


def _signed_in(app: object, name: str, password: str) -> tuple[TestClient, str]:
    client = TestClient(app)  # type: ignore[arg-type]
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert token is not None
    r = client.post("/login", data={"username": name, "password": password,
                                    "csrf": token.group(1)}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303, r.text
    page = client.get("/").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return client, csrf.group(1)


def test_every_form_needs_its_csrf_token_and_roles_are_enforced(
    redis_client: redis.Redis, redis_url: str
) -> None:
    fill(redis_client, synthetic_cases(30, seed=4))
    acc = Accounts(redis_client)
    acc.add_user("ann", "ann-secret-1", "analyst")
    acc.add_user("lee", "lee-secret-1", "lead")
    settings = Settings(redis_url=redis_url)
    app = create_review_app(settings, ReviewService(settings, redis_client))

    anonymous = TestClient(app)
    assert anonymous.get("/", follow_redirects=False).status_code == 303
    assert anonymous.get("/queue/rows").status_code == 401
    # Sign-in itself needs the token tied to the pre-session cookie.
    forged = anonymous.post("/login", data={"username": "ann", "password": "ann-secret-1",
                                            "csrf": "guess"})  # fmt: skip
    assert forged.status_code == 403

    ann, ann_csrf = _signed_in(app, "ann", "ann-secret-1")
    lee, lee_csrf = _signed_in(app, "lee", "lee-secret-1")
    r = ann.get("/")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"

    posts = sorted(
        route.path for route in app.routes
        if "POST" in getattr(route, "methods", set()) and route.path != "/login"
    )  # fmt: skip
    assert {"/logout", "/case/{event_id}/verdict", "/case/{event_id}/reopen",
            "/case/{event_id}/assign", "/case/{event_id}/release"} <= set(posts)  # fmt: skip
    for path in posts:
        url = path.replace("{event_id}", "bench-0")
        for client in (ann, lee):
            for data in ({}, {"csrf": "forged"}):
                r = client.post(url, data={**data, "verdict": "fraud", "to": "ann"})
                assert r.status_code == 403, (path, data, r.status_code)
    assert redis_client.hget("rs:review:case:bench-0", "verdict") is None

    # Leads only: the lead page, the audit export, re-open and re-assign.
    assert ann.get("/lead").status_code == 403
    assert ann.get("/lead/audit.csv").status_code == 403
    r = ann.post("/case/bench-1/assign", data={"csrf": ann_csrf, "to": "ann"})
    assert r.status_code == 403
    assert lee.get("/lead").status_code == 200
    r = lee.post("/case/bench-1/assign", data={"csrf": lee_csrf, "to": "ann"},
                 follow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    assert redis_client.get("rs:review:claim:bench-1").startswith(b"ann\t")  # type: ignore[union-attr]

    # Sign out ends the session server-side: the old cookie no longer works.
    cookie = ann.cookies.get("rs_session")
    assert ann.post("/logout", data={"csrf": ann_csrf}, follow_redirects=False).status_code == 303
    replay = TestClient(app, cookies={"rs_session": cookie or ""})
    assert replay.get("/", follow_redirects=False).headers["location"].startswith("/login")
