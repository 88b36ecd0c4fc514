"""Shared by the drift tests: a simulated world with a drift day, a champion trained on it, and a
real Prometheus + Alertmanager (Debian binaries) with a webhook receiver that records alerts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import redis
import yaml

from engine.settings import Settings
from engine.stack import free_port, wait_for_port
from replay.merge import parse_time
from replay.simulate import DriftScenario, simulate
from replay.sources import write_transactions
from replay.training import TrainingConfig, train_from_history

ROOT = Path(__file__).resolve().parents[1]
ALERTS_YML = ROOT / "deploy" / "prometheus" / "alerts.yml"
DAY_MS = 86_400_000
START = "2026-01-01"
#: Days 0-7 as trained; day 8 drifted from midnight until DRIFT_END (everyday categories'
#: amounts x3, new devices, a fraud wave); back to normal after.
DRIFT_DAY = 8
DRIFT_END = 8.45
#: Where the tests stop streaming drifted traffic (the windows then hold drift only; the sim's
#: fraud wave thins out as the morning traffic grows towards the end of its window).
DRIFT_PHASE_END = 8.36
DAYS = 10
#: The drift day's fraud wave: card testing and account takeover at this many times their rate.
FRAUD_WAVE = 150.0
#: Everyday categories (grocery, restaurants, fast food, fuel, pharmacy): most card spending.
DRIFT_MCC = "5411,5812,5814,5541,5912"
#: Grocery amounts on the drift day: x10, so the champion's score moves too (at x3 only the
#: amount features move: this small model hardly uses amount for everyday payments).
AMOUNT_FACTOR = 3.0


def world() -> pd.DataFrame:
    return simulate(
        days=DAYS, seed=5, start=START, n_customers=1500, n_merchants=300,
        drift=DriftScenario(
            start_day=DRIFT_DAY, end_day=DRIFT_END, mcc=DRIFT_MCC, amount_factor=AMOUNT_FACTOR,
            fraud_factor=FRAUD_WAVE,
        ),
    )  # fmt: skip


def day_ms(day: float) -> int:
    return parse_time(START) + int(day * DAY_MS)


def with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` (the session's Valkey has 16)."""
    return re.sub(r"/\d*$", "", url) + f"/{db}"


def train_champion(frame_path: Path, settings: Settings) -> str:
    """Train on days 1-4, validate on 5-6, promote; the model carries its drift reference."""
    cfg = TrainingConfig(
        transactions=frame_path, train_start=day_ms(1), train_end=day_ms(5),
        valid_end=day_ms(7), label_delay_ms=DAY_MS, num_boost_round=60, promote=True,
        progress=False,
    )  # fmt: skip
    client = redis.Redis.from_url(settings.redis_url)
    report = train_from_history(settings, cfg, client, log=lambda _: None)
    return report.version


def write_world(path: Path) -> pd.DataFrame:
    df = world()
    write_transactions(df, path)
    return df


# ---------------------------------------------------------------------------------------------
# Prometheus + Alertmanager


def shortened_rules(text: str, for_: str = "3s", window: str = "20s") -> str:
    """The deploy/ rules with every ``for:`` and range window shortened (tests only)."""
    text = re.sub(r"(\n\s+for:\s*)\S+", rf"\g<1>{for_}", text)
    return re.sub(r"\[\d+[smh]\]", f"[{window}]", text)


@dataclass
class Received:
    at: float
    status: str
    labels: dict[str, str]


@dataclass
class Monitoring:
    """Prometheus scraping ``targets`` with the deploy rules, Alertmanager posting to a webhook."""

    workdir: Path
    targets: list[str]
    received: list[Received] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    prometheus_port: int = 0
    alertmanager_port: int = 0

    def start(self) -> Monitoring:
        self.workdir.mkdir(parents=True, exist_ok=True)
        hook = self._webhook()
        self.alertmanager_port = free_port()
        am = {
            "route": {"receiver": "test", "group_by": ["alertname", "feature"],
                      "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "test", "webhook_configs": [
                {"url": f"http://127.0.0.1:{hook}/", "send_resolved": True}]}],
        }  # fmt: skip
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(am))
        self._spawn(
            "alertmanager",
            [shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager",
             f"--config.file={self.workdir / 'alertmanager.yml'}",
             f"--storage.path={self.workdir / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
             "--cluster.listen-address="],
            self.alertmanager_port,
        )  # fmt: skip
        rules = self.workdir / "alerts.yml"
        rules.write_text(shortened_rules(ALERTS_YML.read_text()))
        prom = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{self.alertmanager_port}"]}]}]},
            "scrape_configs": [{"job_name": "riskstream",
                                "static_configs": [{"targets": self.targets}]}],
        }  # fmt: skip
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(prom))
        self.prometheus_port = free_port()
        self._spawn(
            "prometheus",
            [shutil.which("prometheus") or "/usr/bin/prometheus",
             f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
             "--rules.alert.resend-delay=1s"],
            self.prometheus_port,
        )  # fmt: skip
        return self

    def _spawn(self, name: str, argv: list[str], port: int) -> None:
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        self.procs.append(proc)
        wait_for_port(port, 30, proc)

    def _webhook(self) -> int:
        received = self.received

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.time()
                for alert in body.get("alerts", []):
                    received.append(Received(now, alert["status"], alert["labels"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return int(server.server_address[1])

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query against the test's Prometheus."""
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - localhost
            result: list[dict[str, Any]] = json.loads(resp.read())["data"]["result"]
        return result

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.alertmanager_port}/api/v2/alerts"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - localhost
            alerts: list[dict[str, Any]] = json.loads(resp.read())
        return alerts

    def _matching(self, status: str, alertname: str, labels: dict[str, str]) -> list[Received]:
        return [
            r for r in self.received
            if r.status == status and r.labels.get("alertname") == alertname
            and all(r.labels.get(k) == v for k, v in labels.items())
        ]  # fmt: skip

    def first(self, status: str, alertname: str, **labels: str) -> Received | None:
        found = self._matching(status, alertname, labels)
        return found[0] if found else None

    def last(self, status: str, alertname: str, **labels: str) -> Received | None:
        found = self._matching(status, alertname, labels)
        return found[-1] if found else None

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if hasattr(self, "_server"):
            self._server.shutdown()

    def __enter__(self) -> Monitoring:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
