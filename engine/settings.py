"""Runtime settings, read from ``RISKSTREAM_*`` environment variables.

One object for every process (worker, CLI, tests) so that the same names configure the
embedded stack, compose.yaml and production.

>>> Settings(kafka_bootstrap="k:9092").kafka_bootstrap
'k:9092'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    batch_size: int = Field(default=1000, ge=1)
    batch_within_seconds: float = Field(default=0.05, gt=0)
    max_payload_bytes: int = Field(default=64 * 1024, ge=256)

    rules_dir: Path = DEFAULT_RULES_DIR
    #: A YAML feature spec; unset = the built-in default spec (features/spec.py).
    feature_spec: Path | None = None
    review_threshold: float = Field(default=0.5, ge=0, le=1)
    block_threshold: float = Field(default=0.9, ge=0, le=1)
    review_queue_max: int = Field(default=100_000, ge=1)

    web_port: int = Field(default=6066, ge=0, le=65535)
    web_host: str = "127.0.0.1"

    #: Key for keyed hashes of identifiers that must never be stored in clear.
    hash_key: SecretStr = SecretStr(DEV_HASH_KEY)
    #: Fault injection for the fault suite (``make faults``): a transaction whose event_id starts
    #: with this makes a stage raise: ``decode`` (before anything is counted) or ``score`` (after
    #: the batch's features were counted). Empty: off; refused in production.
    fault_poison_prefix: str = ""
    fault_poison_stage: Literal["decode", "score"] = "decode"
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

    def topics(self) -> list[str]:
        """Every topic riskstream reads or writes (created at start when missing)."""
        return [
            self.topic_transactions, self.topic_events, self.topic_labels,
            self.topic_scores, self.topic_review, self.topic_dead_letter,
        ]  # fmt: skip

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"
