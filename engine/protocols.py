"""The small contracts between stages, in one place.

Stage packages (``features``, ``rules``, ``models``) implement these structurally: they never
import ``engine``, the engine only relies on the shapes below. Everything is batch-first: one call
per micro-batch, arrays in and out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


T_co = TypeVar("T_co", covariant=True)


class Deferred(Protocol[T_co]):
    """A call already sent to a server; ``result()`` waits for and returns its value."""

    def result(self) -> T_co: ...


class FeatureStore(Protocol):
    """Windowed velocity features kept server-side; one round trip per batch."""

    @property
    def feature_names(self) -> list[str]: ...

    @property
    def entity_fields(self) -> tuple[str, ...]:
        """Event fields the spec keys or filters on; the pipeline passes exactly these."""
        ...

    @property
    def account_event_fields(self) -> tuple[str, ...]: ...

    late_events: int
    #: Of the batch read last: events whose id an earlier batch had already counted (a
    #: redelivery). Their features include their first delivery's record once.
    redelivered: BoolArray

    def has_counted(self) -> bool:
        """Whether the store has counted any transaction (a replay warns: it is not empty)."""
        ...

    def update_batch(
        self,
        event_ids: Sequence[str],
        ts_ms: IntArray,
        amounts: FloatArray,
        entities: Mapping[str, Sequence[str]],
        fields: Mapping[str, Sequence[str]] | None = None,
    ) -> FloatArray:
        """Apply the batch (idempotent per event id); return an (n, n_features) matrix."""
        ...

    def update_events_batch(
        self,
        event_ids: Sequence[str],
        ts_ms: IntArray,
        types: Sequence[str],
        entities: Mapping[str, Sequence[str]],
        fields: Mapping[str, Sequence[str]] | None = None,
    ) -> int:
        """Account events (login, password_change, ...) that transaction features read."""
        ...

    def apply_labels_batch(
        self, event_ids: Sequence[str], label_ts_ms: Sequence[int], is_fraud: Sequence[bool]
    ) -> int:
        """Labels for label-based features; counted only from their arrival time on."""
        ...

    def submit_batch(
        self,
        event_ids: Sequence[str],
        ts_ms: IntArray,
        amounts: FloatArray,
        entities: Mapping[str, Sequence[str]],
    ) -> Deferred[FloatArray]:
        """``update_batch`` sent now, read later: replays keep the server busy meanwhile."""
        ...

    def submit_labels(
        self, event_ids: Sequence[str], label_ts_ms: Sequence[int], is_fraud: Sequence[bool]
    ) -> Deferred[int]:
        """``apply_labels_batch`` sent now, in order with the submitted batches."""
        ...


class RuleHitLike(Protocol):
    rule_id: str
    action: str
    reason: str


class RuleSetLike(Protocol):
    """A validated, versioned set of rules evaluated over a whole batch."""

    @property
    def version(self) -> str: ...

    def evaluate_batch(
        self,
        events: Sequence[Mapping[str, Any]],
        features: FloatArray,
        feature_names: Sequence[str],
    ) -> list[list[Any]]:
        """For each event, the rules that fired (objects shaped like :class:`RuleHitLike`)."""
        ...


class BatchScorer(Protocol):
    """A trained model that scores a feature matrix (LightGBM champion or shadow)."""

    @property
    def version(self) -> str: ...

    @property
    def feature_names(self) -> list[str]: ...

    def score_batch(self, features: FloatArray) -> FloatArray: ...

    def explain_batch(
        self, features: FloatArray, top: int = 3
    ) -> list[list[tuple[str, float, float]]]:
        """Top contributions per row: (feature name, value, contribution)."""
        ...


class OnlineScorer(Protocol):
    """A model that scores every transaction and learns without labels (anomaly detection)."""

    @property
    def version(self) -> str: ...

    def score_batch(self, features: FloatArray) -> FloatArray: ...

    def learn_batch(self, features: FloatArray) -> None: ...

    def save(self, path: Path) -> None: ...


class OnlineLearner(Protocol):
    """A model that scores every transaction and learns from labels as they arrive."""

    @property
    def version(self) -> str: ...

    def score_batch(self, features: FloatArray) -> FloatArray: ...

    def learn_batch(self, features: FloatArray, labels: Sequence[bool]) -> None: ...

    def save(self, path: Path) -> None: ...
