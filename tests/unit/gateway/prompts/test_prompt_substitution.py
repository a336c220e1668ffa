"""Plain-substitution templates (every fill-in-the-middle prompt) render as Jinja renders them."""

from __future__ import annotations

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.gateway.prompts.registry import (
    DEFINITIONS_DIR,
    _compile,
    _environment,
    _Substitution,
    load_registry,
)

REGISTRY = load_registry(DEFINITIONS_DIR)
SUBSTITUTIONS = [
    (repr(prompt), template)
    for prompt in (p for folder in REGISTRY._folders.values() for p in folder)
    for template in (prompt._system, prompt._user, prompt._raw)
    if isinstance(template, _Substitution)
]
# Jinja-looking text in the inputs stays data; newlines and odd characters pass unchanged.
TEXT = st.text(max_size=40) | st.sampled_from(["{{ 7*7 }}", "{% if x %}", "\n\n", "\r\n  ", ""])


def test_every_fill_in_the_middle_prompt_is_a_substitution() -> None:
    prompt = REGISTRY.resolve("code_suggestions/completions", "codestral")
    assert isinstance(prompt._raw, _Substitution)
    assert len(SUBSTITUTIONS) >= 5


@pytest.mark.parametrize(("name", "template"), SUBSTITUTIONS)
@given(prefix=TEXT, suffix=TEXT, file_name=TEXT, language=TEXT)
@settings(max_examples=60, deadline=None)
def test_a_substitution_renders_what_jinja_renders(
    name: str, template: _Substitution, prefix: str, suffix: str, file_name: str, language: str
) -> None:
    values = {
        "prefix": prefix,
        "suffix": suffix,
        "file_name": file_name,
        "language": language,
        "current_date": "2026-12-05",
    }
    assert template.render(values) == template._template.render(values)


@pytest.mark.parametrize(
    "source",
    [
        "{% if prefix %}x{% endif %}",
        "{{ prefix | upper }}",
        "{{ prefix ~ suffix }}",
        "{{ prefix.strip() }}",
        "a {# note #} b {{ prefix }}",  # a comment splits the output into two nodes
    ],
)
def test_anything_but_text_and_names_stays_a_jinja_template(source: str) -> None:
    env = _environment(DEFINITIONS_DIR)
    compiled = _compile(env, source)
    expected = env.from_string(source).render({"prefix": " p ", "suffix": "s"})
    assert compiled.render({"prefix": " p ", "suffix": "s"}) == expected
    if "#" not in source:
        assert not isinstance(compiled, _Substitution)


def test_whitespace_rules_and_missing_names_are_jinjas() -> None:
    env = _environment(DEFINITIONS_DIR)
    template = _compile(env, "  {{ prefix }}\n[MID]{{ suffix }}\n")
    assert isinstance(template, _Substitution)
    values = {"prefix": "p", "suffix": "s"}
    assert template.render(values) == env.from_string("  {{ prefix }}\n[MID]{{ suffix }}\n").render(
        values
    )
    with pytest.raises(jinja2.UndefinedError):
        template.render({"prefix": "p"})  # StrictUndefined, as Jinja raises it
