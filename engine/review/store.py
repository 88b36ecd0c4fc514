"""Review cases in Redis: the queue, each case, claims, verdicts, the audit log and history.

Layout (all keys under ``rs:review:``):

* ``queue`` (ZSET, member = event_id, score = expected loss = score × amount): open cases;
  ``needinfo`` (ZSET, same scores): cases an analyst sent back for more information.
* ``case:<event_id>`` (HASH): ``data`` = the case as JSON (what the scoring service queued),
  ``verdict`` = the final verdict as JSON once there is one, ``pending`` = a needs-more-info note.
* ``index`` (HASH, event_id → short summary JSON): what the queue page lists, so a web process
  loads 100,000 cases with one HGETALL; ``changes`` (STREAM) says which ids were added or left,
  so it stays current by reading only what changed.
* ``claim:<event_id>`` (STRING ``analyst\\tclaimed_at``, expiring): who works the case now.
* ``audit`` (STREAM, never trimmed): who did what to which case, before and after.
* ``outbox`` (HASH event_id → label JSON): labels of verdicts not yet on the ``labels`` topic.
* ``verdicts`` (HASH event_id → final verdict JSON) and ``outcomes`` (HASH event_id → a later
  chargeback or confirmed label): the lead page's agreement figures.
* ``hist:card:<id>``, ``hist:merchant:<id>`` (LIST, newest first, capped): every decision on
  that card or merchant; ``verdicts:card:<id>``, ``verdicts:merchant:<id>`` (LIST): verdicts.

Everything that changes a case runs as one server-side script, so two analysts (or a page and
the CLI) can never both decide the same case. Writes of the scoring service go through the
caller's pipeline so a batch's cases cost no extra round trip.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis

from features import resp

PREFIX = "rs:review:"
QUEUE_KEY = PREFIX + "queue"
NEEDINFO_KEY = PREFIX + "needinfo"
CASE_PREFIX = PREFIX + "case:"
INDEX_KEY = PREFIX + "index"
CHANGES_KEY = PREFIX + "changes"
CLAIM_PREFIX = PREFIX + "claim:"
AUDIT_KEY = PREFIX + "audit"
OUTBOX_KEY = PREFIX + "outbox"
VERDICTS_KEY = PREFIX + "verdicts"
OUTCOMES_KEY = PREFIX + "outcomes"
HIST_PREFIX = PREFIX + "hist:"
VERDICT_LIST_PREFIX = PREFIX + "verdicts:"
#: The change stream only needs to cover the gap between two refreshes of a web process; one
#: that fell further behind reloads the whole index.
CHANGES_MAXLEN = 20_000
HISTORY_LEN = 25
HISTORY_TTL_SECONDS = 30 * 86400

FRAUD, LEGITIMATE, NEEDS_INFO = "fraud", "legitimate", "needs_more_info"
VERDICTS = (FRAUD, LEGITIMATE, NEEDS_INFO)
FINAL_VERDICTS = (FRAUD, LEGITIMATE)


def summary_of(case: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the queue lists and filters on (kept small: 100,000 of them load at once)."""
    txn = case.get("transaction") or {}
    return {
        "event_id": case["event_id"],
        "ts": int(case.get("ts") or 0),
        "queued_at": float(case.get("scored_at") or time.time()),
        "amount": float(case.get("amount") or 0.0),
        "currency": str(txn.get("currency") or ""),
        "merchant_id": str(case.get("merchant_id") or txn.get("merchant_id") or ""),
        "country": str(txn.get("country") or ""),
        "channel": str(txn.get("channel") or ""),
        "score": float(case.get("score") or 0.0),
        "decision": str(case.get("decision") or ""),
        "reasons": [str(r) for r in case.get("reasons") or []],
        "expected_loss": float(case["expected_loss"]),
    }


def case_commands(cases: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The commands that queue ``cases`` (each needs event_id and expected_loss)."""
    if not cases:
        return []
    ranking = {c["event_id"]: float(c["expected_loss"]) for c in cases}
    out: list[tuple[Any, ...]] = [
        ("HSET", CASE_PREFIX + c["event_id"], "data", orjson.dumps(c)) for c in cases
    ]
    index: list[Any] = ["HSET", INDEX_KEY]
    for c in cases:
        index += [c["event_id"], orjson.dumps(summary_of(c))]
    out.append(tuple(index))
    zadd: list[Any] = ["ZADD", QUEUE_KEY]
    for eid, loss in ranking.items():
        zadd += [repr(loss), eid]
    out.append(tuple(zadd))
    out.append(("XADD", CHANGES_KEY, "MAXLEN", "~", CHANGES_MAXLEN, "*", "op", "add",
                "ids", orjson.dumps(list(ranking))))  # fmt: skip
    return out


def add_cases(pipe: redis.client.Pipeline, cases: Sequence[dict[str, Any]]) -> None:
    """Queue cases on ``pipe`` (the caller executes it); each needs event_id and expected_loss."""
    for cmd in case_commands(cases):
        pipe.execute_command(*cmd)  # type: ignore[no-untyped-call]


# -- recent history per card and merchant (every decision, written by the live service) --------

HISTORY_SCRIPT = """
local n, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local a = 3
for i = 1, #KEYS do
  local k = tonumber(ARGV[a])
  local len = redis.call('LPUSH', KEYS[i], unpack(ARGV, a + 1, a + k))
  if len > n then redis.call('LTRIM', KEYS[i], 0, n - 1) end
  redis.call('EXPIRE', KEYS[i], ttl)
  a = a + k + 1
end
return #KEYS
"""


_HISTORY_BULK = resp.bulk(HISTORY_SCRIPT.encode())


def history_command(
    decisions: Sequence[Any], records: Sequence[Mapping[str, Any]], keep: int = HISTORY_LEN
) -> bytes:
    """One packed ``EVAL`` of the history script: each decision goes to its card's and its
    merchant's recent history (one LPUSH per distinct card or merchant, the newest first,
    ``keep`` at most). An entry goes to two lists but is packed once (packing the arguments
    one by one cost a 1,000-event batch ~4 ms)."""
    lists: dict[str, list[bytes]] = {}
    dumps, bulk = orjson.dumps, resp.bulk
    for d, txn in zip(decisions, records, strict=True):
        merchant = str(txn.get("merchant_id") or "")
        entry = bulk(dumps(
            {"event_id": d.event_id, "ts": d.ts, "amount": d.amount, "score": d.score,
             "decision": d.decision, "card_id": d.card_id, "merchant_id": merchant,
             "currency": txn.get("currency") or ""}
        ))  # fmt: skip
        lists.setdefault(f"{HIST_PREFIX}card:{d.card_id}", []).append(entry)
        lists.setdefault(f"{HIST_PREFIX}merchant:{merchant}", []).append(entry)
    parts = [resp.pack_args(list(lists)), bulk(b"%d" % keep), bulk(b"%d" % HISTORY_TTL_SECONDS)]
    n = 3 + len(lists) + 2
    for entries in lists.values():
        kept = entries[-keep:]  # pushed in order: the newest ends up first
        parts.append(bulk(b"%d" % len(kept)))
        parts.extend(kept)
        n += 1 + len(kept)
    head = b"*%d\r\n$4\r\nEVAL\r\n%s%s" % (n, _HISTORY_BULK, bulk(b"%d" % len(lists)))
    return head + b"".join(parts)


def history(client: redis.Redis, card_id: str, merchant_id: str) -> dict[str, list[Any]]:
    """Recent decisions and verdicts on a card and a merchant (one round trip)."""
    pipe = client.pipeline(transaction=False)
    pipe.lrange(f"{HIST_PREFIX}card:{card_id}", 0, -1)
    pipe.lrange(f"{HIST_PREFIX}merchant:{merchant_id}", 0, -1)
    pipe.lrange(f"{VERDICT_LIST_PREFIX}card:{card_id}", 0, 49)
    pipe.lrange(f"{VERDICT_LIST_PREFIX}merchant:{merchant_id}", 0, 49)
    card, merchant, vcard, vmerchant = ([orjson.loads(v) for v in r] for r in pipe.execute())
    return {"card": card, "merchant": merchant, "card_verdicts": vcard,
            "merchant_verdicts": vmerchant}  # fmt: skip


# -- reading -------------------------------------------------------------------------------------


def queue_depth(client: redis.Redis) -> int:
    return int(client.zcard(QUEUE_KEY))


def top_cases(client: redis.Redis, n: int = 20) -> list[dict[str, Any]]:
    """The ``n`` open cases with the highest expected loss, highest first."""
    ids = client.zrevrange(QUEUE_KEY, 0, n - 1)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for eid in ids:
        pipe.hget(CASE_PREFIX + (eid.decode() if isinstance(eid, bytes) else str(eid)), "data")
    return [orjson.loads(raw) for raw in pipe.execute() if raw]


def load_case(client: redis.Redis, event_id: str) -> dict[str, Any] | None:
    """The case with its verdict, needs-more-info note, later outcome and current claim."""
    pipe = client.pipeline(transaction=False)
    pipe.hmget(CASE_PREFIX + event_id, ["data", "verdict", "pending"])
    pipe.hget(OUTCOMES_KEY, event_id)
    pipe.get(CLAIM_PREFIX + event_id)
    pipe.ttl(CLAIM_PREFIX + event_id)
    (data, verdict, pending), outcome, claim, ttl = pipe.execute()
    if data is None:
        return None
    case: dict[str, Any] = orjson.loads(data)
    case["verdict"] = orjson.loads(verdict) if verdict else None
    case["pending"] = orjson.loads(pending) if pending else None
    case["outcome"] = orjson.loads(outcome) if outcome else None
    case["claim"] = parse_claim(claim, ttl)
    return case


def parse_claim(raw: bytes | None, ttl: int = -1) -> dict[str, Any] | None:
    if not raw:
        return None
    analyst, _, at = raw.decode().partition("\t")
    return {"analyst": analyst, "claimed_at": float(at or 0), "expires_at": time.time() + ttl}


def claims(client: redis.Redis, event_ids: Sequence[str]) -> list[str | None]:
    """Who holds each case now (None when nobody), one round trip."""
    if not event_ids:
        return []
    raw: Any = client.mget([CLAIM_PREFIX + e for e in event_ids])
    return [None if v is None else v.decode().partition("\t")[0] for v in raw]


# -- changing a case: one script each, so concurrent analysts see one outcome --------------------

_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 0 then return cjson.encode({ok=false, why='missing'}) end
local verdict = redis.call('HGET', KEYS[2], 'verdict')
if verdict then return cjson.encode({ok=false, why='decided', verdict=cjson.decode(verdict)}) end
if cur then
  local holder, at = string.match(cur, '^(.-)\\t(.*)$')
  if holder ~= ARGV[1] and ARGV[4] ~= '1' then
    return cjson.encode({ok=false, why='claimed', analyst=holder, claimed_at=tonumber(at),
                         ttl=redis.call('TTL', KEYS[1])})
  end
  if holder == ARGV[1] then
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    return cjson.encode({ok=true, analyst=holder, claimed_at=tonumber(at), ttl=tonumber(ARGV[3])})
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. '\\t' .. ARGV[2], 'EX', ARGV[3])
return cjson.encode({ok=true, analyst=ARGV[1], claimed_at=tonumber(ARGV[2]), ttl=tonumber(ARGV[3])})
"""

# KEYS: case, claim, queue, needinfo, index, changes, audit, outbox, verdicts,
#       verdicts:card, verdicts:merchant
# ARGV: analyst, now, verdict, comment, label JSON ('' = none), role, changes maxlen
_DECIDE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return cjson.encode({ok=false, why='missing'}) end
local old = redis.call('HGET', KEYS[1], 'verdict')
if old then return cjson.encode({ok=false, why='decided', verdict=cjson.decode(old)}) end
local cur = redis.call('GET', KEYS[2])
local claimed_at = false
if cur then
  local holder, at = string.match(cur, '^(.-)\\t(.*)$')
  if holder ~= ARGV[1] then
    return cjson.encode({ok=false, why='claimed', analyst=holder, claimed_at=tonumber(at)})
  end
  claimed_at = tonumber(at)
end
local data = cjson.decode(redis.call('HGET', KEYS[1], 'data'))
local eid = data['event_id']
local pending = redis.call('HGET', KEYS[1], 'pending')
local before = 'open'
if pending then before = 'needs_more_info' end
local record = cjson.encode({verdict=ARGV[3], analyst=ARGV[1], at=tonumber(ARGV[2]),
                             comment=ARGV[4], claimed_at=claimed_at, event_id=eid})
redis.call('DEL', KEYS[2])
if ARGV[3] == 'needs_more_info' then
  redis.call('HSET', KEYS[1], 'pending', record)
  local el = redis.call('ZSCORE', KEYS[3], eid) or redis.call('ZSCORE', KEYS[4], eid)
  redis.call('ZREM', KEYS[3], eid)
  if el then redis.call('ZADD', KEYS[4], el, eid) end
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'op', 'needinfo',
             'ids', cjson.encode({eid}))
else
  redis.call('HSET', KEYS[1], 'verdict', record)
  redis.call('HDEL', KEYS[1], 'pending')
  redis.call('ZREM', KEYS[3], eid)
  redis.call('ZREM', KEYS[4], eid)
  redis.call('HDEL', KEYS[5], eid)
  redis.call('HSET', KEYS[9], eid, record)
  redis.call('LPUSH', KEYS[10], record)
  redis.call('LTRIM', KEYS[10], 0, 99)
  redis.call('LPUSH', KEYS[11], record)
  redis.call('LTRIM', KEYS[11], 0, 99)
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[8], eid, ARGV[5]) end
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'op', 'remove',
             'ids', cjson.encode({eid}))
end
redis.call('XADD', KEYS[7], '*', 'at', ARGV[2], 'actor', ARGV[1], 'role', ARGV[6],
           'action', 'verdict', 'event_id', eid, 'before', before, 'after', ARGV[3],
           'comment', ARGV[4])
return cjson.encode({ok=true, record=cjson.decode(record)})
"""

# KEYS: case, claim, queue, index, changes, audit, verdicts  ARGV: actor, now, comment, maxlen
_REOPEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return cjson.encode({ok=false, why='missing'}) end
local old = redis.call('HGET', KEYS[1], 'verdict')
if not old then return cjson.encode({ok=false, why='open'}) end
local data = cjson.decode(redis.call('HGET', KEYS[1], 'data'))
local eid = data['event_id']
redis.call('HDEL', KEYS[1], 'verdict')
redis.call('HSET', KEYS[1], 'reopened', old)
redis.call('HDEL', KEYS[7], eid)
redis.call('DEL', KEYS[2])
redis.call('ZADD', KEYS[3], data['expected_loss'], eid)
redis.call('HSET', KEYS[4], eid, ARGV[5])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'op', 'add', 'ids', cjson.encode({eid}))
local v = cjson.decode(old)
redis.call('XADD', KEYS[6], '*', 'at', ARGV[2], 'actor', ARGV[1], 'role', 'lead',
           'action', 'reopen', 'event_id', eid, 'before', v['verdict'] .. ' by ' .. v['analyst'],
           'after', 'open', 'comment', ARGV[3])
return cjson.encode({ok=true, previous=v})
"""


def _result(raw: Any) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(raw)
    return out


class CaseStore:
    """The review operations on one Redis database; every change is one atomic script call."""

    def __init__(self, client: redis.Redis, claim_seconds: int = 600) -> None:
        self.redis = client
        self.claim_seconds = claim_seconds
        self._claim = client.register_script(_CLAIM)
        self._decide = client.register_script(_DECIDE)
        self._reopen = client.register_script(_REOPEN)

    def claim(self, event_id: str, analyst: str, force: bool = False) -> dict[str, Any]:
        """Claim (or renew) a case for ``analyst``; ``force`` takes it over (a lead reassigning).

        Returns ``{"ok": True, ...}`` or ``{"ok": False, "why": missing|decided|claimed, ...}``.
        """
        return _result(
            self._claim(
                keys=[CLAIM_PREFIX + event_id, CASE_PREFIX + event_id],
                args=[analyst, f"{time.time():.3f}", self.claim_seconds, "1" if force else "0"],
            )
        )

    def release(self, event_id: str, analyst: str) -> bool:
        """Give a claim back (only its holder can)."""
        key = CLAIM_PREFIX + event_id
        raw: Any = self.redis.get(key)
        if raw is None or raw.decode().partition("\t")[0] != analyst:
            return False
        return bool(self.redis.delete(key))

    def decide(
        self,
        event_id: str,
        analyst: str,
        verdict: str,
        comment: str,
        label: Mapping[str, Any] | None,
        role: str = "analyst",
    ) -> dict[str, Any]:
        """Write a verdict once; a final one also leaves the queue and puts its label in the
        outbox (in the same script, so a verdict never exists without its label)."""
        if verdict not in VERDICTS:
            msg = f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}"
            raise ValueError(msg)
        raw = self.redis.hget(CASE_PREFIX + event_id, "data")
        case = orjson.loads(raw) if raw else {}
        card = str(case.get("card_id") or "")
        merchant = str(case.get("merchant_id") or "")
        return _result(
            self._decide(
                keys=[
                    CASE_PREFIX + event_id, CLAIM_PREFIX + event_id, QUEUE_KEY, NEEDINFO_KEY,
                    INDEX_KEY, CHANGES_KEY, AUDIT_KEY, OUTBOX_KEY, VERDICTS_KEY,
                    f"{VERDICT_LIST_PREFIX}card:{card}",
                    f"{VERDICT_LIST_PREFIX}merchant:{merchant}",
                ],  # fmt: skip
                args=[
                    analyst, f"{time.time():.3f}", verdict, comment,
                    orjson.dumps(label) if label else b"", role, CHANGES_MAXLEN,
                ],  # fmt: skip
            )
        )

    def reopen(self, event_id: str, lead: str, comment: str) -> dict[str, Any]:
        """Put a decided case back in the queue (a lead's correction); audited."""
        raw = self.redis.hget(CASE_PREFIX + event_id, "data")
        summary = orjson.dumps(summary_of(orjson.loads(raw))) if raw else b""
        return _result(
            self._reopen(
                keys=[
                    CASE_PREFIX + event_id, CLAIM_PREFIX + event_id, QUEUE_KEY, INDEX_KEY,
                    CHANGES_KEY, AUDIT_KEY, VERDICTS_KEY,
                ],  # fmt: skip
                args=[lead, f"{time.time():.3f}", comment, CHANGES_MAXLEN, summary],
            )
        )

    def reassign(self, event_id: str, lead: str, to: str) -> dict[str, Any]:
        """Hand a case to another analyst (a lead's call); audited."""
        before: Any = self.redis.get(CLAIM_PREFIX + event_id)
        result = self.claim(event_id, to, force=True)
        if result["ok"]:
            holder = before.decode().partition("\t")[0] if before else "nobody"
            self.audit(lead, "lead", "reassign", event_id, holder, to, "")
        return result

    def audit(
        self, actor: str, role: str, action: str, event_id: str, before: str, after: str,
        comment: str,
    ) -> None:  # fmt: skip
        self.redis.xadd(
            AUDIT_KEY,
            {"at": f"{time.time():.3f}", "actor": actor, "role": role, "action": action,
             "event_id": event_id, "before": before, "after": after, "comment": comment},
        )  # fmt: skip

    def audit_log(self, count: int | None = None) -> list[dict[str, str]]:
        """Audit records, newest first (all of them when ``count`` is None)."""
        rows: Any = self.redis.xrevrange(AUDIT_KEY, count=count)
        return [
            {"id": rid.decode(), **{k.decode(): v.decode() for k, v in fields.items()}}
            for rid, fields in rows
        ]

    # -- the label outbox ---------------------------------------------------------------------

    def outbox(self) -> dict[str, bytes]:
        raw: Any = self.redis.hgetall(OUTBOX_KEY)
        return {k.decode(): v for k, v in raw.items()}

    def delivered(self, event_ids: Sequence[str]) -> None:
        if event_ids:
            self.redis.hdel(OUTBOX_KEY, *event_ids)

    # -- lead figures ---------------------------------------------------------------------------

    def verdicts_and_outcomes(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """Every current final verdict, and the later outcomes known for decided cases."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(VERDICTS_KEY)
        pipe.hgetall(OUTCOMES_KEY)
        verdicts, outcomes = pipe.execute()
        return (
            [orjson.loads(v) for v in verdicts.values()],
            {k.decode(): orjson.loads(v) for k, v in outcomes.items()},
        )

    def record_outcomes(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Keep labels from other sources (chargebacks ...) of review cases; returns how many."""
        labels = [lab for lab in labels if lab.get("source") != "analyst" and lab.get("event_id")]
        if not labels:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for lab in labels:
            pipe.exists(CASE_PREFIX + str(lab["event_id"]))
        known = pipe.execute()
        mapping: dict[Any, Any] = {
            str(lab["event_id"]): orjson.dumps(
                {"is_fraud": bool(lab.get("is_fraud")), "source": lab.get("source") or "",
                 "ts": lab.get("ts")}  # fmt: skip
            )
            for lab, k in zip(labels, known, strict=True)
            if k
        }
        if mapping:
            self.redis.hset(OUTCOMES_KEY, mapping=mapping)
        return len(mapping)
