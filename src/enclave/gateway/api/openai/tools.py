"""Tool (function) calling on the OpenAI-compatible API: the checks of ``tools`` and
``tool_choice``.

OpenAI's request fields — ``tools: [{"type": "function", "function": {"name", "description",
"parameters"}}]``, ``tool_choice: "none" | "auto" | "required" | {"type": "function",
"function": {"name"}}`` — are checked here once for every provider, so a bad definition is a
precise 400 in OpenAI's error shape (``param`` names the field) instead of a provider's refusal
hidden behind the generic model error. The providers map the checked definitions to their own
(:mod:`enclave.gateway.models`): OpenAI-compatible servers get them as sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from enclave.gateway.api.openai.common import RequestError
from enclave.gateway.models.base import Tool

MAX_TOOLS: Final = 128  # OpenAI's own limit
MAX_TOOL_BYTES: Final = 64 * 1024  # one definition, as JSON
MAX_TOOLS_BYTES: Final = 512 * 1024  # all of them
MAX_DESCRIPTION: Final = 4096
MAX_SCHEMA_DEPTH: Final = 32
TOOL_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule; Gemini and Bedrock's fit
CHOICES: Final = frozenset({"none", "auto", "required"})


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """The checked tools of a request and how the model must use them."""

    tools: tuple[Tool, ...]
    choice: str | None  # none, auto, required, function (with name)
    name: str | None
    parallel: bool | None = None  # parallel_tool_calls


def _bad(param: str, message: str) -> RequestError:
    return RequestError(400, message, "invalid_tools", param)


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(item, level + 1) for item in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level)
    return level


def _tool(entry: Any, index: int) -> Tool:
    param = f"tools[{index}]"
    if not isinstance(entry, dict) or entry.get("type") != "function":
        raise _bad(param, f"{param} must be an object with type 'function'")
    function = entry.get("function")
    if not isinstance(function, dict):
        raise _bad(f"{param}.function", f"{param}.function must be an object")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise _bad(
            f"{param}.function.name",
            f"{param}.function.name must be 1 to 64 letters, digits, underscores or dashes",
        )
    description = function.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        raise _bad(
            f"{param}.function.description",
            f"{param}.function.description must be a string of at most {MAX_DESCRIPTION} "
            "characters",
        )
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise _bad(
            f"{param}.function.parameters",
            f"{param}.function.parameters must be a JSON Schema object with type 'object'",
        )
    properties = parameters.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise _bad(
            f"{param}.function.parameters",
            f"{param}.function.parameters.properties must be an object",
        )
    if _depth(parameters) > MAX_SCHEMA_DEPTH:
        raise _bad(
            f"{param}.function.parameters",
            f"{param}.function.parameters is nested more than {MAX_SCHEMA_DEPTH} levels deep",
        )
    if len(orjson.dumps(entry)) > MAX_TOOL_BYTES:
        raise _bad(param, f"{param} is larger than {MAX_TOOL_BYTES} bytes")
    return Tool(name, description or None, parameters)


def check_tools(body: dict[str, Any]) -> ToolSpec | None:
    """The request's tools and tool choice; None without tools. Raises :class:`RequestError`."""
    raw, choice = body.get("tools"), body.get("tool_choice")
    if raw is None:
        if choice is not None and choice != "none":
            raise _bad("tool_choice", "'tool_choice' needs 'tools'")
        return None
    if not isinstance(raw, list) or not raw:
        raise _bad("tools", "'tools' must be a non-empty list of function definitions")
    if len(raw) > MAX_TOOLS:
        raise _bad("tools", f"at most {MAX_TOOLS} tools are accepted")
    if len(orjson.dumps(raw)) > MAX_TOOLS_BYTES:
        raise _bad("tools", f"the tools are larger than {MAX_TOOLS_BYTES} bytes in all")
    tools = tuple(_tool(entry, index) for index, entry in enumerate(raw))
    names = [tool.name for tool in tools]
    for index, tool_name in enumerate(names):
        if tool_name in names[:index]:
            raise _bad(f"tools[{index}].function.name", f"the tool name '{tool_name}' is repeated")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls", "'parallel_tool_calls' must be true or false")
    if choice is None:
        return ToolSpec(tools, None, None, parallel)
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise _bad("tool_choice", "'tool_choice' must be none, auto, required or a function")
        return ToolSpec(tools, choice, None, parallel)
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not name:
        raise _bad(
            "tool_choice",
            "'tool_choice' must be none, auto, required or "
            '{"type": "function", "function": {"name": ...}}',
        )
    if name not in names:
        raise _bad("tool_choice", f"'tool_choice' names the function '{name}', not in 'tools'")
    return ToolSpec(tools, "function", name, parallel)
