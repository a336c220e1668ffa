"""Prompt building and answer post-processing (pure functions, no I/O)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave.gateway.code_suggestions.completions import FAMILIES, completion_family
from enclave.gateway.prompts import context as ctx
from enclave.gateway.prompts import postprocess as pp
from enclave.gateway.prompts.registry import get_registry
from enclave.gateway.targets import PlanError


def test_every_completion_family_is_consistent() -> None:
    registry = get_registry()
    for family in FAMILIES:
        prompt = registry.resolve("code_suggestions/completions", family)
        if prompt.api == "completions":
            assert prompt.family == family  # FIM families have their own definition
            template = prompt.definition.prompt_template.prompt
            assert template and "{{ prefix }}" in template and "{{ suffix }}" in template
        else:
            assert prompt.family == "base"
        assert prompt.params.max_tokens == 128
        assert prompt.params.temperature is not None and 0 <= prompt.params.temperature <= 0.3


def test_family_lookup() -> None:
    assert completion_family("Codestral") == "codestral"
    assert completion_family(None) == "general"
    with pytest.raises(PlanError, match="model foo is not supported by use case"):
        completion_family("foo")


def test_fim_prompt_keeps_braces_in_code() -> None:
    prompt = get_registry().resolve("code_suggestions/completions", "codegemma")
    rendered = prompt.render({"prefix": "x = {'a': '{suffix}'}\n", "suffix": "}\n"})
    assert rendered.prompt == "<|fim_prefix|>x = {'a': '{suffix}'}\n<|fim_suffix|>}\n<|fim_middle|>"


def test_trim_context_cuts_at_line_boundaries() -> None:
    prefix, suffix = ctx.trim_context("line one\nline two\nab", "cd\nline three\n", 10, 10)
    assert (prefix, suffix) == ("ab", "cd\n")


@pytest.mark.parametrize(
    ("identifier", "file_name", "lang"),
    [("Python", "x.txt", "python"), (None, "src/main.rs", "rust"), ("", "a.TSX", "typescript"),
     (None, "Makefile", None)],
)  # fmt: skip
def test_detect_language(identifier: str | None, file_name: str, lang: str | None) -> None:
    assert ctx.detect_language(identifier, file_name) == lang


@pytest.mark.parametrize(
    ("answer", "cleaned"),
    [
        ("    return a + b\n", "    return a + b\n"),
        ("```python\n    return a + b\n```", "    return a + b"),
        ("```\nx = 1\n```\nThis adds numbers.", "x = 1"),
        ("```python\nx = 1\n", "x = 1\n"),  # truncated: no closing fence
        ("```python", ""),
        ("  ```py\nx\n  ```  \n", "x"),
        ("``not a fence", "``not a fence"),
        ("a ``` b", "a ``` b"),
    ],
)
def test_strip_fences(answer: str, cleaned: str) -> None:
    assert pp.strip_fences(answer) == cleaned


_FENCY = st.text(alphabet=["`", "\n", " ", "a", "p", "y"], max_size=40)


@given(text=_FENCY, cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8))
def test_fence_stripper_does_not_depend_on_chunking(text: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    stripper = pp.FenceStripper()
    out = "".join(stripper.feed(text[a:b]) for a, b in itertools.pairwise(bounds))
    out += stripper.flush()
    assert out == pp.strip_fences(text)


@pytest.mark.parametrize(
    ("answer", "prefix", "cleaned"),
    [
        ("def add(a, b):\n    return a + b", "def add(a, b):\n", "    return a + b"),
        ("    total = a + b\n    return total", "def f(a, b):\n    total = ",
         "a + b\n    return total"),
        ("return a + b", "def add(a, b):\n    ", "return a + b"),
        ("    return a + b", "def add(a, b):\n    ", "return a + b"),
        ("x = 1", "", "x = 1"),
    ],
)  # fmt: skip
def test_strip_echoed_prefix(answer: str, prefix: str, cleaned: str) -> None:
    assert pp.strip_echoed_prefix(answer, prefix) == cleaned


def test_echoed_current_line_is_dropped() -> None:
    prefix = "def add(a, b):\n    return a"
    assert pp.strip_echoed_prefix("    return a + b", prefix) == " + b"


def test_chat_instruction_has_the_file_around_the_cursor() -> None:
    prompt = get_registry().resolve("code_suggestions/completions", "general")
    inputs = {"prefix": "a = 1\n", "suffix": "\nb = 2", "file_name": "m.py", "language": "python"}
    [message] = prompt.render(inputs).messages
    text = message.content
    assert "a = 1\n<CURSOR>\nb = 2" in text
    assert "python file `m.py`" in text


def test_postprocess_generation() -> None:
    assert pp.postprocess_generation("<new_code>\nx = 1\n") == "x = 1\n"
    assert pp.postprocess_generation("<new_code>x = 1</new_code> trailing") == "x = 1"
    assert pp.postprocess_generation("```python\nx = 1\n```") == "x = 1"
    assert pp.postprocess_generation("x = 1\n") == "x = 1\n"


@given(cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=6))
def test_generation_stream_filter_matches_the_whole_answer(cuts: list[int]) -> None:
    for text in ("<new_code>\nx = 1\n", "  <new_code>```py\ny\n```", "plain\n", "<new", ""):
        bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
        stream = pp.GenerationStreamFilter()
        out = "".join(stream.feed(text[a:b]) for a, b in itertools.pairwise(bounds))
        out += stream.flush()
        assert out == pp.postprocess_generation(text)


def _strip_echoed_prefix_by_split(text: str, prefix: str, max_lines: int) -> str:
    """The first implementation (the whole prefix split into lines): the reference."""
    if not text or not prefix:
        return text
    lines = prefix.split("\n")
    for count in range(min(max_lines, len(lines)), 0, -1):
        tail = "\n".join(lines[-count:])
        if tail.strip() and text.startswith(tail):
            return text[len(tail) :]
    current = lines[-1]
    if current and not current.strip() and text.startswith(current):
        return text[len(current) :]
    return text


@given(
    lines=st.lists(st.sampled_from(["", " ", "  x = 1", "def f():", "    return x"]), max_size=9),
    echoed=st.integers(min_value=0, max_value=9),
    rest=st.sampled_from(["", "\n    y", " + 1"]),
    max_lines=st.integers(min_value=1, max_value=6),
)
def test_strip_echoed_prefix_splits_off_only_the_lines_it_compares(
    lines: list[str], echoed: int, rest: str, max_lines: int
) -> None:
    prefix = "\n".join(lines)
    answer = "\n".join(lines[len(lines) - min(echoed, len(lines)) :]) + rest
    assert pp.strip_echoed_prefix(answer, prefix, max_lines) == _strip_echoed_prefix_by_split(
        answer, prefix, max_lines
    )
