"""The registry: every definition loads, resolution follows GitLab's family chain and semver
constraints, broken definitions fail with their file name, and templates are sandboxed."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import jinja2
import pytest

from enclave.common.features import COMPATIBLE_FAMILIES, FEATURE_PROMPT_IDS, MODEL_FAMILIES, Feature
from enclave.config import EnclaveSettings, GatewaySettings
from enclave.gateway.app import create_app
from enclave.gateway.models.base import ChatMessage
from enclave.gateway.prompts.registry import (
    DEFINITIONS_DIR,
    DefinitionError,
    NoMatchingVersion,
    PromptNotFound,
    family_chain,
    get_registry,
    load_registry,
)
from enclave.gateway.prompts.semver import InvalidVersion

FIM_FAMILIES = {"codestral", "codegemma", "codellama", "deepseekcoder", "qwen"}
CHAT_LIKE = {
    "chat/agent",
    "chat/explain_code",
    "chat/write_tests",
    "chat/refactor_code",
    "chat/fix_code",
    "chat/troubleshoot_job",
    "chat/explain_vulnerability",
    "chat/summarize_comments",
    "resolve_vulnerability",
    "summarize_review",
    "summarize_new_merge_request",
    "generate_commit_message",
    "review_merge_request",
    "glab_ask_git_command",
}
DAY = dt.date(2026, 1, 2)


def test_every_definition_loads_and_every_prompt_id_is_there() -> None:
    registry = load_registry()
    expected = {*FEATURE_PROMPT_IDS.values(), "chat/summarize_comments"}
    expected.update({"model_configuration/check", "categorize_question"})
    assert set(registry.prompt_ids) == expected
    assert len(registry.all()) == len(list(DEFINITIONS_DIR.rglob("*.yml")))


def test_every_compatible_family_resolves() -> None:
    registry = get_registry()
    for feature, families in COMPATIBLE_FAMILIES.items():
        prompt_id = FEATURE_PROMPT_IDS[feature.value]
        for family in families:
            assert registry.resolve(prompt_id, family).prompt_id == prompt_id


def test_family_chain_is_gitlabs() -> None:
    assert family_chain("mixtral") == ("mixtral", "mistral", "base")
    assert family_chain("codestral") == ("codestral", "mistral", "base")
    assert family_chain("Mistral") == ("mistral", "base")
    assert family_chain("gpt") == ("gpt", "base")
    assert family_chain(None) == ("base",)
    assert family_chain("") == ("base",)


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES | {"something-new", ""}))
def test_completions_resolution(family: str) -> None:
    prompt = get_registry().resolve("code_suggestions/completions", family)
    if family in FIM_FAMILIES:
        assert (prompt.family, prompt.api) == (family, "completions")
    else:
        # Chat style, including mistral/mixtral (no FIM variant in the chain) and unknowns.
        assert (prompt.family, prompt.api) == ("base", "chat")


@pytest.mark.parametrize("prompt_id", sorted(CHAT_LIKE))
def test_mistral_variants_have_no_system_message(prompt_id: str) -> None:
    registry = get_registry()
    for family in ("mistral", "mixtral", "codestral"):
        prompt = registry.resolve(prompt_id, family)
        assert prompt.family == "mistral"
        inputs = {name: f"<{name}>" for name in prompt.definition.inputs}
        messages = prompt.render(inputs, DAY).messages
        assert [m.role for m in messages] == ["user"]
        base = registry.resolve(prompt_id, "gpt").render(inputs, DAY).messages
        assert [m.role for m in base] == ["system", "user"]
        # Same instructions and request, only placed differently.
        assert messages[0].content == f"{base[0].content}\n\n{base[1].content}"


def test_conversation_places_instructions_by_family() -> None:
    registry = get_registry()
    history = (ChatMessage("user", "hi"), ChatMessage("assistant", "yo"), ChatMessage("user", "?"))
    base = registry.resolve("chat/agent", "gpt")
    text = base.instructions(DAY)
    assert text and base.conversation(history, DAY) == (ChatMessage("system", text), *history)
    mistral = registry.resolve("chat/agent", "mixtral")
    assert mistral.conversation(history, DAY) == (
        ChatMessage("user", f"{text}\n\nhi"),
        *history[1:],
    )
    own = (ChatMessage("system", "Be brief."), *history)
    assert base.conversation(own) == own and mistral.conversation(own) == own


def test_unknown_prompt_and_version_constraints() -> None:
    registry = get_registry()
    with pytest.raises(PromptNotFound):
        registry.resolve("chat/nope", "gpt")
    with pytest.raises(PromptNotFound):
        registry.unit_primitives("../etc/passwd")
    for constraint in ("^1.0.0", "~1.0.0", "1.0.0", ">=1.0.0", None):
        assert (
            str(registry.resolve("generate_commit_message", "gpt", constraint).version) == "1.0.0"
        )
    with pytest.raises(NoMatchingVersion):
        registry.resolve("generate_commit_message", "gpt", "^2.0.0")
    with pytest.raises(InvalidVersion):
        registry.resolve("generate_commit_message", "gpt", "latest")


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


CHAT_DEFINITION = """
    name: Test
    unit_primitives: [duo_chat]
    api: chat
    model:
      params:
        max_tokens: 64
    inputs:
      question: {required: true, max_chars: 20}
    prompt_template:
      system: "{% include 'p/partials/system.jinja' %}"
      user: "{{ question }}"
"""


def _edit(old: str, new: str) -> str:
    return CHAT_DEFINITION.replace(old, new)


def _registry_root(tmp_path: Path) -> Path:
    root = tmp_path / "definitions"
    _write(root, "p/partials/system.jinja", "Be helpful. Today is {{ current_date }}.\n")
    _write(root, "p/base/1.0.0.yml", CHAT_DEFINITION)
    return root


def test_versions_and_family_folders_resolve_newest_match(tmp_path: Path) -> None:
    root = _registry_root(tmp_path)
    for version in ("1.1.0", "1.2.0-dev", "2.0.0"):
        _write(root, f"p/base/{version}.yml", CHAT_DEFINITION)
    _write(root, "p/mistral/1.0.5.yml", CHAT_DEFINITION)
    registry = load_registry(root)
    assert str(registry.resolve("p", "gpt").version) == "2.0.0"
    assert str(registry.resolve("p", "gpt", "^1.0.0").version) == "1.1.0"
    assert str(registry.resolve("p", "gpt", "1.2.0-dev").version) == "1.2.0-dev"
    mixtral = registry.resolve("p", "mixtral", "^1.0.0")
    assert (mixtral.family, str(mixtral.version)) == ("mistral", "1.0.5")
    # The family's folder has no match: fall back along the chain to base.
    fallback = registry.resolve("p", "mixtral", "^2.0.0")
    assert (fallback.family, str(fallback.version)) == ("base", "2.0.0")
    assert registry.resolve("p", "gpt") is registry.resolve("p", "gpt")  # memoized


@pytest.mark.parametrize(
    ("relative", "text", "reason"),
    [
        ("p/base/1.0.1.yml", "name: [unclosed\n", "cannot read YAML"),
        ("p/base/1.0.1.yml", CHAT_DEFINITION + "    surprise: 1\n", "surprise"),
        ("p/base/1.0.1.yml", _edit("max_tokens: 64", "max_tokens: 0"), "max_tokens"),
        ("p/base/1.0.1.yml", _edit("{{ question }}", "{{ question "), "TemplateSyntaxError"),
        ("p/base/1.0.1.yml", _edit("p/partials/system", "p/partials/gone"), "p/partials/gone"),
        ("p/base/1.0.1.yml", _edit("{{ question }}", "{{ answer }}"), "answer"),
        ("p/base/latest.yml", CHAT_DEFINITION, "file name"),
        ("p/base/1.0.yml", CHAT_DEFINITION, "file name"),
        ("base/1.0.0.yml", CHAT_DEFINITION, "<prompt_id>/<family>/<semver>.yml"),
        ("p/base/1.0.1.yaml", CHAT_DEFINITION, "<semver>.yml"),
        ("p/partials/broken.jinja", "{% if %}", "TemplateSyntaxError"),
        ("p/base/1.0.1.yml", _edit("[duo_chat]", "[other]"), "unit_primitives"),
        ("p/base/1.0.1.yml", _edit("api: chat", "api: completions"), "completions prompt"),
    ],
)  # fmt: skip
def test_broken_definitions_fail_with_their_file_name(
    tmp_path: Path, relative: str, text: str, reason: str
) -> None:
    root = _registry_root(tmp_path)
    path = _write(root, relative, text)
    with pytest.raises(DefinitionError) as info:
        load_registry(root)
    assert str(path) in str(info.value) and info.value.path == path
    assert reason in str(info.value)


def test_broken_definitions_stop_the_gateway_at_start_up(tmp_path: Path) -> None:
    root = _registry_root(tmp_path)
    path = _write(root, "p/base/1.1.0.yml", CHAT_DEFINITION + "    unknown_key: true\n")
    settings = EnclaveSettings(data_dir=tmp_path / "data", gateway=GatewaySettings())
    with pytest.raises(DefinitionError, match=str(path)):
        create_app(settings, prompt_definitions=root)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ question.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ '{0.__class__}'.format(question) }}",
        "{% set x = [] %}{{ x.append(1) }}",  # immutable sandbox: no mutation
        "{{ self._TemplateReference__context }}",
    ],
)
def test_sandbox_escape_attempts_fail_at_load(tmp_path: Path, template: str) -> None:
    root = _registry_root(tmp_path)
    escaped = template.replace('"', '\\"')
    path = _write(root, "p/base/1.0.1.yml", _edit("{{ question }}", escaped))
    with pytest.raises(DefinitionError, match=str(path)):
        load_registry(root)


def test_sandbox_is_used_for_rendering(tmp_path: Path) -> None:
    root = _registry_root(tmp_path)
    registry = load_registry(root)
    template = registry.resolve("p")._user
    assert template is not None
    assert template.environment.is_safe_attribute("", "upper", "".upper)
    assert not template.environment.is_safe_attribute("", "__class__", str)
    with pytest.raises(jinja2.exceptions.SecurityError):
        template.environment.from_string("{{ x.__class__ }}").render(x="")


@pytest.mark.parametrize(
    "payload",
    [
        "{{ 7*7 }}",
        "{% for x in range(3) %}loop{% endfor %}",
        "{{ ''.__class__.__mro__ }}",
        "{% include '/etc/passwd' %}",
        "{{ current_date }}",
    ],
)
def test_template_syntax_in_inputs_is_inert(payload: str) -> None:
    registry = get_registry()
    rendered = registry.resolve("generate_commit_message", "gpt").render({"diff": payload}, DAY)
    assert payload in rendered.messages[-1].content
    fim = registry.resolve("code_suggestions/completions", "codestral")
    assert fim.render({"prefix": payload, "suffix": ""}).prompt == f"<s>[SUFFIX][PREFIX]{payload}"


def test_current_date_is_injected(tmp_path: Path) -> None:
    registry = load_registry(_registry_root(tmp_path))
    rendered = registry.resolve("p").render({"question": "q", "current_date": "spoofed"}, DAY)
    assert rendered.messages[0].content == "Be helpful. Today is 2026-01-02."
    today = dt.date.today().isoformat()
    assert today in registry.resolve("p").render({"question": "q"}).messages[0].content


def test_input_checks(tmp_path: Path) -> None:
    from enclave.gateway.prompts.registry import InputError

    prompt = load_registry(_registry_root(tmp_path)).resolve("p")
    for inputs, kind in (
        ({}, "missing"),
        ({"question": None}, "missing"),
        ({"question": 7}, "string_type"),
        ({"question": ["a"]}, "string_type"),
        ({"question": "x" * 21}, "string_too_long"),
    ):
        with pytest.raises(InputError) as info:
            prompt.render(inputs)
        assert (info.value.name, info.value.kind) == ("question", kind)
    # Undeclared inputs are ignored, as in GitLab's registry.
    assert prompt.render({"question": "x" * 20, "other": object()}).messages[1].content == "x" * 20


def test_undeclared_variable_in_an_empty_input_branch_fails_at_load(tmp_path: Path) -> None:
    root = _registry_root(tmp_path)
    text = _edit("question: {required: true, max_chars: 20}", "question: {required: false}")
    text = text.replace(
        "{{ question }}", "{% if question %}{{ question }}{% else %}{{ oops }}{% endif %}"
    )
    path = _write(root, "p/base/1.0.1.yml", text)
    with pytest.raises(DefinitionError, match="oops"):
        load_registry(root)
    assert path.exists()


def test_rendering_reads_no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = load_registry()

    def no_io(*args: object) -> None:
        raise AssertionError("a template was read from disk on the request path")

    monkeypatch.setattr(jinja2.FileSystemLoader, "get_source", no_io)
    for prompt in registry.all():
        inputs = {name: "x" for name in prompt.definition.inputs}
        prompt.render(inputs)
        prompt.conversation((ChatMessage("user", "hi"),))


def test_feature_catalogue_is_covered() -> None:
    assert set(FEATURE_PROMPT_IDS) == {f.value for f in Feature}
