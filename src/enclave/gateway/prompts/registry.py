"""The prompt registry: every definition under ``definitions/`` loaded, checked and compiled once.

Layout as in GitLab's AI gateway: ``definitions/<prompt_id>/<family>/<semver>.yml`` with Jinja
partials beside them (any ``*.jinja`` file; included by path from the definitions root).
Loading validates each file's schema, compiles its templates in a sandbox and renders them
once with placeholder inputs, so a broken definition (bad YAML, unknown key, Jinja syntax,
missing include, bad file name) stops the gateway at start-up with a :class:`DefinitionError`
naming the file. Requests then only do a dict lookup (:meth:`PromptRegistry.resolve`) and a
render of precompiled templates.

Templates run in :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with
``StrictUndefined``: a template can use only the declared inputs and ``current_date``, cannot
reach dunder attributes or mutate anything, and user input is rendered as data, never
evaluated (``{{ 7*7 }}`` inside an input stays as typed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jinja2
import yaml
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import ValidationError

from enclave.common.features import MODEL_FAMILIES
from enclave.gateway.models.base import Api, ChatMessage
from enclave.gateway.prompts.current_date import current_date
from enclave.gateway.prompts.definition import Definition, ModelParams
from enclave.gateway.prompts.semver import InvalidVersion, Version, parse_constraint

DEFINITIONS_DIR: Final = Path(__file__).with_name("definitions")
BASE_FAMILY: Final = "base"
# Families that fall back to another family's prompts before base (GitLab's models.yml).
_FAMILY_FALLBACKS: Final[dict[str, tuple[str, ...]]] = {
    "mixtral": ("mixtral", "mistral"),
    "codestral": ("codestral", "mistral"),
}
_MAX_CACHED: Final = 4096  # resolutions kept; clients send few distinct constraints


class DefinitionError(Exception):
    """A definition file that cannot be used; the message starts with its path."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"invalid prompt definition {path}: {reason}")


class PromptNotFound(LookupError):
    """No prompt has this id."""


class NoMatchingVersion(LookupError):
    """The prompt exists but no version (for this family chain) satisfies the constraint."""


class InputError(ValueError):
    """An input the prompt cannot be rendered with (reported at ``["inputs", name]``)."""

    def __init__(self, name: str, kind: str, message: str) -> None:
        self.name = name
        self.kind = kind
        super().__init__(message)


def family_chain(family: str | None) -> tuple[str, ...]:
    """The folders searched for ``family``, most specific first, always ending in ``base``."""
    name = (family or "").strip().lower()
    if not name or name == BASE_FAMILY:
        return (BASE_FAMILY,)
    return (*_FAMILY_FALLBACKS.get(name, (name,)), BASE_FAMILY)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A prompt ready for the model: chat ``messages`` or a raw ``prompt``, and its params."""

    api: Api
    messages: tuple[ChatMessage, ...]
    prompt: str | None
    params: ModelParams


class Prompt:
    """One compiled definition file."""

    def __init__(
        self,
        prompt_id: str,
        family: str,
        version: Version,
        definition: Definition,
        env: jinja2.Environment,
        path: Path,
    ) -> None:
        self.prompt_id = prompt_id
        self.family = family
        self.version = version
        self.definition = definition
        self.path = path
        # The declared inputs as bind() checks them, read once (definitions never change).
        self._inputs: tuple[tuple[str, bool, int | None], ...] = tuple(
            (name, spec.required, spec.max_chars) for name, spec in definition.inputs.items()
        )
        template = definition.prompt_template
        self._system = _compile(env, template.system) if template.system is not None else None
        self._user = _compile(env, template.user) if template.user is not None else None
        self._raw = _compile(env, template.prompt) if template.prompt is not None else None

    @property
    def api(self) -> Api:
        return self.definition.api

    @property
    def params(self) -> ModelParams:
        return self.definition.model.params

    @property
    def unit_primitives(self) -> tuple[str, ...]:
        return self.definition.unit_primitives

    def bind(self, inputs: Mapping[str, Any], today: dt.date | None = None) -> dict[str, str]:
        """The template variables: declared inputs (checked) and ``current_date``.

        Inputs the definition does not declare are ignored, as GitLab's registry does.
        """
        values: dict[str, str] = {}
        for name, required, max_chars in self._inputs:
            value = inputs.get(name)
            if value is None:
                if required:
                    raise InputError(name, "missing", f"{name} is required")
                value = ""
            elif not isinstance(value, str):
                raise InputError(name, "string_type", f"{name} must be a string")
            elif max_chars is not None and len(value) > max_chars:
                raise InputError(
                    name, "string_too_long", f"{name} must be at most {max_chars} characters"
                )
            values[name] = value
        values["current_date"] = today.isoformat() if today is not None else current_date()
        return values

    def render(self, inputs: Mapping[str, Any], today: dt.date | None = None) -> Rendered:
        values = self.bind(inputs, today)
        if self._raw is not None:
            return Rendered("completions", (), self._raw.render(values), self.params)
        assert self._user is not None  # the schema guarantees one of the two
        user = self._user.render(values)
        system = self._system.render(values) if self._system is not None else None
        messages: tuple[ChatMessage, ...]
        if system is None:
            messages = (ChatMessage("user", user),)
        elif self.definition.prompt_template.system_in_user:
            messages = (ChatMessage("user", f"{system}\n\n{user}"),)
        else:
            messages = (ChatMessage("system", system), ChatMessage("user", user))
        return Rendered("chat", messages, None, self.params)

    def instructions(self, today: dt.date | None = None) -> str | None:
        """The system text alone, for endpoints that bring their own conversation."""
        if self._system is None:
            return None
        blanks = {name: "" for name in self.definition.inputs}
        blanks["current_date"] = (today or dt.date.today()).isoformat()
        return self._system.render(blanks)

    def conversation(
        self, history: Sequence[ChatMessage], today: dt.date | None = None
    ) -> tuple[ChatMessage, ...]:
        """``history`` with this prompt's instructions, unless the caller sent a system message."""
        messages = tuple(history)
        if any(m.role == "system" for m in messages):
            return messages
        text = self.instructions(today)
        if text is None:
            return messages
        if not self.definition.prompt_template.system_in_user:
            return (ChatMessage("system", text), *messages)
        if messages and messages[0].role == "user":
            return (ChatMessage("user", f"{text}\n\n{messages[0].content}"), *messages[1:])
        return (ChatMessage("user", text), *messages)

    def __repr__(self) -> str:
        return f"<Prompt {self.prompt_id} {self.family}/{self.version}>"


class PromptRegistry:
    """All prompts, by id, family folder and version; resolution is memoized."""

    def __init__(self, root: Path, prompts: Iterable[Prompt]) -> None:
        self.root = root
        prompts = list(prompts)
        by_folder: dict[tuple[str, str], list[Prompt]] = {}
        for prompt in prompts:
            by_folder.setdefault((prompt.prompt_id, prompt.family), []).append(prompt)
        self._folders = {
            key: sorted(items, key=lambda p: p.version.sort_key(), reverse=True)
            for key, items in by_folder.items()
        }
        self.prompt_ids: tuple[str, ...] = tuple(sorted({pid for pid, _ in self._folders}))
        # Scopes are checked before the body (and so the family) is read: one set per prompt.
        self._scopes: dict[str, tuple[str, ...]] = {}
        for prompt in prompts:  # in file order, so the error names the odd one out
            known = self._scopes.setdefault(prompt.prompt_id, prompt.unit_primitives)
            if set(known) != set(prompt.unit_primitives):
                raise DefinitionError(
                    prompt.path,
                    f"unit_primitives differ from other versions of {prompt.prompt_id}: "
                    f"{list(known)}",
                )
        self._cache: dict[tuple[str, str, str | None], Prompt] = {}
        # Precompute the common case (no constraint, every known family) at load.
        for prompt_id in self.prompt_ids:
            for family in (*MODEL_FAMILIES, BASE_FAMILY):
                self.resolve(prompt_id, family)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.prompt_ids

    def unit_primitives(self, prompt_id: str) -> tuple[str, ...]:
        """The token scopes that grant ``prompt_id`` (any one suffices)."""
        scopes = self._scopes.get(prompt_id)
        if scopes is None:
            raise PromptNotFound(prompt_id)
        return scopes

    def all(self) -> list[Prompt]:
        return [prompt for items in self._folders.values() for prompt in items]

    def resolve(
        self, prompt_id: str, family: str | None = None, constraint: str | None = None
    ) -> Prompt:
        """The prompt for ``family`` (through its fallback chain) that best fits ``constraint``.

        Raises :class:`PromptNotFound`, :class:`~enclave.gateway.prompts.semver.InvalidVersion`
        or :class:`NoMatchingVersion`.
        """
        key = (prompt_id, (family or "").strip().lower(), constraint)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if prompt_id not in self.prompt_ids:
            raise PromptNotFound(prompt_id)
        wanted = parse_constraint(constraint)
        for folder in family_chain(family):
            candidates = self._folders.get((prompt_id, folder), [])
            best = wanted.best(p.version for p in candidates)
            if best is not None:
                found = next(p for p in candidates if p.version == best)
                if len(self._cache) < _MAX_CACHED:
                    self._cache[key] = found
                return found
        raise NoMatchingVersion(f"no version of {prompt_id} matches {constraint!r}")


class _Substitution:
    """A template that is only text and ``{{ name }}`` outputs (every fill-in-the-middle
    prompt), rendered by joining strings: Jinja's render sets up a context and a generator per
    call, several times the cost of the join. Anything else, and a name the values lack (Jinja
    raises StrictUndefined's error), renders through the compiled Jinja template."""

    __slots__ = ("_parts", "_template")

    def __init__(self, parts: tuple[tuple[str, bool], ...], template: jinja2.Template) -> None:
        self._parts = parts  # (text, is a variable name)
        self._template = template

    @property
    def environment(self) -> jinja2.Environment:
        return self._template.environment  # the sandbox that renders the rest

    def render(self, values: Mapping[str, Any]) -> str:
        out: list[str] = []
        for text, is_name in self._parts:
            if not is_name:
                out.append(text)
                continue
            value = values.get(text, _MISSING)
            if type(value) is not str:  # missing, or not text: Jinja's own rules
                return self._template.render(values)
            out.append(value)
        return "".join(out)


_MISSING: Final = object()


def _compile(env: jinja2.Environment, source: str) -> jinja2.Template | _Substitution:
    """The template for ``source``: a :class:`_Substitution` when it is only text and plain
    variable outputs (read from Jinja's own parse, so whitespace rules are Jinja's), else Jinja's
    compiled template."""
    template = env.from_string(source)
    body = env.parse(source).body
    outputs = [node for node in body if isinstance(node, nodes.Output)]
    if len(body) > 1 or len(outputs) != len(body):
        return template
    parts: list[tuple[str, bool]] = []
    for node in outputs[0].nodes if outputs else ():
        if isinstance(node, nodes.TemplateData):
            parts.append((node.data, False))
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            parts.append((node.name, True))
        else:
            return template
    return _Substitution(tuple(parts), template)


def _environment(root: Path) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(root)),  # includes cannot leave the root
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # prompts are plain text, not HTML
        auto_reload=False,
    )


def _template_error(path: Path, exc: Exception) -> DefinitionError:
    where = ""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        where = f" in {exc.filename or exc.name or 'template'} line {exc.lineno}"
    elif isinstance(exc, jinja2.TemplateNotFound):
        return DefinitionError(path, f"included template not found: {exc.name}")
    return DefinitionError(path, f"{type(exc).__name__}{where}: {exc}")


def _load_file(root: Path, path: Path, env: jinja2.Environment) -> Prompt:
    relative = path.relative_to(root)
    parts = relative.parts
    if len(parts) < 3:
        raise DefinitionError(path, "expected <prompt_id>/<family>/<semver>.yml")
    try:
        version = Version.parse(path.stem)
    except InvalidVersion as exc:
        raise DefinitionError(path, f"file name: {exc}") from None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DefinitionError(path, f"cannot read YAML: {exc}") from None
    try:
        definition = Definition.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise DefinitionError(path, problems) from None
    try:
        prompt = Prompt("/".join(parts[:-2]), parts[-2], version, definition, env, path)
        # Smoke renders resolve includes and catch undeclared variables and sandbox
        # violations now rather than on some user's request: once with every input set, once
        # with the optional ones empty (so both sides of `{% if input %}` run).
        day = dt.date(2000, 1, 1)
        prompt.render({name: "x" for name in definition.inputs}, day)
        prompt.render({n: "x" for n, spec in definition.inputs.items() if spec.required}, day)
        prompt.instructions(day)
    except (jinja2.TemplateError, InputError) as exc:
        raise _template_error(path, exc) from None
    return prompt


def load_registry(root: Path = DEFINITIONS_DIR) -> PromptRegistry:
    """Load and check every definition under ``root``; raises :class:`DefinitionError`."""
    if not root.is_dir():
        raise DefinitionError(root, "the prompt definitions directory does not exist")
    env = _environment(root)
    for partial in sorted(root.rglob("*.jinja")):
        try:
            env.get_template(partial.relative_to(root).as_posix())
        except jinja2.TemplateError as exc:
            raise _template_error(partial, exc) from None
    prompts = [_load_file(root, path, env) for path in sorted(root.rglob("*.yml"))]
    for stray in sorted(root.rglob("*.yaml")):
        raise DefinitionError(stray, "definitions are named <semver>.yml")
    return PromptRegistry(root, prompts)


_installed: PromptRegistry | None = None


def install_registry(registry: PromptRegistry) -> None:
    """Make ``registry`` the one endpoints use (create_app does this at start-up)."""
    global _installed
    _installed = registry


def get_registry() -> PromptRegistry:
    """The installed registry; the packaged definitions when none was installed yet."""
    global _installed
    if _installed is None:
        _installed = load_registry()
    return _installed
