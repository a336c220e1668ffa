"""Hypothesis on prompt rendering with hostile input: every prompt of the registry, and the
code-suggestion prompt builders with their answer clean-up.

Properties: rendering returns a prompt or an input error with a message (never another
exception); template syntax inside an input is text, never evaluated (the sandbox renders
inputs, it does not compile them); the clean-up of an answer, whole or streamed in pieces,
never fails.
"""

from __future__ import annotations

from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from enclave.gateway.code_suggestions.completions import plan_completion
from enclave.gateway.code_suggestions.generations import plan_generation
from enclave.gateway.code_suggestions.pipeline import check_prompt_shape, model_target
from enclave.gateway.code_suggestions.schemas import SuggestionsRequest, as_body
from enclave.gateway.prompts.registry import InputError, Prompt, load_registry
from enclave.gateway.targets import PlanError
from tests.fuzz.fuzz_settings import FUZZ
from tests.fuzz.summary import count_example

REGISTRY: Final = load_registry()
PROMPTS: Final = REGISTRY.all()

# Template syntax a hostile file or question may carry: if an input were compiled as a
# template, "pw" ~ "ned" would render as the marker.
MARKER: Final = "pwned"
INJECTIONS: Final = (
    "{{ 'pw' ~ 'ned' }}",
    "{% if true %}{{ 'pw' ~ 'ned' }}{% endif %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{# comment #}{%- raw %}{{ x }}{% endraw %}",
    "<|fim_prefix|><|endoftext|>[INST]</s>",
    "\x00\x1b[31m\u202e\ufeff",
)
hostile_text = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(max_size=200),
    st.builds(lambda a, b: a + b, st.sampled_from(INJECTIONS), st.text(max_size=50)),
    st.integers(1, 30).map(lambda n: "x" * (n * 10_000)),
)
hostile_value = st.one_of(
    hostile_text,
    st.none(),
    st.integers(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


def prompt_id(prompt: Prompt) -> str:
    return f"{prompt.prompt_id}/{prompt.family}/{prompt.version}"


def rendered_text(prompt: Prompt, inputs: dict[str, Any]) -> str | None:
    """All text of the rendered prompt, or None for an input error (which must say why)."""
    try:
        rendered = prompt.render(inputs)
    except InputError as exc:
        assert str(exc).strip() and exc.name in prompt.definition.inputs
        return None
    parts = [rendered.prompt or "", *(m.content for m in rendered.messages)]
    return "\n".join(parts)


@pytest.mark.parametrize("prompt", PROMPTS, ids=prompt_id)
@FUZZ
@given(data=st.data())
def test_every_prompt_renders_hostile_inputs_as_text(prompt: Prompt, data: st.DataObject) -> None:
    names = [*prompt.definition.inputs, "undeclared"]
    inputs = {name: data.draw(hostile_value, label=name) for name in names}
    text = rendered_text(prompt, inputs)
    count_example("prompt rendering")
    if text is not None and not any(MARKER in str(v) for v in inputs.values()):
        assert MARKER not in text, f"{prompt_id(prompt)} evaluated template syntax from an input"


TARGET_FIELDS: Final = {
    "model_provider": "litellm",
    "model_endpoint": "http://127.0.0.1:9/v1",
    "model_api_key": "sk-test",
}
families = st.sampled_from(
    [
        "codestral",
        "codellama",
        "codegemma",
        "deepseekcoder",
        "mistral",
        "mixtral",
        "llama3",
        "qwen",
        "gpt",
        "claude_3",
        "general",
        "",
        "unknown-family",
    ]
)


@st.composite
def suggestion_bodies(draw: st.DrawFn) -> dict[str, Any]:
    version = draw(st.sampled_from([1, 2, 3]))
    prompt: Any = None
    if version == 2:
        prompt = draw(hostile_text)
    elif version == 3:
        prompt = [
            {"role": draw(st.sampled_from(["system", "user", "assistant"])), "content": t}
            for t in draw(st.lists(hostile_text, min_size=0, max_size=3))
        ]
    return {
        **TARGET_FIELDS,
        "model_name": draw(families),
        "model_identifier": draw(st.sampled_from(["", "custom_openai/m", "codestral/x", "a/b/c"])),
        "prompt_version": version,
        "prompt": prompt,
        "current_file": {
            "file_name": draw(st.sampled_from(["a.py", "x.rs", "", "../../etc/passwd", "Ä.js"])),
            "content_above_cursor": draw(hostile_text),
            "content_below_cursor": draw(hostile_text),
            "language_identifier": draw(st.none() | st.text(max_size=10)),
        },
        "context": [
            {"type": "file", "name": draw(st.text(max_size=10)), "content": draw(hostile_text)}
            for _ in range(draw(st.integers(0, 3)))
        ],
    }


@pytest.mark.parametrize(
    "plan", [plan_completion, plan_generation], ids=["completions", "generations"]
)
@FUZZ
@given(body=suggestion_bodies(), answer=hostile_text, cuts=st.lists(st.integers(0, 50), max_size=6))
def test_code_suggestion_prompts_and_answer_clean_up(
    plan: Any, body: dict[str, Any], answer: str, cuts: list[int]
) -> None:
    count_example("prompt rendering")
    try:
        payload = as_body(SuggestionsRequest.model_validate(body))
    except ValidationError as exc:
        assert exc.errors()  # the 422's detail
        return
    try:
        check_prompt_shape(payload)
        built = plan(payload, model_target(payload))
    except PlanError as exc:
        assert exc.message.strip() and 400 <= exc.status < 500
        return
    request = built.request
    text = (
        request.prompt
        if request.prompt is not None
        else "".join(m.content for m in request.messages)
    )
    if not any(MARKER in v for v in (answer, str(body))):
        assert MARKER not in text
    assert isinstance(built.postprocess(answer), str)
    if built.stream_filter is not None:
        stream = built.stream_filter()
        pieces, start = [], 0
        for cut in cuts:
            pieces.append(answer[start : start + cut])
            start += cut
        pieces.append(answer[start:])
        out = "".join(stream.feed(piece) for piece in pieces) + stream.flush()
        assert isinstance(out, str)
