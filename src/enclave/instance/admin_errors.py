"""Errors of the administration services (models, features, settings, users, tokens).

The services raise them; the REST API turns them into GitLab-style ``{"message": ...}`` answers
with the status below, and the CLI prints the message and exits non-zero. Messages name the
field, say what is wrong and what is accepted, and never contain a secret.
"""

from __future__ import annotations

from collections.abc import Iterable


class AdminError(Exception):
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInputError(AdminError):
    """A value is missing or not acceptable (400)."""

    status = 400


class NotFoundError(AdminError):
    status = 404


class ConflictError(AdminError):
    """The request clashes with what exists: a taken name, a model still in use (409)."""

    status = 409


class ModelInUseError(ConflictError):
    def __init__(self, name: str, features: Iterable[str]) -> None:
        self.features = sorted(features)
        super().__init__(
            f"self-hosted model {name!r} is used by the features {', '.join(self.features)}; "
            "assign another model to them (or disable them) first, then delete it",
            field="id",
        )
