"""Runtime settings, read from ``RISKSTREAM_*`` environment variables.

One object for every process (worker, CLI, tests) so that the same names configure the
embedded stack, compose.yaml and production.

>>> Settings(kafka_bootstrap="k:9092").kafka_bootstrap
'k:9092'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
#: The development hash key; ``RISKSTREAM_ENV=production`` refuses it.
DEV_HASH_KEY = "riskstream-dev-key-change-me"
MIN_PRODUCTION_KEY_CHARS = 16


class Settings(BaseSettings):
    """Every knob of riskstream; environment variable = ``RISKSTREAM_`` + upper-case name."""

    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_", extra="ignore")

    kafka_bootstrap: str = "localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    data_dir: Path = Path(".riskstream")

    app_id: str = "riskstream"
    topic_transactions: str = "transactions"
    topic_events: str = "events"
    topic_labels: str = "labels"
    topic_scores: str = "scores"
    topic_review: str = "review-queue"
    topic_dead_letter: str = "dead-letter"
    topic_partitions: int = Field(default=4, ge=1)

    #: How long the group waits for a silent worker before giving its partitions to another
    #: (Kafka's session timeout): the floor of the recovery time after a worker crash.
    broker_session_timeout_seconds: float = Field(default=60.0, ge=6, le=300)
    #: How long a starting worker waits for the broker and for Redis before it exits with one
    #: line saying which is missing (an orchestrator may start them in any order).
    startup_wait_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: Most events in one micro-batch; batches are as large as what has arrived, up to this.
    batch_size: int = Field(default=1000, ge=1)
    #: A transactions batch at least this big stays in flight while the next one starts (two
    #: batches overlap: throughput under a backlog); a smaller one took all that had arrived and
    #: is finished at once (latency). 0: half of ``batch_size``; 1: always overlap.
    overlap_from: int = Field(default=0, ge=0)
    #: How long a Faust agent (events, labels) waits for its batch to fill.
    batch_within_seconds: float = Field(default=0.05, gt=0)
    #: Transactions consumer: ``batch`` (librdkafka batches, managed by a Faust service) or
    #: ``agent`` (a plain Faust agent with ``stream.take``; ~10,000 events/s at most).
    consumer: Literal["batch", "agent"] = "batch"
    #: How long the broker may hold a fetch that finds nothing new (see engine.batch_consumer).
    fetch_max_wait_ms: int = Field(default=25, ge=1, le=10_000)
    max_payload_bytes: int = Field(default=64 * 1024, ge=256)

    #: Threads per LightGBM predict in the worker. One: a scoring batch is small, and OpenMP
    #: threads spinning against the broker and Redis on the same cores made predict 2x (batches
    #: of 1,000) to 7x (batches of 20) slower on 2 cores.
    model_threads: int = Field(default=1, ge=0)
    #: Threads for the contributions of review/block decisions (TreeSHAP, ~1 ms a row, C code
    #: that releases the GIL). Two: the largest stage whenever many rows are flagged, and two
    #: threads about halved it in ``make bench`` at 5,000/s (one run each; see the README).
    explain_threads: int = Field(default=2, ge=0)
    #: How review/block decisions get their top contributions: ``shap`` (TreeSHAP, exact Shapley
    #: values, ~1-2 ms a row) or ``path`` (each split on the row's path credits its feature,
    #: ~13 µs a row; the same sum, a different ranking: see models/paths.py and the README).
    explain_method: Literal["shap", "path"] = "shap"

    rules_dir: Path = DEFAULT_RULES_DIR
    #: A YAML feature spec; unset = the built-in default spec (features/spec.py).
    feature_spec: Path | None = None
    review_threshold: float = Field(default=0.5, ge=0, le=1)
    block_threshold: float = Field(default=0.9, ge=0, le=1)
    review_queue_max: int = Field(default=100_000, ge=1)
    #: How long a decision is kept to answer a redelivery of its transaction with the same bytes:
    #: as long as the topic may redeliver it (Kafka's default retention, 7 days).
    redelivery_memo_seconds: int = Field(default=7 * 86400, ge=60)

    #: Drift statistics (engine/drift.py): transactions in the sliding window, fewest rows for a
    #: statistic to be exported, event-time lateness before an hour closes, and how often the
    #: hourly counts are added to Redis (what `riskstream drift report --since` reads).
    drift_window: int = Field(default=50_000, ge=1)
    drift_min_rows: int = Field(default=1000, ge=1)
    drift_lateness_seconds: int = Field(default=300, ge=0)
    drift_log_seconds: float = Field(default=10.0, gt=0)

    web_port: int = Field(default=6066, ge=0, le=65535)
    web_host: str = "127.0.0.1"

    #: The analyst web app (``riskstream review serve``).
    review_host: str = "127.0.0.1"
    review_port: int = Field(default=6070, ge=0, le=65535)
    #: Opening a case claims it for this long (renewed while the analyst keeps working it).
    review_claim_seconds: int = Field(default=600, ge=1)
    #: A session ends after this long without a request.
    review_session_seconds: int = Field(default=8 * 3600, ge=1)
    #: Signs session cookies; set it in production (a fixed dev key is not a secret).
    review_secret: SecretStr = SecretStr("riskstream-review-dev-secret-change-me")
    #: Send cookies over HTTPS only (set when the app is behind TLS).
    review_cookie_secure: bool = False

    #: Key for keyed hashes of identifiers that must never be stored in clear.
    hash_key: SecretStr = SecretStr(DEV_HASH_KEY)
    #: Fault injection for the fault suite (``make faults``): a transaction whose event_id starts
    #: with this makes a stage raise: ``decode`` (before anything is counted) or ``score`` (after
    #: the batch's features were counted). Empty: off; refused in production.
    fault_poison_prefix: str = ""
    fault_poison_stage: Literal["decode", "score"] = "decode"
    #: glibc malloc arenas of a worker (engine/malloc.py; 0: glibc's default, 8 per core): two
    #: kept its resident memory from creeping up in the 1M-message fuzz run.
    malloc_arenas: int = Field(default=2, ge=0)
    #: ``production`` refuses development defaults of secrets (the hash key).
    env: Literal["development", "production"] = "development"

    @model_validator(mode="after")
    def _no_dev_secrets_in_production(self) -> Settings:
        """A production worker with the published dev key would hash identifiers guessably."""
        if self.env == "production" and self.fault_poison_prefix:
            msg = "RISKSTREAM_FAULT_POISON_PREFIX: fault injection is refused in production"
            raise ValueError(msg)
        if self.env == "production":
            key = self.hash_key.get_secret_value()
            if key == DEV_HASH_KEY or len(key) < MIN_PRODUCTION_KEY_CHARS:
                msg = (
                    "RISKSTREAM_HASH_KEY: set a random secret of at least "
                    f"{MIN_PRODUCTION_KEY_CHARS} characters when RISKSTREAM_ENV=production "
                    "(the development default is refused)"
                )
                raise ValueError(msg)
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from a mapping of ``RISKSTREAM_*`` variables (a worker's or a test's
        environment), over the defaults and this process's own environment.

        >>> Settings.from_env({"RISKSTREAM_BATCH_SIZE": "50", "PATH": "/bin"}).batch_size
        50
        """
        prefix = "RISKSTREAM_"
        values: dict[str, Any] = {
            k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)
        }
        return cls(**values)

    def topics(self) -> list[str]:
        """Every topic riskstream reads or writes (created at start when missing)."""
        return [
            self.topic_transactions, self.topic_events, self.topic_labels,
            self.topic_scores, self.topic_review, self.topic_dead_letter,
        ]  # fmt: skip

    @property
    def scoring_group_id(self) -> str:
        """Consumer group of the transactions batch consumer (Faust's group is ``app_id``)."""
        return f"{self.app_id}-scoring"

    @property
    def transactions_group_id(self) -> str:
        """The group whose committed offsets say which transactions were applied."""
        return self.scoring_group_id if self.consumer == "batch" else self.app_id

    def scorer_options(self) -> dict[str, Any]:
        """How the worker's LightGBM scorers run, as keywords of
        :meth:`models.registry.ModelRegistry.load`."""
        return {"num_threads": self.model_threads, "explain_threads": self.explain_threads,
                "explain": self.explain_method}  # fmt: skip

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"
