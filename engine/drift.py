"""The worker's drift tracker: feeds :class:`models.drift.DriftMonitor` from scored batches and
arrived labels, exports Prometheus gauges, and adds each event-time hour's bin counts to Redis.

One call per batch (:meth:`DriftTracker.observe_batch`) and one per label batch
(:meth:`DriftTracker.observe_labels`); both swallow their own errors, because a drift statistic
must never make a batch fail (a failed batch is retried and its decisions re-emitted).

Several workers: each worker's statistics cover its own window (the transactions of its
partitions; cards are spread over partitions by key, so each window is a random sample of the
traffic); alert rules take ``max by (feature)`` over workers. The hourly counts in Redis
(``rs:drift:hist:<model>:<hour>``, a hash of ``<column>|<bin>`` -> count) are added with
``HINCRBY`` by every worker, so they are the exact total over all workers: that is what
``riskstream drift report --since`` reads. They are written by the tracker's own thread, never
by the scoring thread: a worker catching up on a backlog (or a replay) closes hundreds of
event-time hours in one flush, and their scripts kept Redis busy for ~0.9 s, a stall every
``log_seconds`` that was the whole p99.9 of ``make bench``'s latency run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import redis

from engine import metrics
from engine.pipeline import ScoredBatch
from models.drift import DECISIONS, DETECTORS, SCORE, DriftMonitor, DriftReference, HourCounts
from models.drift import decision_codes as _codes

log = logging.getLogger(__name__)

#: Functions of the event's clock, not of the population: a window of the last N transactions
#: always covers a few hours of one day, so these would "drift" every night and every weekend.
CALENDAR_FEATURES = ("hour_of_day", "is_weekend", "is_night")
HIST_PREFIX = "rs:drift:hist:"
HIST_TTL_SECONDS = 35 * 86400
N_FIELD = "#n"
DECISION_FIELD = "#decision|"
#: HINCRBY every (field, amount) pair of ARGV[2..] into KEYS[1], then EXPIRE it (ARGV[1] s).
_ADD_COUNTS = """
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


#: A backlog's flush can hold hundreds of hours: written a few at a time with a pause between,
#: the writer never holds the GIL or Valkey for long. Done at once, the hot thread's Redis round
#: trips waited behind it (emit 36-80 ms for batches of 10-190 events at 1,000/s): a convoy.
_HOURS_PER_CALL = 4
_PAUSE_SECONDS = 0.005


def hist_key(version: str, hour: int) -> str:
    return f"{HIST_PREFIX}{version}:{hour}"


def load_reference(models_dir: Path, version: str, feature_names: Sequence[str]) -> DriftReference:
    """The drift reference of a registered model (empty if it has none or is unreadable)."""
    from models.registry import ModelRegistry

    if version in ("", "none"):
        return DriftReference([], version)
    try:
        meta = ModelRegistry(models_dir).metadata(version)
    except Exception:
        log.exception("no metadata for model %s: no drift reference", version)
        return DriftReference([], version)
    return DriftReference.from_metadata(
        meta.get("reference_histograms"), feature_names, version, exclude=CALENDAR_FEATURES
    )


def hour_fields(reference: DriftReference, hc: HourCounts) -> list[str | int]:
    """Flat ``field, amount`` pairs of one hour's non-zero counts."""
    out: list[str | int] = [N_FIELD, hc.n]
    cols, slots = np.nonzero(hc.counts)
    names = reference.names
    for c, s, v in zip(cols.tolist(), slots.tolist(), hc.counts[cols, slots].tolist(), strict=True):
        out += [f"{names[c]}|{s}", v]
    for d, v in zip(DECISIONS, hc.decisions.tolist(), strict=True):
        if v:
            out += [DECISION_FIELD + d, v]
    return out


def parse_hour(reference: DriftReference, raw: Mapping[bytes, bytes]) -> HourCounts:
    """The counts :func:`hour_fields` wrote (fields of unknown columns are ignored)."""
    index = {n: i for i, n in enumerate(reference.names)}
    hc = HourCounts(0, reference.empty_counts())
    for k, v in raw.items():
        key, value = k.decode(), int(v)
        if key == N_FIELD:
            hc.n = value
        elif key.startswith(DECISION_FIELD):
            d = key.removeprefix(DECISION_FIELD)
            if d in DECISIONS:
                hc.decisions[DECISIONS.index(d)] = value
        else:
            name, _, slot = key.rpartition("|")
            if name in index and slot.isdigit() and int(slot) < reference.width:
                hc.counts[index[name], int(slot)] = value
    return hc


class DriftTracker:
    """Per-worker drift state for the champion in use; see the module docstring."""

    def __init__(
        self,
        models_dir: Path,
        client: redis.Redis | None,
        window: int = 50_000,
        min_rows: int = 1000,
        lateness_ms: int = 300_000,
        log_seconds: float = 10.0,
        online_version: str | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.redis = client
        self.window = window
        self.min_rows = min_rows
        self.lateness_ms = lateness_ms
        self.log_seconds = log_seconds
        self.online_version = online_version
        self.version: str | None = None
        self.monitor = DriftMonitor(DriftReference([]), window, min_rows, lateness_ms)
        self._names: list[str] = []
        self._cols: list[int] = []
        # hourly counts Redis has not taken yet, of one model version; the writer thread's alone
        self._pending: dict[int, HourCounts] = {}
        self._pending_version = ""
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="drift-counts")
        self._flushed_at = time.monotonic()
        self._reported = dict.fromkeys(DETECTORS, 0)
        self._last_hour: int | None = None
        self._gauges: dict[str, list[tuple[Any, Any, Any]]] = {}
        self._add_counts = client.register_script(_ADD_COUNTS) if client is not None else None

    # -- transactions ----------------------------------------------------------------------
    def observe_batch(self, scored: ScoredBatch) -> None:
        """Add a scored batch to the windows and export the statistics; never raises."""
        try:
            self._observe(scored)
        except Exception:
            log.exception("drift statistics failed for a batch (scoring is unaffected)")

    def _observe(self, scored: ScoredBatch) -> None:
        ds = scored.decisions
        if not ds:
            return
        version = ds[0].model
        if version != self.version or scored.feature_names != self._names:
            self._switch(version, scored.feature_names)
        n = len(ds)
        scores = np.fromiter(
            (d.score if d.mode == "normal" else math.nan for d in ds), dtype=np.float64, count=n
        )
        ts = np.fromiter((d.ts for d in ds), dtype=np.int64, count=n)
        self.monitor.update_batch(
            scored.features, scores, ts, _codes([d.decision for d in ds]), self._cols
        )
        self._export()
        if time.monotonic() - self._flushed_at >= self.log_seconds:
            self._hand_over()

    def _switch(self, version: str, names: Sequence[str]) -> None:
        """A new champion (or feature layout): its reference, fresh windows, fresh gauges."""
        self._hand_over()
        reference = load_reference(self.models_dir, version, names)
        pos = {n: i for i, n in enumerate(names)}
        self._cols = [pos[n] for n in reference.feature_names]
        self._names = list(names)
        self.version = version
        self.monitor = DriftMonitor(reference, self.window, self.min_rows, self.lateness_ms)
        self._reported = dict.fromkeys(DETECTORS, 0)
        self._last_hour = None
        self._gauges = {}
        for gauge in (metrics.FEATURE_PSI, metrics.FEATURE_KS, metrics.FEATURE_MISSING_RATIO,
                      metrics.SCORE_PSI, metrics.SCORE_KS):  # fmt: skip
            gauge.clear()
        metrics.TRAINING_FRAUD_RATIO.set(reference.fraud_rate)
        log.info(
            "drift reference: model %s, %d features%s", version, len(reference.feature_names),
            " and the score" if reference.has_score else "",
        )  # fmt: skip

    def _export(self) -> None:
        m = self.monitor
        self._set("sliding", m.sliding())
        last = m.last_hour()
        if last is not None and last[0] != self._last_hour:
            self._last_hour = last[0]
            self._set("hour", last[1])
        self._count_detections()

    def _set(self, window: str, st: Any) -> None:
        gauges = self._gauges.get(window)
        if gauges is None:  # label lookups once per reference, not per batch
            gauges = self._gauges[window] = [
                (metrics.SCORE_PSI.labels(window), metrics.SCORE_KS.labels(window), None)
                if name == SCORE
                else (
                    metrics.FEATURE_PSI.labels(name, window),
                    metrics.FEATURE_KS.labels(name, window),
                    metrics.FEATURE_MISSING_RATIO.labels(name, window),
                )
                for name in st.names
            ]
        for (psi, ks, missing), p, k, m in zip(
            gauges, st.psi.tolist(), st.ks.tolist(), st.missing_ratio.tolist(), strict=True
        ):
            psi.set(p)
            ks.set(k)
            if missing is not None:
                missing.set(m)
        for d, share in st.decisions.items():
            metrics.DECISION_RATIO.labels(d, window).set(share)
        metrics.DRIFT_WINDOW_TRANSACTIONS.labels(window).set(st.n)

    def _count_detections(self) -> None:
        for name, total in self.monitor.detections.items():
            new = total - self._reported[name]
            if new > 0:
                metrics.DRIFT_DETECTED.labels(name).inc(new)
                self._reported[name] = total

    # -- labels ----------------------------------------------------------------------------
    def observe_labels(self, logged: Sequence[Mapping[str, Any]], labels: Sequence[bool]) -> None:
        """Labels with the score records logged at scoring time; never raises."""
        try:
            online = self.online_version
            p = [(rec.get("scores") or {}).get(online) if online else None for rec in logged]
            self.monitor.update_labels(labels, p)
            metrics.LABEL_FRAUD_RATIO.set(self.monitor.label_fraud_rate)
            self._count_detections()
        except Exception:
            log.exception("drift statistics failed for a label batch")

    # -- hourly counts in Redis --------------------------------------------------------------
    def _hand_over(self) -> Future[None]:
        """Give the hours counted since the last hand-over to the writer thread (in order)."""
        self._flushed_at = time.monotonic()
        hours = self.monitor.drain_hours()
        return self._writer.submit(self._write, self.version or "", self.monitor.reference, hours)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Hand the counts over and wait until the writer has tried them (a clean stop)."""
        self._hand_over().result(timeout)

    def _write(self, version: str, ref: DriftReference, hours: list[HourCounts]) -> None:
        """Add ``hours`` to what is pending and write it all; kept for the next try if Redis is
        unreachable. Runs on the writer thread only."""
        if version != self._pending_version:
            self._pending = {}  # counts Redis did not take are binned on the old grid: dropped
            self._pending_version = version
        for hc in hours:
            have = self._pending.get(hc.hour)
            if have is None:
                self._pending[hc.hour] = hc
            else:
                have.counts += hc.counts
                have.n += hc.n
                have.decisions += hc.decisions
        if self._add_counts is None or self.redis is None or not self._pending or not version:
            return
        todo = list(self._pending.values())
        try:
            for i in range(0, len(todo), _HOURS_PER_CALL):
                if i:  # let the scoring thread have the GIL and Valkey meanwhile
                    time.sleep(_PAUSE_SECONDS)
                chunk = todo[i : i + _HOURS_PER_CALL]
                pipe = self.redis.pipeline(transaction=False)
                for hc in chunk:
                    self._add_counts(
                        keys=[hist_key(version, hc.hour)],
                        args=[HIST_TTL_SECONDS, *hour_fields(ref, hc)],
                        client=pipe,
                    )
                pipe.execute()
                for hc in chunk:
                    del self._pending[hc.hour]
        except redis.RedisError:
            log.warning("drift counts not written to Redis yet (kept for the next flush)")
        except Exception:
            log.exception("drift counts could not be written (dropped)")
            self._pending = {}
