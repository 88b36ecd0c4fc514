"""Analyst accounts and sessions: salted scrypt hashes, server-side sessions with CSRF tokens.

Accounts live in ``rs:review:users`` (HASH name → JSON); a password is kept only as
``scrypt(password, salt, n=2**14, r=8, p=1)`` with a random 16-byte salt, compared in constant
time. A session is ``rs:review:session:<random id>`` with an idle expiry renewed on use; the
browser holds only the id, signed (see :mod:`engine.review.web`), and every form carries the
session's CSRF token.

>>> h = hash_password("correct horse", n=2**10)
>>> verify_password("correct horse", h), verify_password("wrong", h)
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

USERS_KEY = "rs:review:users"
#: Failed sign-ins per user name (any name, existing or not, so it reveals nothing).
FAILS_PREFIX = "rs:review:fails:"
MAX_FAILS = 10
LOCK_SECONDS = 900
SESSION_PREFIX = "rs:review:session:"
ROLES = ("analyst", "lead")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
MIN_PASSWORD = 8


class UserError(ValueError):
    """A bad user name, role or password (shown to the user as one line)."""


def hash_password(password: str, n: int = 2**14, r: int = 8, p: int = 1) -> dict[str, Any]:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 2**20)
    return {"alg": "scrypt", "n": n, "r": r, "p": p, "salt": salt.hex(), "hash": digest.hex()}


def verify_password(password: str, stored: dict[str, Any]) -> bool:
    digest = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(stored["salt"]),
        n=int(stored["n"]), r=int(stored["r"]), p=int(stored["p"]), maxmem=64 * 2**20,
    )  # fmt: skip
    return hmac.compare_digest(digest.hex(), stored["hash"])


#: Checked against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY = hash_password("no such user, no such password")


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_lead(self) -> bool:
        return self.role == "lead"


@dataclass(frozen=True)
class Session:
    id: str
    user: User
    csrf: str
    created: float


class Accounts:
    """Users and sessions on one Redis database."""

    def __init__(self, client: redis.Redis, idle_seconds: int = 8 * 3600) -> None:
        self.redis = client
        self.idle_seconds = idle_seconds

    def add_user(self, name: str, password: str, role: str = "analyst") -> User:
        if not _NAME.match(name):
            msg = f"user name {name!r}: 2-32 characters a-z 0-9 . _ -, starting with a letter/digit"
            raise UserError(msg)
        if role not in ROLES:
            msg = f"role must be one of {', '.join(ROLES)}, not {role!r}"
            raise UserError(msg)
        if len(password) < MIN_PASSWORD:
            msg = f"password too short (at least {MIN_PASSWORD} characters)"
            raise UserError(msg)
        record = {"name": name, "role": role, "created": time.time(), **hash_password(password)}
        self.redis.hset(USERS_KEY, name, orjson.dumps(record))
        return User(name, role)

    def get(self, name: str) -> User | None:
        raw = self.redis.hget(USERS_KEY, name)
        if raw is None:
            return None
        rec = orjson.loads(raw)
        return User(rec["name"], rec["role"])

    def users(self) -> list[User]:
        return sorted(
            (User(r["name"], r["role"]) for r in map(orjson.loads, self.redis.hvals(USERS_KEY))),
            key=lambda u: u.name,
        )

    def locked(self, name: str) -> bool:
        """Too many failed sign-ins for ``name`` lately (password guessing is slowed down)."""
        return int(self.redis.get(FAILS_PREFIX + name) or 0) >= MAX_FAILS

    def authenticate(self, name: str, password: str) -> User | None:
        """The user, or None for a wrong name or password or a locked name."""
        if self.locked(name):
            return None
        raw = self.redis.hget(USERS_KEY, name)
        rec = orjson.loads(raw) if raw is not None else None
        ok = verify_password(password, rec if rec is not None else _DUMMY) and rec is not None
        key = FAILS_PREFIX + name
        if not ok:
            pipe = self.redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, LOCK_SECONDS)
            pipe.execute()
            return None
        self.redis.delete(key)
        return User(rec["name"], rec["role"]) if rec is not None else None

    # -- sessions -----------------------------------------------------------------------------

    def open_session(self, user: User) -> Session:
        s = Session(secrets.token_urlsafe(24), user, secrets.token_urlsafe(24), time.time())
        body = {"user": user.name, "role": user.role, "csrf": s.csrf, "created": s.created}
        self.redis.set(SESSION_PREFIX + s.id, orjson.dumps(body), ex=self.idle_seconds)
        return s

    def session(self, sid: str, renew: bool = True) -> Session | None:
        """The live session, or None when unknown or expired; ``renew`` restarts its idle
        expiry (a user's action does, a page's background polling does not)."""
        key = SESSION_PREFIX + sid
        raw = self.redis.getex(key, ex=self.idle_seconds) if renew else self.redis.get(key)
        if raw is None:
            return None
        b = orjson.loads(raw)
        return Session(sid, User(b["user"], b["role"]), b["csrf"], float(b["created"]))

    def close_session(self, sid: str) -> None:
        self.redis.delete(SESSION_PREFIX + sid)
