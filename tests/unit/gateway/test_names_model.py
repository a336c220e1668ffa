"""``names_model``: a body names its own model when any of endpoint, key or identifier has text."""

from __future__ import annotations

import itertools

from enclave.gateway.code_suggestions.pipeline import names_model
from enclave.gateway.code_suggestions.schemas import SuggestionsRequest, as_body

_VALUES = (None, "", "  ", "x", " x ")


def test_any_field_with_text_names_a_model() -> None:
    for endpoint, key, identifier in itertools.product(_VALUES, repeat=3):
        payload = as_body(
            SuggestionsRequest.model_validate(
                {
                    "current_file": {"file_name": "a.py", "content_above_cursor": "def f():\n"},
                    "model_endpoint": endpoint,
                    "model_api_key": key,
                    "model_identifier": identifier,
                }
            )
        )
        expected = any((value or "").strip() for value in (endpoint, key, identifier))
        assert names_model(payload) is expected
