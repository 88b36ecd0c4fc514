"""Simulated card transactions with labelled fraud, fully vectorised and deterministic per seed.

The world: customers with a home country, one or two cards, one to three devices, a home IP, a
spending level (log-normal amounts) and a set of usual merchants; merchants with a category (MCC),
a channel (pos, ecom, atm), a country, a popularity and terminals. Customers transact a few times
a day with a day/night cycle and a weekly rhythm, mostly at their usual merchants and in their home
country; some travel abroad for a few days (legitimate foreign transactions).

Three labelled fraud patterns, each carrying a signal that velocity features can learn:

``card_testing``
    bursts of 5-30 tiny amounts (0.50-5.00) on one card within minutes, mostly e-commerce at one
    merchant, usually from a foreign country and a device/IP the card never used (fraud devices
    are shared between bursts, as a ring reuses its machines).
``compromised_merchant``
    a few merchants a week that, for 1-5 days, process a surge of fraudulent transactions from
    many unrelated cards at higher-than-usual amounts; some legitimate cards that paid there are
    later used fraudulently online (1-10 days after), also labelled ``compromised_merchant``.
``account_takeover``
    a customer's card suddenly makes several (2-7) purchases at 5-20 times the customer's usual
    amount, online, from a new device and IP, mostly in a foreign country, within a few hours.

The overall fraud rate is about 1 % (0.5-2 % for any reasonable size). Identifiers are tokens
(``card_000123``, ``dev_0004711``, ...) and never contain a 13-19 digit run, so no field can be
mistaken for a card number by the engine's validator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Columns of a simulated frame, in order: the transaction fields, then the labels.
COLUMNS = (
    "event_id", "ts", "card_id", "customer_id", "merchant_id", "amount", "currency", "channel",
    "device_id", "ip", "country", "mcc", "is_fraud", "fraud_pattern",
)  # fmt: skip
FRAUD_PATTERNS = ("card_testing", "compromised_merchant", "account_takeover")
CHANNELS = ("pos", "ecom", "atm")
_POS, _ECOM, _ATM = 0, 1, 2

_MS_MIN = 60_000
_MS_HOUR = 3_600_000
_MS_DAY = 86_400_000

# country, currency, weight as home country, weight for physical merchants, weight for online
# merchants, first IP octets of its (made-up) address blocks
_COUNTRIES: tuple[tuple[str, str, float, float, float, tuple[int, ...]], ...] = (
    ("DE", "EUR", 0.27, 0.25, 0.18, (77, 84, 91)),
    ("FR", "EUR", 0.19, 0.18, 0.12, (78, 82, 90)),
    ("NL", "EUR", 0.10, 0.09, 0.10, (80, 145)),
    ("ES", "EUR", 0.10, 0.10, 0.05, (83, 88)),
    ("IT", "EUR", 0.10, 0.10, 0.05, (79, 93)),
    ("BE", "EUR", 0.06, 0.05, 0.03, (81, 109)),
    ("AT", "EUR", 0.05, 0.05, 0.02, (62, 85)),
    ("PT", "EUR", 0.04, 0.04, 0.02, (89, 94)),
    ("IE", "EUR", 0.03, 0.03, 0.08, (86, 87)),
    ("FI", "EUR", 0.03, 0.03, 0.02, (95, 176)),
    ("PL", "PLN", 0.03, 0.03, 0.03, (31, 83)),
    ("GB", "GBP", 0.0, 0.02, 0.12, (81, 86, 92)),
    ("US", "USD", 0.0, 0.01, 0.15, (23, 64, 104)),
    ("CH", "CHF", 0.0, 0.01, 0.02, (46, 178)),
    ("SE", "SEK", 0.0, 0.01, 0.02, (78, 155)),
)
_N_COUNTRIES = len(_COUNTRIES)
_UTC_OFFSET = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 2, 1, 0, -5, 1, 1], dtype=np.int64)

# mcc, share of merchants, probability a merchant of it is online, log amount shift vs the
# customer's usual level, popularity factor
_MCCS: tuple[tuple[str, float, float, float, float], ...] = (
    ("5411", 0.17, 0.03, 0.35, 2.0),  # grocery
    ("5812", 0.13, 0.02, 0.25, 1.0),  # restaurants
    ("5814", 0.08, 0.05, -0.95, 1.5),  # fast food
    ("5541", 0.06, 0.0, 0.55, 1.2),  # fuel
    ("5912", 0.05, 0.10, -0.25, 1.0),  # pharmacy
    ("5311", 0.04, 0.25, 0.75, 0.8),  # department stores
    ("5651", 0.06, 0.35, 0.85, 0.6),  # clothing
    ("5732", 0.03, 0.50, 1.70, 0.4),  # electronics
    ("4111", 0.03, 0.20, -1.20, 1.5),  # transit
    ("4121", 0.03, 0.40, 0.00, 0.6),  # taxi / ride hailing
    ("5999", 0.08, 0.40, 0.20, 0.7),  # misc retail
    ("5815", 0.05, 1.00, -1.10, 0.9),  # digital goods
    ("5942", 0.03, 0.50, 0.00, 0.4),  # books
    ("5964", 0.04, 1.00, 0.60, 0.7),  # catalogue / marketplace
    ("4722", 0.02, 0.80, 2.40, 0.2),  # travel agencies
    ("7011", 0.02, 0.60, 2.10, 0.2),  # hotels
    ("5944", 0.01, 0.30, 2.20, 0.1),  # jewellery
    ("6011", 0.07, 0.0, 0.0, 1.0),  # ATM
)
_ATM_MCC = len(_MCCS) - 1
_HIGH_VALUE_MCCS = ("5732", "4722", "5944", "5964", "5311")

# relative activity per hour of the day (legitimate) and for fraudsters (night-heavy, flatter)
_HOURS = np.array(
    [0.30, 0.18, 0.12, 0.10, 0.10, 0.20, 0.50, 1.00, 1.50, 1.80, 2.00, 2.20,
     2.60, 2.40, 2.00, 2.00, 2.20, 2.60, 2.80, 2.60, 2.00, 1.50, 1.00, 0.60]
)  # fmt: skip
_FRAUD_HOURS = 0.5 * _HOURS / _HOURS.sum() + 0.5 * np.roll(_HOURS, 12) / _HOURS.sum()
_WEEKDAY = np.array([1.0, 0.98, 1.0, 1.05, 1.15, 1.2, 0.8])  # Monday .. Sunday

_N_FAVOURITES = 12
_P_FAVOURITE = 0.85
_ECOM_SHARE = 0.3
_CARD_TESTING_RATE = 0.003
_COMPROMISED_RATE = 0.004
_P_ABUSED = 0.2  # share of cards exposed at a compromised merchant that are abused later
_TAKEOVER_RATE = 0.002


def _p(weights: Sequence[float] | npt.NDArray[np.floating[Any]]) -> FloatArray:
    w: FloatArray = np.asarray(weights, dtype=np.float64)
    out: FloatArray = w / w.sum()
    return out


def _pick(rng: np.random.Generator, pool: IntArray, weights: FloatArray | None, n: int) -> IntArray:
    """``n`` draws (with replacement) from ``pool``, by ``weights`` (uniform if None)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if weights is None:
        return pool[rng.integers(0, len(pool), n)]
    cum = np.cumsum(weights, dtype=np.float64)
    idx = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
    out: IntArray = pool[np.minimum(idx, len(pool) - 1)]
    return out


def _or_all(pool: IntArray, n: int) -> IntArray:
    """``pool``, or all of ``range(n)`` when it is empty (tiny worlds)."""
    return pool if len(pool) else np.arange(n, dtype=np.int64)


def _random_ips(rng: np.random.Generator, country: IntArray) -> IntArray:
    """Random IPv4 addresses (as integers) inside the address blocks of ``country``."""
    n = len(country)
    n_blocks = np.array([len(c[5]) for c in _COUNTRIES])
    blocks = np.zeros((_N_COUNTRIES, int(n_blocks.max())), dtype=np.int64)
    for i, c in enumerate(_COUNTRIES):
        blocks[i, : len(c[5])] = c[5]
    first = blocks[country, (rng.random(n) * n_blocks[country]).astype(np.int64)]
    rest = rng.integers(0, 256, (n, 2))
    last = rng.integers(1, 255, n)
    ips: IntArray = (first << 24) | (rest[:, 0] << 16) | (rest[:, 1] << 8) | last
    return ips


def _other_country(rng: np.random.Generator, home: IntArray) -> IntArray:
    """A uniformly random country different from ``home``."""
    shift = rng.integers(1, _N_COUNTRIES, len(home))
    return (home + shift) % _N_COUNTRIES


def _group_offsets(sizes: IntArray) -> IntArray:
    """For groups of ``sizes`` laid end to end: each element's position inside its group."""
    total = int(sizes.sum())
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.arange(total, dtype=np.int64) - starts


def _names(prefix: str, codes: IntArray, width: int) -> npt.NDArray[np.object_]:
    """``prefix + zero-padded code`` for each code, built once per distinct code."""
    uniq, inverse = np.unique(codes, return_inverse=True)
    labels = np.array([f"{prefix}{c:0{width}d}" for c in uniq.tolist()], dtype=object)
    return labels[inverse]


def _ip_strings(ips: IntArray) -> npt.NDArray[np.object_]:
    uniq, inverse = np.unique(ips, return_inverse=True)
    labels = np.array(
        [f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}" for v in uniq.tolist()],
        dtype=object,
    )
    return labels[inverse]


class _Tx:
    """Columns of a set of transactions as integer codes, before they become strings."""

    __slots__ = (
        "amount", "card", "channel", "country", "device", "ip", "merchant", "pattern", "ts",
    )  # fmt: skip

    def __init__(self, **cols: Any) -> None:
        n = len(cols["ts"])
        self.ts: IntArray = np.asarray(cols["ts"], dtype=np.int64)
        self.card: IntArray = np.asarray(cols["card"], dtype=np.int64)
        self.merchant: IntArray = np.asarray(cols["merchant"], dtype=np.int64)
        self.amount: FloatArray = np.asarray(cols["amount"], dtype=np.float64)
        self.channel: IntArray = np.asarray(cols["channel"], dtype=np.int64)
        #: >= 0: a customer's or fraudster's device; < 0: terminal ``-1 - device``
        self.device: IntArray = np.asarray(cols["device"], dtype=np.int64)
        self.ip: IntArray = np.asarray(cols["ip"], dtype=np.int64)
        self.country: IntArray = np.asarray(cols["country"], dtype=np.int64)
        #: 0 legitimate, else 1 + index in FRAUD_PATTERNS
        self.pattern: IntArray = np.full(n, int(cols.get("pattern", 0)), dtype=np.int64)

    @staticmethod
    def concat(parts: Sequence[_Tx]) -> _Tx:
        out = _Tx.__new__(_Tx)
        for name in _Tx.__slots__:
            setattr(out, name, np.concatenate([getattr(p, name) for p in parts]))
        return out


class _World:
    """Customers, cards, devices and merchants."""

    def __init__(
        self, rng: np.random.Generator, n_customers: int, n_merchants: int, tx_per_day: float
    ) -> None:
        c_n, m_n = n_customers, n_merchants
        # -- customers
        self.home: IntArray = rng.choice(_N_COUNTRIES, c_n, p=_p([c[2] for c in _COUNTRIES]))
        self.rate: FloatArray = tx_per_day * rng.gamma(2.0, 0.5, c_n)
        self.mu: FloatArray = np.log(28.0) + rng.normal(0.0, 0.45, c_n)
        self.sigma: FloatArray = rng.uniform(0.45, 0.85, c_n)
        self.hour_shift: IntArray = rng.choice(
            np.array([-2, -1, 0, 1, 2], dtype=np.int64), c_n, p=_p([1, 2, 4, 2, 1])
        )
        self.n_devices: IntArray = 1 + rng.binomial(2, 0.3, c_n).astype(np.int64)
        self.device_start: IntArray = np.cumsum(self.n_devices) - self.n_devices
        self.n_legit_devices = int(self.n_devices.sum())
        self.home_ip: IntArray = _random_ips(rng, self.home)
        # -- cards: one per customer (card i belongs to customer i), some have a second one
        second = np.flatnonzero(rng.random(c_n) < 0.15)
        self.card_owner: IntArray = np.concatenate([np.arange(c_n, dtype=np.int64), second])
        self.second_card: IntArray = np.full(c_n, -1, dtype=np.int64)
        self.second_card[second] = c_n + np.arange(len(second))
        self.n_cards = len(self.card_owner)
        # -- merchants: the first ones guarantee a shop in every country and a few web shops
        mcc = rng.choice(len(_MCCS), m_n, p=_p([m[1] for m in _MCCS]))
        mcc[:_N_COUNTRIES] = 0
        online = rng.random(m_n) < np.array([m[2] for m in _MCCS])[mcc]
        online[:_N_COUNTRIES] = False
        web_shops = np.array([11, 13, 7])[: max(0, min(3, m_n - _N_COUNTRIES))]
        mcc[_N_COUNTRIES : _N_COUNTRIES + len(web_shops)] = web_shops
        online[_N_COUNTRIES : _N_COUNTRIES + len(web_shops)] = True
        self.m_mcc: IntArray = mcc.astype(np.int64)
        self.m_channel: IntArray = np.where(
            mcc == _ATM_MCC, _ATM, np.where(online, _ECOM, _POS)
        ).astype(np.int64)
        physical = rng.choice(_N_COUNTRIES, m_n, p=_p([c[3] for c in _COUNTRIES]))
        web = rng.choice(_N_COUNTRIES, m_n, p=_p([c[4] for c in _COUNTRIES]))
        country = np.where(self.m_channel == _ECOM, web, physical)
        country[:_N_COUNTRIES] = np.arange(min(_N_COUNTRIES, m_n))
        self.m_country: IntArray = country.astype(np.int64)
        self.m_pop: FloatArray = rng.lognormal(0.0, 1.0, m_n) * np.array([m[4] for m in _MCCS])[mcc]
        self.m_shift: FloatArray = np.array([m[3] for m in _MCCS])[mcc]
        self.m_n_terminals: IntArray = 1 + rng.poisson(1.0, m_n).astype(np.int64)
        self.m_terminal_start: IntArray = np.cumsum(self.m_n_terminals) - self.m_n_terminals
        self.m_ip: IntArray = _random_ips(rng, self.m_country)
        self.n_merchants = m_n
        self.ecom_pool = _or_all(np.flatnonzero(self.m_channel == _ECOM), m_n)
        self.pos_pool = _or_all(np.flatnonzero(self.m_channel == _POS), m_n)
        self.physical_pool = [
            _or_all(np.flatnonzero((self.m_country == k) & (self.m_channel != _ECOM)), m_n)
            for k in range(_N_COUNTRIES)
        ]
        # -- usual merchants: shops of the home country and web shops, by popularity
        # (web shops of every country are reachable, they get _ECOM_SHARE of the weight)
        self.favourites = np.zeros((c_n, _N_FAVOURITES), dtype=np.int64)
        self.reachable: list[tuple[IntArray, FloatArray]] = []
        for k in range(_N_COUNTRIES):
            pool = _or_all(np.flatnonzero((self.m_country == k) | (self.m_channel == _ECOM)), m_n)
            weight = self.m_pop[pool].copy()
            web = self.m_channel[pool] == _ECOM
            if web.any() and not web.all():
                weight[web] *= _ECOM_SHARE / weight[web].sum()
                weight[~web] *= (1.0 - _ECOM_SHARE) / weight[~web].sum()
            self.reachable.append((pool, weight))
            who = np.flatnonzero(self.home == k)
            picks = _pick(rng, pool, weight, len(who) * _N_FAVOURITES)
            self.favourites[who] = picks.reshape(len(who), _N_FAVOURITES)

    def card_of(self, rng: np.random.Generator, customer: IntArray) -> IntArray:
        """The card a customer pays with: the first one, or sometimes the second."""
        second = self.second_card[customer]
        use_second = (second >= 0) & (rng.random(len(customer)) < 0.3)
        return np.where(use_second, second, customer)

    def terminal(self, rng: np.random.Generator, merchant: IntArray) -> IntArray:
        """A terminal of each merchant, encoded as a negative device code."""
        k = (rng.random(len(merchant)) * self.m_n_terminals[merchant]).astype(np.int64)
        return -1 - (self.m_terminal_start[merchant] + k)


def _legit(rng: np.random.Generator, w: _World, days: int, weekday0: int) -> _Tx:
    """Everyday transactions (ts relative to the start)."""
    c_n = len(w.home)
    day_factor = _WEEKDAY[(weekday0 + np.arange(days)) % 7]
    lam = w.rate[:, None] * day_factor[None, :] * rng.gamma(4.0, 0.25, (c_n, days))
    counts = rng.poisson(lam).ravel()
    cell = np.repeat(np.arange(c_n * days, dtype=np.int64), counts)
    cust, day = cell // days, cell % days
    n = len(cell)
    # hours are local (winter time); ts is UTC
    hour = (rng.choice(24, n, p=_p(_HOURS)) + w.hour_shift[cust] - _UTC_OFFSET[w.home[cust]]) % 24
    ts = day * _MS_DAY + hour * _MS_HOUR + rng.integers(0, _MS_HOUR, n)

    merchant = w.favourites[cust, rng.choice(_N_FAVOURITES, n, p=_p(1.0 / np.arange(1, 13) ** 0.8))]
    explore = np.flatnonzero(rng.random(n) >= _P_FAVOURITE)
    for k in range(_N_COUNTRIES):
        idx = explore[w.home[cust[explore]] == k]
        pool, weight = w.reachable[k]
        merchant[idx] = _pick(rng, pool, weight, len(idx))

    # trips abroad: for a few days, shops and ATMs are those of another country
    traveller = rng.random(c_n) < 1.0 - np.exp(-0.12 * days / 30.0)
    trip_len = rng.integers(2, 9, c_n)
    trip_start = rng.integers(0, max(days - 1, 1), c_n)
    trip_dest = _other_country(rng, w.home)
    away = traveller[cust] & (day >= trip_start[cust]) & (day < trip_start[cust] + trip_len[cust])
    location = np.where(away, trip_dest[cust], w.home[cust])
    moved = np.flatnonzero(away & (w.m_channel[merchant] != _ECOM))
    for k in range(_N_COUNTRIES):
        idx = moved[location[moved] == k]
        pool = w.physical_pool[k]
        merchant[idx] = _pick(rng, pool, w.m_pop[pool], len(idx))

    channel = w.m_channel[merchant]
    z = rng.standard_normal(n)
    amount = np.exp(w.mu[cust] + w.m_shift[merchant] + w.sigma[cust] * z)
    amount = np.maximum(np.round(amount, 2), 0.5)
    atm = channel == _ATM
    amount[atm] = np.clip(np.round(amount[atm] * 2.5 / 20.0) * 20.0, 20.0, 1000.0)

    own_device = w.device_start[cust] + np.where(
        rng.random(n) < 0.7, 0, (rng.random(n) * w.n_devices[cust]).astype(np.int64)
    )
    ecom = channel == _ECOM
    device = np.where(ecom, own_device, w.terminal(rng, merchant))
    travel_ip = _random_ips(rng, location)
    ip = np.where(ecom, np.where(away, travel_ip, w.home_ip[cust]), w.m_ip[merchant])
    country = np.where(ecom, location, w.m_country[merchant])
    tx = _Tx(
        ts=ts, card=w.card_of(rng, cust), merchant=merchant, amount=amount, channel=channel,
        device=device, ip=ip, country=country,
    )  # fmt: skip
    return tx


class _FraudDevices:
    """A ring's machines: device codes after the customers' ones, reused across attacks."""

    def __init__(self, rng: np.random.Generator, first: int, n_pool: int) -> None:
        self.rng = rng
        self.first = first
        self.n_pool = max(n_pool, 3)

    def draw(self, n: int) -> IntArray:
        return self.first + self.rng.integers(0, self.n_pool, n)


def _fraud_start(rng: np.random.Generator, n: int, lo_ms: int, hi_ms: int) -> IntArray:
    """Start times in [lo_ms, hi_ms) (relative), with fraudsters' night-heavy hours."""
    lo_day = lo_ms // _MS_DAY
    hi_day = max(-(-hi_ms // _MS_DAY), lo_day + 1)
    t = (
        rng.integers(lo_day, hi_day, n) * _MS_DAY
        + rng.choice(24, n, p=_FRAUD_HOURS) * _MS_HOUR
        + rng.integers(0, _MS_HOUR, n)
    )
    out: IntArray = np.clip(t, lo_ms, max(hi_ms - 1, lo_ms))
    return out


def _card_testing(
    rng: np.random.Generator, w: _World, dev: _FraudDevices, n_legit: int, period_ms: int
) -> _Tx:
    n_bursts = max(1, int(rng.poisson(n_legit * _CARD_TESTING_RATE / 17.5)))
    size = rng.integers(5, 31, n_bursts)
    burst = np.repeat(np.arange(n_bursts), size)
    card = rng.integers(0, w.n_cards, n_bursts)
    home = w.home[w.card_owner[card]]
    online = rng.random(n_bursts) < 0.9
    merchant = np.where(
        online, _pick(rng, w.ecom_pool, None, n_bursts), _pick(rng, w.pos_pool, None, n_bursts)
    )
    origin = np.where(rng.random(n_bursts) < 0.7, _other_country(rng, home), home)
    new_device = rng.random(n_bursts) < 0.8
    device = np.where(new_device, dev.draw(n_bursts), w.device_start[w.card_owner[card]])
    ip = np.where(new_device, _random_ips(rng, origin), w.home_ip[w.card_owner[card]])
    start = _fraud_start(rng, n_bursts, 0, period_ms - 30 * _MS_MIN)

    gaps = rng.exponential(12_000.0, len(burst)).astype(np.int64) + 500
    first = _group_offsets(size) == 0
    gaps[first] = 0
    cum = np.cumsum(gaps)
    offset = cum - np.repeat(cum[np.cumsum(size) - size], size)
    ts = np.minimum(start[burst] + offset, period_ms - 1)

    amount = np.round(rng.uniform(0.5, 5.0, len(burst)), 2)
    whole = rng.random(len(burst)) < 0.3
    amount[whole] = np.maximum(np.round(amount[whole]), 1.0)
    m = merchant[burst]
    is_online = online[burst]
    return _Tx(
        ts=ts, card=card[burst], merchant=m, amount=amount,
        channel=np.where(is_online, _ECOM, w.m_channel[m]),
        device=np.where(is_online, device[burst], w.terminal(rng, m)),
        ip=np.where(is_online, ip[burst], w.m_ip[m]),
        country=np.where(is_online, origin[burst], w.m_country[m]),
        pattern=1,
    )  # fmt: skip


def _compromised_merchants(
    rng: np.random.Generator,
    w: _World,
    dev: _FraudDevices,
    legit: _Tx,
    days: int,
    period_ms: int,
) -> _Tx:
    n_legit = len(legit.ts)
    candidates = _or_all(np.flatnonzero(w.m_channel != _ATM), w.n_merchants)
    weight = np.where(w.m_channel[candidates] == _ECOM, 3.0, 1.0)
    scale = min(1.0, w.n_merchants / 1000.0)
    n_m = int(np.clip(rng.poisson(2.5 * days / 7.0 * scale), 1, len(candidates)))
    chosen = rng.choice(candidates, n_m, replace=False, p=_p(weight))
    length = np.minimum(rng.integers(1, 6, n_m), days) * _MS_DAY
    start = (rng.random(n_m) * (period_ms - length + 1)).astype(np.int64)
    budget = n_legit * _COMPROMISED_RATE
    mean = budget * length / length.sum() * rng.lognormal(0.0, 0.3, n_m)
    count = np.maximum(rng.poisson(mean), 3)

    win = np.repeat(np.arange(n_m), count)
    n = len(win)
    m = chosen[win]
    ts = start[win] + (rng.random(n) * length[win]).astype(np.int64)
    card = rng.integers(0, w.n_cards, n)
    home = w.home[w.card_owner[card]]
    origin = np.where(rng.random(n) < 0.5, _other_country(rng, home), home)
    amount = np.exp(np.log(28.0) + w.m_shift[m] + 1.0 + 0.5 * rng.standard_normal(n))
    online = w.m_channel[m] == _ECOM
    surge = _Tx(
        ts=ts, card=card, merchant=m, amount=np.maximum(np.round(amount, 2), 1.0),
        channel=w.m_channel[m],
        device=np.where(online, dev.draw(n), w.terminal(rng, m)),
        ip=np.where(online, _random_ips(rng, origin), w.m_ip[m]),
        country=np.where(online, origin, w.m_country[m]),
        pattern=2,
    )  # fmt: skip

    # cards that paid at a compromised merchant during its window are later abused online
    pos_of = np.full(w.n_merchants, -1, dtype=np.int64)
    pos_of[chosen] = np.arange(n_m)
    win_of_tx = pos_of[legit.merchant]
    hit = win_of_tx >= 0
    rel = legit.ts - start[np.maximum(win_of_tx, 0)]
    hit &= (rel >= 0) & (rel < length[np.maximum(win_of_tx, 0)])
    exposed = np.flatnonzero(hit)
    exposed = exposed[np.argsort(legit.ts[exposed], kind="stable")]
    cards, first = np.unique(legit.card[exposed], return_index=True)
    when = legit.ts[exposed[first]]
    abused = rng.random(len(cards)) < _P_ABUSED
    cards, when = cards[abused], when[abused]
    size = rng.integers(1, 4, len(cards))
    idx = np.repeat(np.arange(len(cards)), size)
    ts2 = when[idx] + rng.integers(_MS_DAY, 10 * _MS_DAY, len(idx))
    keep = ts2 < period_ms
    idx, ts2 = idx[keep], ts2[keep]
    card2 = cards[idx]
    owner = w.card_owner[card2]
    m2 = _pick(rng, w.ecom_pool, w.m_pop[w.ecom_pool], len(idx))
    home2 = w.home[owner]
    origin2 = np.where(rng.random(len(idx)) < 0.6, _other_country(rng, home2), home2)
    amount2 = np.round(np.exp(w.mu[owner]) * rng.uniform(2.0, 6.0, len(idx)), 2)
    follow = _Tx(
        ts=ts2, card=card2, merchant=m2, amount=np.maximum(amount2, 1.0),
        channel=np.full(len(idx), _ECOM), device=dev.draw(len(idx)),
        ip=_random_ips(rng, origin2), country=origin2, pattern=2,
    )  # fmt: skip
    return _Tx.concat([surge, follow])


def _account_takeover(
    rng: np.random.Generator, w: _World, dev: _FraudDevices, n_legit: int, period_ms: int
) -> _Tx:
    n_ev = max(1, int(rng.poisson(n_legit * _TAKEOVER_RATE / 4.5)))
    size = rng.integers(2, 8, n_ev)
    ev = np.repeat(np.arange(n_ev), size)
    n = len(ev)
    cust = rng.integers(0, len(w.home), n_ev)
    card = w.card_of(rng, cust)
    lo = min(period_ms // 10, 3 * _MS_DAY)
    start = _fraud_start(rng, n_ev, lo, period_ms - 4 * _MS_HOUR)
    span = rng.integers(30 * _MS_MIN, 4 * _MS_HOUR, n_ev)
    offset = (rng.random(n) * span[ev]).astype(np.int64)
    offset[_group_offsets(size) == 0] = 0
    ts = np.minimum(start[ev] + offset, period_ms - 1)

    high = np.isin(np.array([m[0] for m in _MCCS])[w.m_mcc], _HIGH_VALUE_MCCS)
    pool = np.flatnonzero((w.m_channel == _ECOM) & high)
    if len(pool) == 0:
        pool = w.ecom_pool
    merchant = _pick(rng, pool, w.m_pop[pool], n)
    origin = np.where(rng.random(n_ev) < 0.75, _other_country(rng, w.home[cust]), w.home[cust])
    ip = _random_ips(rng, origin)
    amount = np.round(np.exp(w.mu[cust[ev]]) * rng.uniform(5.0, 20.0, n), 2)
    return _Tx(
        ts=ts, card=card[ev], merchant=merchant, amount=amount, channel=np.full(n, _ECOM),
        device=dev.draw(n_ev)[ev], ip=ip[ev], country=origin[ev], pattern=3,
    )  # fmt: skip


@dataclass(frozen=True)
class DriftScenario:
    """A shift of the world from ``start_day`` (days after the start) until ``end_day``.

    Three changes on-call should see: the amounts of merchant category ``mcc`` (or several,
    comma-separated) multiplied by
    ``amount_factor``; a new population of devices (``devnew_*``, ``n_new_devices`` of them
    shared by many customers, as after an app release or with a device farm) taking
    ``device_share`` of e-commerce payments; and a fraud wave (card testing, account takeover
    and compromised merchants at ``fraud_factor`` times their usual rate). Everything before
    ``start_day`` is the very same as without drift (the drift draws from its own random
    stream).
    """

    start_day: float
    end_day: float | None = None
    mcc: str = "5411"
    amount_factor: float = 3.0
    device_share: float = 0.5
    n_new_devices: int = 50
    fraud_factor: float = 5.0

    def tag(self) -> str:
        return repr(sorted(self.__dict__.items()))


def _drift_parts(
    rng: np.random.Generator,
    w: _World,
    dev: _FraudDevices,
    legit: _Tx,
    d: DriftScenario,
    period_ms: int,
) -> tuple[_Tx, int, int]:
    """The fraud wave of ``d`` (ts relative to the start) and the drift window [lo, hi)."""
    lo = int(d.start_day * _MS_DAY)
    hi = period_ms if d.end_day is None else min(period_ms, int(d.end_day * _MS_DAY))
    if not 0 <= lo < hi:
        msg = f"the drift window {d.start_day} .. {d.end_day} days is outside the period"
        raise ValueError(msg)
    # The patterns are drawn over whole days (their hours follow the fraudsters' day), then
    # cut to the window, at rates scaled up so that the window gets ``fraud_factor`` x its share.
    span = hi - lo
    days = max(1, -(-span // _MS_DAY))
    scale = days * _MS_DAY / span
    inside = (legit.ts >= lo) & (legit.ts < hi)
    extra = max(0.0, d.fraud_factor - 1.0) * int(inside.sum()) * scale
    wave_dev = _FraudDevices(rng, dev.first, dev.n_pool)
    wave = [
        _card_testing(rng, w, wave_dev, int(extra), days * _MS_DAY),
        _account_takeover(rng, w, wave_dev, int(extra), days * _MS_DAY),
    ] if extra >= 1 else []  # fmt: skip
    # compromised merchants: more surges (their later abuse of exposed cards is left out)
    local = _subset(legit, inside)
    local.ts = local.ts - lo
    for _ in range(round(max(0.0, d.fraud_factor - 1.0) * scale)):
        wave.append(_compromised_merchants(rng, w, wave_dev, local, days, days * _MS_DAY))
    kept = [_subset(part, (part.ts >= 0) & (part.ts < span)) for part in wave]
    for part in kept:
        part.ts += lo
    return (_Tx.concat(kept) if kept else _subset(legit, np.zeros(len(legit.ts), bool))), lo, hi


def _subset(tx: _Tx, mask: BoolArray) -> _Tx:
    out = _Tx.__new__(_Tx)
    for name in _Tx.__slots__:
        setattr(out, name, getattr(tx, name)[mask])
    return out


def _apply_drift(
    rng: np.random.Generator, w: _World, tx: _Tx, d: DriftScenario, lo: int, hi: int, new_first: int
) -> None:
    """Amounts of ``d.mcc`` x factor and the new device population (customers' devices: the
    fraudsters keep theirs), in place."""
    codes = [m[0] for m in _MCCS]
    wanted = [c.strip() for c in d.mcc.split(",")]
    unknown = [c for c in wanted if c not in codes]
    if unknown:
        msg = f"unknown merchant category {unknown[0]!r} (one of {', '.join(codes)})"
        raise ValueError(msg)
    inside = (tx.ts >= lo) & (tx.ts < hi)
    shop = inside & np.isin(w.m_mcc[tx.merchant], [codes.index(c) for c in wanted])
    tx.amount[shop] = np.round(tx.amount[shop] * d.amount_factor, 2)
    ecom = np.flatnonzero(inside & (tx.channel == _ECOM) & (tx.device >= 0) & (tx.pattern == 0))
    moved = ecom[rng.random(len(ecom)) < d.device_share]
    tx.device[moved] = new_first + rng.integers(0, max(1, d.n_new_devices), len(moved))


def _run_tag(**params: object) -> str:
    text = "|".join(f"{k}={v!r}" for k, v in sorted(params.items()))
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def simulate(
    days: int,
    seed: int,
    start: str = "2026-01-01",
    n_customers: int = 5000,
    n_merchants: int = 1000,
    tx_per_customer_per_day: float = 2.0,
    drift: DriftScenario | None = None,
) -> pd.DataFrame:
    """Simulated transactions over ``days`` from ``start`` (UTC), sorted by ``ts``.

    Deterministic per argument set: the same arguments give the identical frame. Columns are
    :data:`COLUMNS`; ``ts`` is epoch milliseconds (int64), ``amount`` float64 in cents,
    ``is_fraud`` bool and ``fraud_pattern`` one of :data:`FRAUD_PATTERNS` or ``""``.
    Event ids are ``tx_<run tag>_<counter>``, the run tag being a hash of the arguments, so
    files simulated with different arguments never share an event id. ``drift`` shifts the
    world for a while (:class:`DriftScenario`).
    """
    if days < 1:
        msg = "days must be >= 1"
        raise ValueError(msg)
    if n_customers < 1:
        msg = "n_customers must be >= 1"
        raise ValueError(msg)
    if n_merchants < 1:
        msg = "n_merchants must be >= 1"
        raise ValueError(msg)
    if not tx_per_customer_per_day > 0:
        msg = "tx_per_customer_per_day must be > 0"
        raise ValueError(msg)
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")
    start_ms = int(t0.value // 1_000_000)
    period_ms = days * _MS_DAY
    rng = np.random.default_rng(seed)

    world = _World(rng, n_customers, n_merchants, tx_per_customer_per_day)
    legit = _legit(rng, world, days, int(t0.dayofweek))
    n_legit = len(legit.ts)
    dev = _FraudDevices(rng, world.n_legit_devices, max(10, n_legit // 20_000))
    parts = [
        legit,
        _card_testing(rng, world, dev, n_legit, period_ms),
        _compromised_merchants(rng, world, dev, legit, days, period_ms),
        _account_takeover(rng, world, dev, n_legit, period_ms),
    ]
    new_first = dev.first + dev.n_pool  # the drift's new devices come after every other one
    if drift is not None:
        drift_rng = np.random.default_rng([seed, 0xD81F7])
        wave, lo, hi = _drift_parts(drift_rng, world, dev, legit, drift, period_ms)
        parts.append(wave)
    tx = _Tx.concat(parts)
    if drift is not None:
        _apply_drift(drift_rng, world, tx, drift, lo, hi, new_first)
    order = np.argsort(tx.ts, kind="stable")
    n = len(order)

    # device names: customers' and fraudsters' devices share one shuffled namespace
    device = tx.device[order]
    n_dev = new_first
    perm = rng.permutation(n_dev)
    is_terminal = device < 0
    is_new = device >= n_dev
    device_str = np.empty(n, dtype=object)
    own = ~is_terminal & ~is_new
    device_str[own] = _names("dev_", perm[device[own]], max(7, len(str(n_dev))))
    device_str[is_new] = _names("devnew_", device[is_new] - n_dev, 5)
    device_str[is_terminal] = _names("term_", -1 - device[is_terminal], 6)

    card = tx.card[order]
    tag = _run_tag(
        days=days, seed=seed, start=start, n_customers=n_customers, n_merchants=n_merchants,
        tx_per_customer_per_day=tx_per_customer_per_day,
        **({"drift": drift.tag()} if drift is not None else {}),
    )  # fmt: skip
    width = max(9, len(str(n)))
    merchant = tx.merchant[order]
    country = tx.country[order]
    pattern = tx.pattern[order]
    codes = np.array([c[0] for c in _COUNTRIES], dtype=object)
    currencies = np.array([c[1] for c in _COUNTRIES], dtype=object)
    mccs = np.array([m[0] for m in _MCCS], dtype=object)
    frame = {
        "event_id": np.array([f"tx_{tag}_{i:0{width}d}" for i in range(n)], dtype=object),
        "ts": start_ms + tx.ts[order],
        "card_id": _names("card_", card, max(6, len(str(world.n_cards)))),
        "customer_id": _names("cust_", world.card_owner[card], max(6, len(str(n_customers)))),
        "merchant_id": _names("merch_", merchant, max(5, len(str(n_merchants)))),
        "amount": tx.amount[order],
        "currency": currencies[world.m_country[merchant]],
        "channel": np.array(CHANNELS, dtype=object)[tx.channel[order]],
        "device_id": device_str,
        "ip": _ip_strings(tx.ip[order]),
        "country": codes[country],
        "mcc": mccs[world.m_mcc[merchant]],
        "is_fraud": pattern > 0,
        "fraud_pattern": np.array(("", *FRAUD_PATTERNS), dtype=object)[pattern],
    }
    df = pd.DataFrame(frame)
    df["ts"] = df["ts"].astype(np.int64)
    df["amount"] = df["amount"].astype(np.float64)
    return df
