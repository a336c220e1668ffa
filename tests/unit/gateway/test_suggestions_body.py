"""The code-suggestion body's two descriptions agree: msgspec's structs, which the pipeline
plans from, and pydantic's models, which answer the 422s and write the OpenAPI schema.

``decode_suggestions`` must give every body exactly the verdict pydantic alone gives: the
same accepted values, or the same validation errors.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final, get_args

import msgspec
import orjson
import pytest
from annotated_types import Ge, MaxLen
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from enclave.gateway.api.schemas import PromptMessage
from enclave.gateway.code_suggestions.schemas import (
    CodeContextPayload,
    ContextItem,
    CurrentFile,
    FileAtCursor,
    Message,
    SuggestionsBody,
    SuggestionsRequest,
    decode_suggestions,
)

TWINS: Final = [
    (SuggestionsRequest, SuggestionsBody),
    (CurrentFile, FileAtCursor),
    (CodeContextPayload, ContextItem),
    (PromptMessage, Message),
]


def _pydantic_bounds(model: type[BaseModel], name: str) -> dict[str, int]:
    field = model.model_fields[name]
    metadata = list(field.metadata)
    for member in get_args(field.annotation):  # Annotated[str, ...] | None
        metadata += getattr(member, "__metadata__", ())
    bounds: dict[str, int] = {}
    for meta in metadata:
        if isinstance(meta, MaxLen) or isinstance(getattr(meta, "max_length", None), int):
            bounds["max_length"] = meta.max_length
        if isinstance(meta, Ge):
            bounds["ge"] = meta.ge  # type: ignore[assignment]
    return bounds


def _msgspec_bounds(info: msgspec.inspect.Type) -> dict[str, int]:
    bounds: dict[str, int] = {}
    for part in getattr(info, "types", (info,)):  # a union's members, or the type itself
        if getattr(part, "max_length", None) is not None:
            bounds["max_length"] = part.max_length
        if getattr(part, "ge", None) is not None:
            bounds["ge"] = part.ge
    return bounds


@pytest.mark.parametrize(("model", "struct"), TWINS, ids=[t[1].__name__ for t in TWINS])
def test_each_struct_has_its_models_fields_defaults_and_limits(
    model: type[BaseModel], struct: type[msgspec.Struct]
) -> None:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {field.name: field for field in info.fields}
    assert set(fields) == set(model.model_fields)
    for name, pydantic_field in model.model_fields.items():
        field = fields[name]
        assert field.required is pydantic_field.is_required(), name
        if not field.required:
            default = (
                field.default_factory() if field.default is msgspec.NODEFAULT else field.default
            )
            assert default == pydantic_field.get_default(call_default_factory=True), name
        assert _msgspec_bounds(field.type) == _pydantic_bounds(model, name), name


# -- one verdict for every body -------------------------------------------------------------


def _verdict(body: bytes) -> tuple[str, Any]:
    """("ok", the values) or ("422", the errors), as the pipeline would see them."""
    try:
        decoded = decode_suggestions(body)
    except ValidationError as exc:
        return "422", exc.errors(include_url=False)
    return "ok", msgspec.to_builtins(decoded)


def _pydantic_verdict(body: bytes) -> tuple[str, Any]:
    try:
        model = SuggestionsRequest.model_validate_json(body)
    except ValidationError as exc:
        return "422", exc.errors(include_url=False)
    return "ok", model.model_dump()


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left):
        return math.isnan(right)
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_same, left, right))
    return type(left) is type(right) and left == right


FILE: Final = {"file_name": "a.py", "content_above_cursor": "def f(", "content_below_cursor": ")"}


def _with(fields: bytes) -> bytes:
    """A body with a file and ``fields`` (raw JSON members, written as they come)."""
    return b'{"current_file": {"file_name": "a", "content_above_cursor": ""}, ' + fields + b"}"


def _nested(depth: int) -> bytes:
    return _with(b'"telemetry": [{"x": ' + b"[" * depth + b"]" * depth + b"}]")


EDGES: Final[list[bytes]] = [
    orjson.dumps({"current_file": FILE}),
    orjson.dumps(
        {"current_file": FILE, "prompt_version": 3, "prompt": [{"role": "user", "content": "x"}]}
    ),
    orjson.dumps({"current_file": FILE, "stream": True, "choices_count": 2, "project_id": 7}),
    orjson.dumps(
        {"current_file": FILE, "context": [{"type": "file", "name": "b", "content": "c"}]}
    ),
    orjson.dumps({"current_file": FILE, "telemetry": [{"model_engine": "x", "n": 1.5}]}),
    orjson.dumps({"current_file": FILE, "unknown": {"nested": [1, 2]}, "model_name": "codestral"}),
    # Lax conversions pydantic makes and msgspec does not: pydantic decides.
    _with(b'"stream": 1'),
    _with(b'"stream": "true"'),
    _with(b'"project_id": 5.0'),
    _with(b'"project_id": "5"'),
    _with(b'"choices_count": 1e1'),
    _with(b'"prompt_version": "2"'),
    _with(b'"project_id": 12345678901234567890123'),
    # Refusals, each in pydantic's words.
    b"",
    b"[]",
    b"null",
    b'{"current_file": null}',
    b'{"current_file": {"file_name": "a"}}',
    b'{"current_file": {"file_name": "' + b"x" * 256 + b'", "content_above_cursor": ""}}',
    b'{"current_file": {"file_name": "\\ud800", "content_above_cursor": ""}}',
    b'{"current_file": {"file_name": "a", "content_above_cursor": "\xff"}}',
    b'{"current_file": {"file_name": "a", "content_above_cursor": ""}} trailing',
    b'\xef\xbb\xbf{"current_file": {"file_name": "a", "content_above_cursor": ""}}',
    _with(b'"choices_count": -1'),
    _with(b'"prompt_version": 4'),
    _with(b'"prompt": [{"role": "x", "content": ""}]'),
    _with(b'"prompt_version": 2, "prompt": [{"role": "user", "content": "x"}]'),
    _with(b'"model_name": "' + b"m" * 51 + b'"'),
    orjson.dumps({"current_file": FILE, "context": [{}] * 101}),
    orjson.dumps({"current_file": FILE, "telemetry": [{}] * 11}),
    # Free-form telemetry: nesting pydantic refuses and msgspec would take, NaN, Infinity.
    _nested(300),
    _nested(100_000),
    _with(b'"telemetry": [{"x": NaN}]'),
    _with(b'"telemetry": [{"x": 1e400}]'),
    # Duplicate keys: the last one counts, in both.
    _with(b'"stream": "x", "stream": true'),
    _with(b'"stream": true, "stream": "x"'),
]


@pytest.mark.parametrize("body", EDGES, ids=range(len(EDGES)))
def test_a_body_gets_pydantics_verdict(body: bytes) -> None:
    ours, theirs = _verdict(body), _pydantic_verdict(body)
    assert ours[0] == theirs[0]
    assert _same(ours[1], theirs[1])


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_str_or_junk = st.one_of(st.text(max_size=300), _json)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", 1]), "content": _str_or_junk}
)
_bodies = st.fixed_dictionaries(
    {
        "current_file": st.one_of(
            st.fixed_dictionaries(
                {"file_name": _str_or_junk, "content_above_cursor": _str_or_junk},
                optional={
                    "language_identifier": _str_or_junk,
                    "content_below_cursor": _str_or_junk,
                },
            ),
            _json,
        )
    },
    optional={
        "stream": _json,
        "project_id": _json,
        "choices_count": _json,
        "prompt_version": st.one_of(st.sampled_from([1, 2, 3, 4, "1"]), _json),
        "prompt": st.one_of(st.text(max_size=20), st.lists(_message, max_size=3), _json),
        "context": st.one_of(
            st.lists(
                st.dictionaries(st.sampled_from(["type", "name", "content"]), _str_or_junk),
                max_size=3,
            ),
            _json,
        ),
        "telemetry": st.one_of(
            st.lists(st.dictionaries(st.text(max_size=3), _json), max_size=3), _json
        ),
        "model_name": st.one_of(st.text(max_size=60), _json),
        "model_endpoint": _str_or_junk,
        "model_api_key": _str_or_junk,
        "extra": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(body=_bodies)
def test_any_body_gets_pydantics_verdict(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()  # the standard library's: integers of any size
    ours, theirs = _verdict(raw), _pydantic_verdict(raw)
    assert ours[0] == theirs[0]
    assert _same(ours[1], theirs[1])
