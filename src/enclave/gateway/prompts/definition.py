"""The schema of one prompt definition file (``definitions/<prompt_id>/<family>/<semver>.yml``).

Keys follow GitLab's prompt registry where they overlap (``name``, ``model.params``,
``prompt_template``); ``unit_primitives``, ``api`` and ``inputs`` are Enclave's: which token
scopes grant the prompt, which model API it is sent to, and what the caller must supply.
Unknown keys are refused so a typo fails at start-up instead of being ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(_Strict):
    max_tokens: Annotated[int, Field(ge=1, le=32_768)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: tuple[str, ...] = ()


class ModelSection(_Strict):
    params: ModelParams


class InputSpec(_Strict):
    required: bool = True
    max_chars: Annotated[int, Field(ge=1)] | None = None


class PromptTemplate(_Strict):
    """Chat prompts have ``user`` (and usually ``system``); completions prompts ``prompt``."""

    system: str | None = None
    user: str | None = None
    prompt: str | None = None
    # Families whose chat templates refuse a system role (Mistral's strict user/assistant
    # alternation) get the system text at the top of the first user message instead.
    system_in_user: bool = False


class Definition(_Strict):
    name: str
    unit_primitives: Annotated[tuple[str, ...], Field(min_length=1)]
    api: Literal["chat", "completions"]
    model: ModelSection
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    prompt_template: PromptTemplate

    @model_validator(mode="after")
    def _template_matches_api(self) -> Definition:
        template = self.prompt_template
        if self.api == "chat":
            if template.user is None or template.prompt is not None:
                raise ValueError("a chat prompt needs prompt_template.user and no .prompt")
        elif template.prompt is None or template.user is not None or template.system is not None:
            raise ValueError("a completions prompt needs prompt_template.prompt only")
        if "current_date" in self.inputs:
            raise ValueError("current_date is injected by the gateway; it is not an input")
        return self
