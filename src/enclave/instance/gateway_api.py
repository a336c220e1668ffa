"""Which AI gateway API the instance speaks: GitLab 18's (default) or GitLab 17's.

``instance.ai_gateway_api`` (``ENCLAVE_INSTANCE__AI_GATEWAY_API``) picks it. The differences,
all on the instance → gateway hop (Enclave's gateway understands both):

================  ======================================  =====================================
                  gitlab18 (default)                      gitlab17
================  ======================================  =====================================
chat              ``/v2/chat/agent`` (ndjson), scopes     ``/v1/chat/agent`` (prompt_components),
                  ``duo_classic_chat`` + ``duo_chat``     scope ``duo_chat``
chat slash        ``/v1/prompts/chat%2F<task>`` with the  ``/v1/chat/<task>``
commands          current inputs
prompt_version    ``^2.0.0`` for the MR and review        ``^1.0.0`` everywhere
                  summaries, else ``^1.0.0``
code suggestions  ``complete_code`` / ``generate_code``   also the legacy ``code_suggestions``
X-Gitlab-Version  18.11.0-enclave                         17.9.0-enclave
X-Gitlab-Unit-    the feature's unit primitive            not sent
Primitive
================  ======================================  =====================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from enclave.common import wire

if TYPE_CHECKING:
    from enclave.instance.context import InstanceContext


def api_of(ctx: InstanceContext) -> str:
    return ctx.settings.instance.ai_gateway_api


def is_gitlab18(ctx: InstanceContext) -> bool:
    return api_of(ctx) == wire.GITLAB18


def version_header(ctx: InstanceContext) -> str:
    return wire.INSTANCE_VERSION_18 if is_gitlab18(ctx) else wire.INSTANCE_VERSION


def unit_primitive_header(ctx: InstanceContext, unit_primitive: str) -> str | None:
    """``X-Gitlab-Unit-Primitive``, which GitLab 18 instances send (none for GitLab 17)."""
    return unit_primitive if is_gitlab18(ctx) else None


def prompt_version(ctx: InstanceContext, prompt_id: str) -> str:
    if is_gitlab18(ctx):
        return wire.GITLAB18_PROMPT_VERSIONS.get(prompt_id, "^1.0.0")
    return "^1.0.0"


def code_suggestion_scopes(ctx: InstanceContext, scopes: Iterable[str]) -> list[str]:
    """GitLab 17's gateways wanted the legacy ``code_suggestions`` primitive too."""
    granted = list(scopes)
    if not is_gitlab18(ctx):
        granted.append(wire.UP_CODE_SUGGESTIONS)
    return granted


def chat_scopes(ctx: InstanceContext) -> set[str]:
    """What Duo Chat's token carries (GitLab 18: chat/react needs ``duo_classic_chat``)."""
    if is_gitlab18(ctx):
        return {wire.UP_DUO_CLASSIC_CHAT, wire.UP_DUO_CHAT}
    return {wire.UP_DUO_CHAT}
