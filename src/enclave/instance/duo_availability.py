"""Which Duo features a user can use from an editor, from the instance's real state.

GitLab's editor clients ask GraphQL ``currentUser { duoCodeSuggestionsAvailable
duoChatAvailable duoChatAvailableFeatures }`` before they offer code suggestions or chat. Here
a feature is available when both hold:

* the caller's token may use AI features (scope ``api`` or ``ai_features``, as every AI
  endpoint demands), and
* the feature's setting (or, for a chat sub-feature left unassigned, ``duo_chat``'s) names a
  self-hosted model, or vendored while a vendored AI gateway is configured: a disabled or
  unassigned feature (or vendored without that gateway) would only answer 403.

``duoChatAvailableFeatures`` lists the chat sub-features served (``duo_chat_explain_code``, …)
and, when chat is served, the additional-context kinds Enclave's chat puts into the model's
context (``include_file_context``, …): GitLab's clients check the latter before they offer to
attach files, snippets and the like. Issue and merge request context are not listed: Enclave has
no issues or merge requests to read them from.

``codeSuggestionsContexts`` (asked from 17.9 on) lists the code-suggestion context sources the
client may gather and send: open tabs and imports (they arrive as ``context`` items, which
Enclave forwards). Not ``repository_xray``, which GitLab reads from its own repository data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy.orm import Session

from enclave.instance.db.models import FeatureProvider
from enclave.instance.features import CHAT_SUB_FEATURES, Feature, effective_setting
from enclave.instance.pats import AI_SCOPES, Principal

CODE_SUGGESTION_FEATURES: Final = (Feature.CODE_COMPLETIONS, Feature.CODE_GENERATIONS)

# Additional-context kinds the chat honours (their content travels in the request itself).
CHAT_CONTEXT_FEATURES: Final = (
    "include_file_context",
    "include_snippet_context",
    "include_dependency_context",
    "include_local_git_context",
    "include_terminal_context",
    "include_repository_context",
    "include_directory_context",
)


# Code suggestion context sources the client resolves itself (GitLab's names).
CODE_SUGGESTIONS_CONTEXTS: Final = ("open_tabs", "imports")


@dataclass(frozen=True)
class DuoAvailability:
    code_suggestions: bool
    chat: bool
    chat_features: tuple[str, ...]

    @property
    def code_suggestions_contexts(self) -> tuple[str, ...]:
        return CODE_SUGGESTIONS_CONTEXTS if self.code_suggestions else ()

    @property
    def any(self) -> bool:
        return self.code_suggestions or self.chat


NOTHING: Final = DuoAvailability(False, False, ())


def served(session: Session, feature: Feature, vendored_gateway: bool = False) -> bool:
    """Whether a request for ``feature`` would reach a model (not 403 for its setting)."""
    row, _ = effective_setting(session, feature)
    if row is not None and row.provider == FeatureProvider.VENDORED:
        return vendored_gateway
    return (
        row is not None
        and row.provider == FeatureProvider.SELF_HOSTED
        and row.self_hosted_model is not None
    )


def may_use_ai(principal: Principal) -> bool:
    return not AI_SCOPES.isdisjoint(principal.scopes)


def availability(
    session: Session, principal: Principal, vendored_gateway: bool = False
) -> DuoAvailability:
    """What ``principal`` can use now; blocking (database), call it from a thread pool.
    ``vendored_gateway``: whether a vendored AI gateway serves the vendored features."""
    if not may_use_ai(principal):
        return NOTHING
    code = any(served(session, f, vendored_gateway) for f in CODE_SUGGESTION_FEATURES)
    chat = served(session, Feature.DUO_CHAT, vendored_gateway)
    features = [f.value for f in sorted(CHAT_SUB_FEATURES) if served(session, f, vendored_gateway)]
    if chat:
        features.extend(CHAT_CONTEXT_FEATURES)
    return DuoAvailability(code, chat, tuple(features))
