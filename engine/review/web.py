"""The analyst web app: server-rendered pages (FastAPI + Jinja2), no CDN, no front-end build.

Security: sessions are server-side (``rs:review:session:<id>``, idle expiry); the browser holds
only the id, signed with ``RISKSTREAM_REVIEW_SECRET``, in an HttpOnly, SameSite=Strict cookie.
Every form carries a CSRF token (the session's; the sign-in form's is tied to a signed
pre-session cookie) and a POST without the right one is refused with 403. The Content Security
Policy allows only this app's own scripts and styles. Every string rendered passes through
:func:`redact_text`, so a card number that slipped into a field never reaches
the page.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.responses import Response

from engine.cardnumbers import contains_pan, redact_pans
from engine.metrics import exposition
from engine.review.index import STATUSES, QueueFilter
from engine.review.service import ReviewError, ReviewService
from engine.review.store import VERDICTS
from engine.review.users import Accounts, Session
from engine.settings import Settings

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "rs_session"
LOGIN_COOKIE = "rs_login"
#: A signed cookie older than this is refused even if its server-side session still lives.
SESSION_MAX_AGE = 7 * 86400
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


#: A text query parameter (FastAPI resolves annotations from module globals).
Q = Annotated[str, Query()]


class NotSignedIn(Exception):  # noqa: N818 - control flow: redirect to the sign-in page
    def __init__(self, expired: bool) -> None:
        super().__init__("not signed in")
        self.expired = expired


class Forbidden(Exception):  # noqa: N818 - control flow: a 403 page
    pass


def _finalize(value: Any) -> Any:
    """Every rendered value: card numbers redacted (Markup from our own filters kept as is)."""
    if isinstance(value, Markup) or value is None:
        return "" if value is None else value
    return redact_text(str(value))


def redact_text(text: str) -> str:
    """``text`` with any card number replaced by a marker."""
    return redact_pans(text.encode()).decode() if contains_pan(text) else text


def _utc(epoch: float | str | None, ms: bool = False) -> str:
    if epoch is None:
        return ""
    t = float(epoch) / (1000 if ms else 1)
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["utc_ms"] = lambda v: _utc(v, ms=True)
    env.filters["age"] = _age
    env.filters["money"] = lambda v: f"{float(v):,.2f}"
    env.filters["num"] = lambda v: "" if v is None else f"{float(v):,.4g}"
    env.filters["svg"] = Markup  # our own generated SVG (values escaped where it was built)
    return env


def _float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def queue_filter(
    status: Q = "open", decision: Q = "", reason: Q = "", merchant: Q = "", country: Q = "",
    amount_min: Q = "", amount_max: Q = "", older_than: Q = "", newer_than: Q = "",
    page: int = 1, size: int = 50,
) -> QueueFilter:  # fmt: skip
    """The queue's filters from the query string (bad numbers are ignored, not errors)."""
    return QueueFilter(
        status=status if status in STATUSES else "open", decision=decision.strip(),
        reason=reason.strip(), merchant=merchant.strip(), country=country.strip().upper(),
        amount_min=_float(amount_min), amount_max=_float(amount_max),
        older_than=_float(older_than), newer_than=_float(newer_than), page=page, size=size,
    )  # fmt: skip


def create_review_app(
    settings: Settings,
    service: ReviewService | None = None,
    accounts: Accounts | None = None,
) -> FastAPI:
    svc = service or ReviewService(settings)
    acc = accounts or Accounts(svc.redis, settings.review_session_seconds)
    signer = URLSafeTimedSerializer(settings.review_secret.get_secret_value(), salt="rs-review")
    env = _templates()
    app = FastAPI(title="riskstream review", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.service = svc
    app.state.accounts = acc

    def render(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        body = env.get_template(name).render(**ctx)
        return HTMLResponse(body, status_code=status)

    def session_of(request: Request, renew: bool = True) -> Session:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            raise NotSignedIn(expired=False)
        try:
            sid = signer.loads(raw, max_age=SESSION_MAX_AGE)
        except BadSignature:
            raise NotSignedIn(expired=True) from None
        s = acc.session(str(sid), renew)
        if s is None:
            raise NotSignedIn(expired=True)
        return s

    def check_csrf(s: Session, token: str) -> None:
        if not token or not hmac.compare_digest(token, s.csrf):
            msg = "CSRF token missing or invalid: reload the page and try again"
            raise Forbidden(msg)

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        if request.url.path != "/metrics" and not request.url.path.startswith("/static"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(NotSignedIn)
    async def to_login(request: Request, exc: NotSignedIn) -> Response:
        if request.method == "GET" and not request.url.path.startswith("/queue/"):
            q = {"next": request.url.path} | ({"expired": "1"} if exc.expired else {})
            return RedirectResponse("/login?" + urlencode(q), status_code=303)
        msg = "session expired: sign in again" if exc.expired else "not signed in"
        return PlainTextResponse(msg, status_code=401)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return render("error.html", status=403, message=str(exc), user=None)

    # -- sign in / out ------------------------------------------------------------------------

    @app.get("/login")
    def login_page(request: Request, expired: str = "", next: str = "/") -> Response:  # noqa: A002
        token = secrets.token_urlsafe(24)
        resp = render("login.html", csrf=token, expired=bool(expired), error="", next=next,
                      user=None)  # fmt: skip
        resp.set_cookie(LOGIN_COOKIE, signer.dumps(token), max_age=3600, httponly=True,
                        samesite="strict", secure=settings.review_cookie_secure)  # fmt: skip
        return resp

    @app.post("/login")
    def login(
        request: Request,
        username: Annotated[str, Form()],
        password: Annotated[str, Form()],
        csrf: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",  # noqa: A002
    ) -> Response:
        try:
            expected = str(signer.loads(request.cookies.get(LOGIN_COOKIE, ""), max_age=3600))
        except BadSignature:
            expected = ""
        if not expected or not hmac.compare_digest(expected, csrf):
            msg = "CSRF token missing or invalid: reload the sign-in page"
            raise Forbidden(msg)
        user = acc.authenticate(username.strip(), password)
        if user is None:
            locked = acc.locked(username.strip())
            error = "too many failed sign-ins: try again in 15 minutes" if locked else ""
            error = error or "wrong user name or password"
            return render("login.html", status=401, csrf=csrf, expired=False, next=next,
                          error=error, user=None)  # fmt: skip
        s = acc.open_session(user)
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(SESSION_COOKIE, signer.dumps(s.id), httponly=True, samesite="strict",
                        secure=settings.review_cookie_secure, path="/")  # fmt: skip
        resp.delete_cookie(LOGIN_COOKIE)
        return resp

    @app.post("/logout")
    def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        s = session_of(request)
        check_csrf(s, csrf)
        acc.close_session(s.id)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    # -- the queue ------------------------------------------------------------------------------

    def queue_context(request: Request, flt: QueueFilter) -> dict[str, Any]:
        t0 = time.perf_counter()
        pg = svc.page(flt)
        params = flt.as_params()
        return {
            "page": pg, "flt": flt, "statuses": STATUSES,
            "prev_url": "/?" + urlencode({**params, "page": pg.page - 1}) if pg.page > 1 else "",
            "next_url": "/?" + urlencode({**params, "page": pg.page + 1})
            if pg.page < pg.pages else "",
            "rows_url": "/queue/rows?" + urlencode({**params, "page": pg.page}),
            "ms": (time.perf_counter() - t0) * 1000,
        }  # fmt: skip

    @app.get("/")
    def queue(request: Request, flt: Annotated[QueueFilter, Depends(queue_filter)]) -> Response:
        s = session_of(request)
        return render("queue.html", user=s.user, csrf=s.csrf, **queue_context(request, flt))

    @app.get("/queue/rows")
    def queue_rows(
        request: Request, flt: Annotated[QueueFilter, Depends(queue_filter)]
    ) -> Response:
        session_of(request, renew=False)  # background refresh: does not keep a session alive
        return render("_rows.html", **queue_context(request, flt))

    @app.get("/queue/version")
    def queue_version(request: Request) -> Response:
        session_of(request, renew=False)
        return JSONResponse({"version": svc.version(), "depth": len(svc.index)})

    # -- a case -------------------------------------------------------------------------------

    def case_page(s: Session, event_id: str, message: str = "", status: int = 200) -> Response:
        try:
            case = svc.case(event_id, s.user)
        except ReviewError as exc:
            return render("error.html", status=404, message=str(exc), user=s.user)
        users = [u.name for u in acc.users()] if s.user.is_lead else []
        return render("case.html", status=status, case=case, user=s.user, csrf=s.csrf,
                      message=message, verdicts=VERDICTS, users=users)  # fmt: skip

    @app.get("/case/{event_id}")
    def case(request: Request, event_id: str) -> Response:
        return case_page(session_of(request), event_id)

    def act(
        request: Request, event_id: str, csrf: str, action: Callable[[Session], object],
        lead_only: str = "", then: str = "",
    ) -> Response:  # fmt: skip
        """A case form: session, CSRF and role checked; a refusal re-renders the case page."""
        s = session_of(request)
        check_csrf(s, csrf)
        if lead_only and not s.user.is_lead:
            msg = f"only a lead can {lead_only}"
            raise Forbidden(msg)
        try:
            action(s)
        except ReviewError as exc:
            return case_page(s, event_id, message=f"refused: {exc}", status=409)
        return RedirectResponse(then or f"/case/{event_id}", status_code=303)

    @app.post("/case/{event_id}/verdict")
    def verdict(
        request: Request, event_id: str, verdict: Annotated[str, Form()] = "",
        comment: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "",
    ) -> Response:  # fmt: skip
        def run(s: Session) -> object:
            return svc.decide(event_id, s.user, verdict, comment)

        return act(request, event_id, csrf, run)

    @app.post("/case/{event_id}/release")
    def release(request: Request, event_id: str, csrf: Annotated[str, Form()] = "") -> Response:
        return act(request, event_id, csrf,
                   lambda s: svc.store.release(event_id, s.user.name), then="/")  # fmt: skip

    @app.post("/case/{event_id}/reopen")
    def reopen(
        request: Request, event_id: str, comment: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
    ) -> Response:  # fmt: skip
        return act(request, event_id, csrf, lambda s: svc.reopen(event_id, s.user, comment),
                   lead_only="re-open a case")  # fmt: skip

    @app.post("/case/{event_id}/assign")
    def assign(
        request: Request, event_id: str, to: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
    ) -> Response:  # fmt: skip
        def run(s: Session) -> object:
            target = acc.get(to)
            if target is None:
                msg = f"no user {to!r}"
                raise ReviewError(msg)
            return svc.reassign(event_id, s.user, target)

        return act(request, event_id, csrf, run, lead_only="re-assign a case", then="/")

    # -- lead -----------------------------------------------------------------------------------

    @app.get("/lead")
    def lead(request: Request) -> Response:
        s = session_of(request)
        if not s.user.is_lead:
            msg = "the lead page is for leads"
            raise Forbidden(msg)
        return render("lead.html", user=s.user, csrf=s.csrf, figures=svc.lead_figures(),
                      audit=svc.store.audit_log(200))  # fmt: skip

    @app.get("/lead/audit.csv")
    def audit_csv(request: Request) -> Response:
        s = session_of(request)
        if not s.user.is_lead:
            msg = "the audit log is for leads"
            raise Forbidden(msg)
        return PlainTextResponse(
            redact_text(svc.audit_csv()), media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="review-audit.csv"'},
        )  # fmt: skip

    @app.get("/metrics")
    def prometheus() -> Response:
        svc.refresh(min_interval=1.0)
        body, ctype = exposition()
        return Response(body, media_type=ctype)

    @app.get("/healthz")
    def healthz() -> Response:
        return PlainTextResponse("ok")

    return app
