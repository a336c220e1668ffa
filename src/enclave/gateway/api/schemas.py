"""What every gateway endpoint's request body shares: the base model and FastAPI-style errors.

Validation errors are rendered the way FastAPI renders them (``422 {"detail": [{"type", "loc",
"msg", "input", ...}]}``), so clients written against GitLab's gateway read them unchanged;
unlike FastAPI we never echo an API key or a 100 000-character file back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from enclave.common.logging import REDACTED, is_secret_key, redact

Str255 = Annotated[str, StringConstraints(max_length=255)]
FileContent = Annotated[str, StringConstraints(max_length=100_000)]


class BodyModel(BaseModel):
    # Unknown fields are ignored: the instance may send newer fields than we know.
    model_config = ConfigDict(extra="ignore", frozen=True)


class PromptMessage(BodyModel):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, StringConstraints(max_length=200_000)]


_MAX_INPUT_ECHO = 200


def secret_field(loc: Sequence[str | int]) -> bool:
    """True when ``loc`` names a secret (``model_api_key``, ``api_key``, a token, ...)."""
    return any(isinstance(part, str) and is_secret_key(part) for part in loc)


def _safe_input(value: Any, loc: Sequence[str | int] = ()) -> Any:
    """The offending input, without secrets and cut short (FastAPI echoes it whole).

    The value of a secret field is never shown, whatever its type or length: a key sent as a
    number, or too long, is still a key.
    """
    if secret_field(loc) and value is not None:
        return REDACTED
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    value = redact(value)
    if isinstance(value, dict):
        return {
            key: REDACTED
            if is_secret_key(str(key)) and item is not None
            else _safe_input(item, [str(key)])
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_safe_input(item) for item in value[:20]]
    if isinstance(value, str) and len(value) > _MAX_INPUT_ECHO:
        return value[:_MAX_INPUT_ECHO] + "..."
    return value


def validation_detail(error: ValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 ``detail`` list for a pydantic error raised on the request body."""
    details: list[dict[str, Any]] = []
    for item in error.errors(include_url=False):
        entry: dict[str, Any] = {
            "type": item["type"],
            "loc": ["body", *item["loc"]],
            "msg": item["msg"],
            "input": _safe_input(item.get("input"), item["loc"]),
        }
        if "ctx" in item and not secret_field(item["loc"]):
            entry["ctx"] = {
                key: value if isinstance(value, str | int | float | bool) else str(value)
                for key, value in item["ctx"].items()
            }
        details.append(entry)
    return details


def field_error(
    loc: list[str | int], msg: str, value: Any, kind: str = "value_error"
) -> dict[str, Any]:
    """One FastAPI-style error entry for checks made after parsing."""
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": _safe_input(value, loc)}
