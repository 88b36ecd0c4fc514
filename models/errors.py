"""Exceptions raised by the models package, kept in one place so callers can catch them narrowly."""

from __future__ import annotations


class FeatureMismatchError(ValueError):
    """The feature matrix does not have the shape the model was trained on.

    Raised instead of letting LightGBM/River fail obscurely (or, worse, score silently with
    shifted columns), so the engine can fall back to rules with a clear reason code.
    """

    def __init__(self, expected: int, got: int, model: str) -> None:
        self.expected = expected
        self.got = got
        self.model = model
        super().__init__(f"model {model} expects {expected} feature columns, got {got}")


class UnknownModelError(KeyError):
    """No model with this version exists in the registry."""

    def __init__(self, version: str, root: object) -> None:
        self.version = version
        self.root = root
        super().__init__(version)

    def __str__(self) -> str:  # KeyError would otherwise print just the quoted key
        return f"unknown model version {self.version!r} in registry {self.root}"


class ModelIntegrityError(RuntimeError):
    """A stored model's content does not hash to the version it is filed under."""


class ModelLoadError(ModelIntegrityError):
    """A stored model file exists but cannot be loaded (corrupt, truncated, unreadable)."""


class RoleError(ValueError):
    """A role change that would leave the registry inconsistent (e.g. retiring the champion)."""
