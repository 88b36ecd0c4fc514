"""Run ``riskstream review serve`` as a child process (demo, screenshots, browser tests)."""

from __future__ import annotations

from pathlib import Path

from engine.worker_process import WorkerProcess


class ReviewServerProcess(WorkerProcess):
    """The review app on a free local port; ``url`` is where a browser finds it."""

    command = ("review", "serve")

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.env["RISKSTREAM_REVIEW_PORT"] = str(self.port)
        self.env["RISKSTREAM_REVIEW_HOST"] = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
