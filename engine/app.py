"""The Faust application factory: topics as raw bytes, the worker's web server with /metrics.

Values are consumed as raw bytes (``value_serializer='raw'``): Faust acks messages its own
deserializer cannot decode, so decoding and validation happen in :mod:`engine.schemas`, where a
bad message becomes a dead letter instead of vanishing.
"""

from __future__ import annotations

from typing import Any

import faust

from engine.metrics import exposition
from engine.settings import Settings


def _short_fetch_wait(max_wait_ms: int) -> None:
    """Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer; a scoring engine
    wants each fetch back within a batch window, so cap it (set before the fetcher starts)."""
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    original = cls._create_worker_consumer
    if getattr(original, "_riskstream_wrapped", False):
        return

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = min(consumer._fetch_max_wait_ms, max_wait_ms)  # noqa: SLF001
        return consumer

    create._riskstream_wrapped = True  # type: ignore[attr-defined]  # noqa: SLF001 - our marker
    cls._create_worker_consumer = create  # type: ignore[method-assign]  # the one knob Faust hides


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    _short_fetch_wait(max(10, int(settings.batch_within_seconds * 1000)))
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)  # a fresh data dir works
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        table_cleanup_interval=3600.0,
        broker_commit_every=settings.batch_size,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.broker_session_timeout_seconds,
        stream_buffer_maxsize=max(4096, settings.batch_size * 4),
        datadir=str(settings.data_dir / "faust"),
        **overrides,
    )

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, _ = exposition()
        return web.bytes(body, content_type="text/plain; version=0.0.4")

    return app


def topic(app: faust.App, name: str, settings: Settings) -> Any:
    """A raw-bytes topic handle with the configured partition count."""
    return app.topic(
        name, value_serializer="raw", key_serializer="raw", partitions=settings.topic_partitions
    )
