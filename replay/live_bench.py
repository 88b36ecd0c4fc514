"""The live half of ``make bench``: a real worker on the embedded stack, beside its ceilings.

On one stack and one ``transactions`` topic, in this order:

1. **throughput**: ``n`` transactions produced as fast as possible to a running worker;
   ``e2e_events_per_second`` = n / (last decision's ``scored_at`` - first produce), and the
   worker's per-batch stage breakdown (its ``riskstream_stage_seconds`` before and after);
2. **ceilings** over the very same messages: a plain aiokafka consumer, a bare Faust agent
   (:mod:`replay.ceilings`); ``worker_to_kafka_ceiling`` and ``worker_to_faust_ceiling``;
3. **latency** at a paced, open-loop 5,000 transactions/s for ``latency_seconds``: quantiles and
   histogram of the worker's ``riskstream_decision_latency_seconds`` (Kafka timestamp → decision
   flushed), and the batch sizes it chose;
4. **knee**: paced steps of rising load until p99 passes 100 ms;
5. **scaling**: a second worker joins the group; both drain ``n`` transactions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from engine.policy import DECISIONS
from engine.settings import Settings
from engine.worker_process import WorkerProcess, wait_until
from replay.ceilings import faust_ceiling, kafka_ceiling
from replay.inprocess import records_of
from replay.kafka_io import produce, producer, read_topic
from replay.proc import cpu_seconds
from replay.simulate import simulate

console = Console()
KNEE_RATES = (1000.0, 2000.0, 3000.0, 5000.0, 10000.0, 15000.0, 20000.0, 25000.0, 30000.0)
LATENCY_RATE = 5000.0
#: The paced producer's linger: a payment system's producer batches too, and Tansu spends so much
#: per produce request that 1,000 one-message requests a second slowed the worker's own flushes
#: (65 ms per batch at 5,000/s with 1 ms). The latency clock starts at produce(), so the linger
#: counts in every figure (at most 5 ms, half that on average).
PACED_LINGER_MS = 5.0
#: Stages of one transactions batch in the worker, in the order they happen.
WORKER_STAGES = (
    "idle", "consume", "decode", "features", "rules", "model", "online", "emit", "flush", "commit",
)  # fmt: skip


class Scrape:
    """The figures of one /metrics scrape this bench needs (subtract two to get a run's)."""

    def __init__(self, text: str) -> None:
        self.stage_sum: dict[str, float] = {}
        self.stage_count: dict[str, float] = {}
        self.latency_le: dict[float, float] = {}
        self.batch_le: dict[float, float] = {}
        self.values: dict[str, float] = {}
        self.decisions: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "riskstream_stage_seconds_sum":
                    self.stage_sum[s.labels["stage"]] = s.value
                elif s.name == "riskstream_stage_seconds_count":
                    self.stage_count[s.labels["stage"]] = s.value
                elif s.name == "riskstream_decision_latency_seconds_bucket":
                    self.latency_le[float(s.labels["le"])] = s.value
                elif s.name == "riskstream_batch_events_bucket":
                    self.batch_le[float(s.labels["le"])] = s.value
                else:
                    if s.name == "riskstream_decisions_total":
                        self.decisions[s.labels["decision"]] = s.value
                    self.values[s.name] = self.values.get(s.name, 0.0) + s.value

    def value(self, name: str) -> float:
        return self.values.get(name, 0.0)


def quantile(le_counts: dict[float, float], q: float) -> float:
    """Prometheus ``histogram_quantile``: linear inside the bucket the q-th event falls in."""
    bounds = sorted(le_counts)
    total = le_counts[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for b in bounds:
        c = le_counts[b]
        if c >= rank:
            if b == float("inf"):
                return lower
            return lower + (b - lower) * (rank - below) / max(c - below, 1e-12)
        lower, below = b, c
    return lower


def _shares(after: Scrape, before: Scrape, suffix: str) -> dict[str, float]:
    """Share of each decision between two scrapes: review/block rows get their contributions
    computed (~1 ms a row), so the mix sets much of the model stage's cost."""
    decided = {d: after.decisions.get(d, 0.0) - before.decisions.get(d, 0.0) for d in DECISIONS}
    total = sum(decided.values()) or 1.0
    return {f"decision_share_{d}{suffix}": n / total for d, n in decided.items()}


def _diff(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


class Source:
    """Simulated transactions, replayed in cycles shifted forward in time: unlimited, in event
    time order, unique event ids.

    Event time is the simulation's, so each card keeps its simulated pace and the decision mix
    stays the simulation's (stamping the wall clock instead made 3,000 cards pay ~2 times a
    second each at 5,000/s: 15 % review/block after a minute, each with its ~1 ms of
    contributions). The price: a paced minute packs weeks of event time, so the drift tracker
    closes hundreds of event-time hours per flush, a backlog's cost that live traffic does not
    have (its counts are written off the scoring thread; Valkey still does the work).
    """

    def __init__(self, seed: int = 12, days: int = 10) -> None:
        df = simulate(days=days, seed=seed, n_customers=3000, n_merchants=600,
                      start="2026-03-01")  # fmt: skip
        self.records = records_of(df)
        self.span = int(df["ts"].max() - df["ts"].min()) + 60_000
        self.pos = 0

    def take(self, n: int, prefix: str) -> Iterator[tuple[bytes | None, bytes]]:
        dumps = orjson.dumps
        m = len(self.records)
        for _ in range(n):
            cycle, i = divmod(self.pos, m)
            self.pos += 1
            r = dict(self.records[i])
            r["event_id"] = f"{prefix}{cycle}-{r['event_id']}"
            r["ts"] = int(r["ts"]) + cycle * self.span
            yield str(r["card_id"]).encode(), dumps(r)


def _decided(workers: list[WorkerProcess]) -> float:
    return sum(Scrape(w.metrics()).value("riskstream_decisions_total") for w in workers)


#: How often the bench asks the workers how far they are, at most. A /metrics scrape holds a
#: worker's GIL 10-30 ms (its ~550 series); scraped 10 times a second it took a fifth of the
#: worker's samples in a py-spy profile of the throughput run, where Prometheus scrapes every
#: 15 s. Near the end the bench asks sooner (:func:`_next_poll`), so the worker's idle time
#: after its last decision stays out of the stage breakdown.
POLL_SECONDS = 1.0
MIN_POLL_SECONDS = 0.05


def _next_poll(remaining: float, rate: float) -> float:
    """Seconds to wait before asking again: half the time the rest should take at the rate
    seen so far, between ``MIN_POLL_SECONDS`` and ``POLL_SECONDS``.

    >>> _next_poll(50_000, 10_000), _next_poll(1_000, 10_000), _next_poll(10, 10_000)
    (1.0, 0.05, 0.05)
    >>> _next_poll(5_000, 0.0)  # no progress seen yet
    1.0
    """
    if rate <= 0:
        return POLL_SECONDS
    return min(POLL_SECONDS, max(MIN_POLL_SECONDS, remaining / rate / 2))


def _wait_decided(workers: list[WorkerProcess], n: float, timeout: float) -> bool:
    """Until the workers have decided ``n`` transactions in all (False after ``timeout`` s)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    first = done = _decided(workers)
    while done < n:
        now = time.monotonic()
        if now >= deadline:
            return False
        rate = (done - first) / (now - t0) if now > t0 else 0.0
        time.sleep(min(_next_poll(n - done, rate), max(deadline - now, 0.0)))
        done = _decided(workers)
    return True


def _batches(after: Scrape, before: Scrape) -> float:
    """Transactions batches the worker finished between two scrapes (at least 1)."""
    return max(after.stage_count.get("decode", 0) - before.stage_count.get("decode", 0), 1)


def _breakdown(after: Scrape, before: Scrape, wall: float) -> dict[str, float]:
    """Per stage: ms per batch and share of the worker's wall time."""
    batches = _batches(after, before)
    out: dict[str, float] = {"worker_batches": batches}
    accounted = 0.0
    for stage in WORKER_STAGES:
        secs = after.stage_sum.get(stage, 0.0) - before.stage_sum.get(stage, 0.0)
        accounted += secs
        out[f"worker_stage_{stage}_ms_per_batch"] = secs / batches * 1000
        out[f"worker_stage_{stage}_share"] = secs / wall
    # Wall time no stage claims: with RISKSTREAM_CONSUMER=agent, Faust's own consume/ack/idle.
    out["worker_stage_unaccounted_ms_per_batch"] = max(wall - accounted, 0.0) / batches * 1000
    out["worker_stage_unaccounted_share"] = max(wall - accounted, 0.0) / wall
    name = "riskstream_events_total"
    events = after.value(name) - before.value(name)
    out["worker_events_per_batch"] = events / batches
    return out


def _latency(after: Scrape, before: Scrape, prefix: str) -> dict[str, Any]:
    lat = _diff(after.latency_le, before.latency_le)
    out: dict[str, Any] = {}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        out[f"{prefix}_{name}_seconds"] = quantile(lat, q)
    return out


def _histogram(le_counts: dict[float, float]) -> dict[str, float]:
    """Events per bucket (not cumulative), keyed by the bucket's upper bound in ms."""
    out, below = {}, 0.0
    for b in sorted(le_counts):
        key = "inf" if b == float("inf") else f"{b * 1000:g}"
        out[key] = le_counts[b] - below
        below = le_counts[b]
    return out


def _paced(
    workers: list[WorkerProcess], settings: Settings, src: Source, rate: float, seconds: float,
    prefix: str,
) -> tuple[Scrape, Scrape, float, float, dict[str, float]]:  # fmt: skip
    """Produce at ``rate`` for ``seconds`` (open loop) and wait until all is decided; the
    scrapes before and after, the rate achieved, the seconds until all was decided and the
    machine meanwhile: the cores each process took (``cpu_cores_broker``, ``_redis``,
    ``_workers``, ``_producer``: this process) and Redis's own time per worker batch in each
    command (``redis_<command>_ms_per_batch``)."""
    prod = producer(settings.kafka_bootstrap, linger_ms=PACED_LINGER_MS)
    n = int(rate * seconds)
    already = _decided(workers)
    before = Scrape(workers[0].metrics())
    cpu0 = _cpu(workers, settings)
    redis0 = redis_command_usec(settings.redis_url)
    t0 = time.perf_counter()
    produce(prod, settings.topic_transactions, src.take(n, prefix), rate)
    achieved = n / (time.perf_counter() - t0)
    if not _wait_decided(workers, already + n, 120 + seconds):
        msg = f"{prefix}: the workers did not decide {n} transactions"
        raise RuntimeError(msg)
    wall = time.perf_counter() - t0
    machine = _cores(cpu0, _cpu(workers, settings), wall)
    after = Scrape(workers[0].metrics())
    spent = redis_command_usec(settings.redis_url)
    batches = _batches(after, before)
    for cmd, usec in spent.items():  # Redis's own time per worker batch, by command
        ms = (usec - redis0.get(cmd, 0.0)) / batches / 1000
        if ms >= 0.01:
            machine[f"redis_{cmd}_ms_per_batch"] = ms
    return before, after, achieved, wall, machine


def redis_command_usec(url: str) -> dict[str, float]:
    """Microseconds the server has spent in each command (``INFO commandstats``), so that a
    run's figures can tell the server's share of a batch from the round trip's."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return {k.removeprefix("cmdstat_"): float(v["usec"]) for k, v in stats.items()}


def _cores(cpu0: dict[str, float], cpu1: dict[str, float], wall: float) -> dict[str, float]:
    """The cores each process took between two :func:`_cpu` readings ``wall`` seconds apart."""
    return {f"cpu_cores_{k}": (v - cpu0[k]) / wall for k, v in cpu1.items()}


def cpu_budget(cores: dict[str, float], events_per_second: float, machine: int) -> dict[str, float]:
    """What the whole stack spends per event (``core_us_per_event_<process>`` and in all) and
    the rate at which it would use every core of the machine: a ceiling for any worker here,
    however fast its own code, unless the work per event shrinks.

    >>> b = cpu_budget({"cpu_cores_workers": 0.9, "cpu_cores_redis": 0.1}, 10_000.0, 2)
    >>> b["core_us_per_event_workers"], b["core_us_per_event"], b["cpu_bound_events_per_second"]
    (90.0, 100.0, 20000.0)
    """
    out = {f"core_us_per_event_{k.removeprefix('cpu_cores_')}": v / events_per_second * 1e6
           for k, v in cores.items()}  # fmt: skip
    total = sum(out.values())
    out["core_us_per_event"] = total
    out["cpu_bound_events_per_second"] = machine / (total / 1e6) if total > 0 else float("nan")
    return out


def _cpu(workers: list[WorkerProcess], settings: Settings) -> dict[str, float]:
    """CPU seconds so far of the broker and Redis (found by their address on the command line:
    the embedded stack's), the workers and this process (the producer)."""
    pids = [w.proc.pid for w in workers if w.proc is not None]
    return {
        "broker": cpu_seconds(cmdline_contains=settings.kafka_bootstrap),
        "redis": cpu_seconds(cmdline_contains=_host_port(settings.redis_url)),
        "workers": cpu_seconds(pids),
        "producer": cpu_seconds([os.getpid()]),
    }


def _host_port(url: str) -> str:
    """``host:port`` of a server URL, as the embedded stack's servers carry it on their
    command line."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def live_figures(
    stack: ExitStack,
    settings: Settings,
    env: dict[str, str],
    data_dir: Path,
    n_events: int,
    latency_seconds: float,
    knee_rates: tuple[float, ...],
    scaling: bool,
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    boot = settings.kafka_bootstrap
    topic = settings.topic_transactions
    src = Source()
    console.print("[bold]bench[/]: starting a worker on the embedded stack")
    w1 = stack.enter_context(WorkerProcess(env, data_dir / "worker.log"))
    workers = [w1]
    prod = producer(boot)
    produce(prod, topic, src.take(1, "warm-"))
    if not _wait_decided(workers, 1, 180):
        msg = f"worker made no decision; see {data_dir / 'worker.log'}"
        raise RuntimeError(msg)

    console.print(f"[bold]bench[/]: worker throughput, {n_events:,} transactions at once")
    items = list(src.take(n_events, "tp-"))
    before = Scrape(w1.metrics())
    cpu0 = _cpu(workers, settings)
    t0 = time.time()
    produce(prod, topic, items)
    if not _wait_decided(workers, 1 + n_events, 600):
        msg = f"worker did not decide {n_events} transactions; see {data_dir / 'worker.log'}"
        raise RuntimeError(msg)
    cpu1 = _cpu(workers, settings)
    after = Scrape(w1.metrics())
    scores = read_topic(boot, settings.topic_scores, lambda v: len(v) >= n_events + 1, 120)
    stamps = [orjson.loads(v)["scored_at"] for v in scores if b'"tp-' in v[:40]]
    wall = max(stamps) - t0
    # the machine's cores while the worker ran (it idles from its last decision until the poll
    # sees it): what the worker competes with for them
    cores = _cores(cpu0, cpu1, wall)
    res.update(cores)
    res.update(cpu_budget(cores, n_events / wall, os.cpu_count() or 1))
    res["e2e_events"] = len(stamps)
    res["e2e_events_per_second"] = len(stamps) / wall
    res.update(_breakdown(after, before, wall))
    res.update(_shares(after, before, ""))

    total = n_events + 1
    console.print(f"[bold]bench[/]: ceilings over the same {total:,} messages")
    kafka = kafka_ceiling(boot, topic, total)
    res["kafka_ceiling_events_per_second"] = kafka["events_per_second"]
    res["kafka_ceiling_bytes_per_second"] = kafka["bytes_per_second"]
    faust = faust_ceiling(env, topic, total, data_dir / "faust-ceiling.json")
    res["faust_ceiling_events_per_second"] = faust["events_per_second"]
    res["faust_ceiling_batch_size"] = faust["batch_size"]
    res["faust_ceiling_within_seconds"] = faust["within_seconds"]
    res["worker_to_kafka_ceiling"] = res["e2e_events_per_second"] / kafka["events_per_second"]
    res["worker_to_faust_ceiling"] = res["e2e_events_per_second"] / faust["events_per_second"]

    console.print(f"[bold]bench[/]: latency at {LATENCY_RATE:,.0f}/s for {latency_seconds:.0f}s")
    before, after, achieved, wall5k, machine = _paced(
        workers, settings, src, LATENCY_RATE, latency_seconds, "lat-"
    )
    res["latency_rate_events_per_second"] = achieved
    res["latency_seconds_measured"] = latency_seconds
    for k, v in _latency(after, before, "e2e_latency").items():
        res[f"{k}_at_5k"] = v
    res["latency_histogram_at_5k_ms"] = _histogram(_diff(after.latency_le, before.latency_le))
    batches = _diff(after.batch_le, before.batch_le)
    res["batch_events_p50_at_5k"] = quantile(batches, 0.5)
    res["batch_events_p99_at_5k"] = quantile(batches, 0.99)
    res.update({f"{k}_at_5k": v for k, v in _breakdown(after, before, wall5k).items()})
    res.update(_shares(after, before, "_at_5k"))
    # the machine's cores during the run: what the worker competes with for them
    res.update({f"{k}_at_5k": v for k, v in machine.items()})

    knee: dict[str, float] = {}
    res["latency_knee_events_per_second"] = float("nan")
    for rate in knee_rates:
        console.print(f"[bold]bench[/]: knee step at {rate:,.0f}/s")
        before, after, _, _, _ = _paced(workers, settings, src, rate, 10.0, f"k{int(rate)}-")
        lat = _diff(after.latency_le, before.latency_le)
        p99 = quantile(lat, 0.99)
        knee[f"{rate:g}"] = p99
        res[f"knee_p50_seconds_at_{rate:g}"] = quantile(lat, 0.5)
        res[f"knee_p999_seconds_at_{rate:g}"] = quantile(lat, 0.999)
        batches = _diff(after.batch_le, before.batch_le)
        res[f"knee_batch_events_p50_at_{rate:g}"] = quantile(batches, 0.5)
        if p99 > 0.1:
            res["latency_knee_events_per_second"] = rate
            break
    res["knee_p99_seconds_by_rate"] = knee

    if scaling:
        res.update(_scaling(stack, settings, env, data_dir, src, workers, n_events))
    return res


def _scaling(
    stack: ExitStack, settings: Settings, env: dict[str, str], data_dir: Path, src: Source,
    workers: list[WorkerProcess], n_events: int,
) -> dict[str, float]:  # fmt: skip
    console.print("[bold]bench[/]: a second worker joins the group")
    w2 = stack.enter_context(WorkerProcess(env, data_dir / "worker2.log"))
    both = [*workers, w2]

    def balanced() -> bool:
        owned = [Scrape(w.metrics()).value("riskstream_assigned_partitions") for w in both]
        return all(o > 0 for o in owned) and sum(owned) == settings.topic_partitions

    if not wait_until(balanced, 240, every=1.0):
        msg = f"the second worker never got partitions; see {data_dir / 'worker2.log'}"
        raise RuntimeError(msg)
    already = _decided(both)
    items = list(src.take(n_events, "tp2-"))
    t0 = time.perf_counter()
    produce(producer(settings.kafka_bootstrap), settings.topic_transactions, items)
    if not _wait_decided(both, already + n_events, 600):
        msg = "two workers did not decide every transaction"
        raise RuntimeError(msg)
    secs = time.perf_counter() - t0
    return {"e2e_two_workers_events_per_second": n_events / secs}


def quantiles_of(text: str) -> dict[str, float]:
    """p50/p99/p99.9 of a worker's decision latency from one /metrics text (the demo)."""
    s = Scrape(text)
    return {
        "worker_latency_p50_seconds": quantile(s.latency_le, 0.5),
        "worker_latency_p99_seconds": quantile(s.latency_le, 0.99),
        "worker_latency_p999_seconds": quantile(s.latency_le, 0.999),
    }


def worker_rate(text: str) -> float:
    """Transactions per second of the worker's busy time (every stage but ``idle``), from one
    /metrics text: what it could sustain, whatever the offered load was (the demo)."""
    s = Scrape(text)
    busy = sum(v for k, v in s.stage_sum.items() if k != "idle")
    return s.value("riskstream_batch_events_sum") / busy if busy else float("nan")
