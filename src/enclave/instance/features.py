"""AI features and which model serves each (GitLab's ``Ai::FeatureSetting``).

One row per feature says: disabled, vendored (a shared gateway's model), self-hosted (one of
our model records) or unassigned. Resolving a feature for a request yields everything the
forwarded request needs: model family, endpoint, identifier and the decrypted API key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from enclave.common import wire
from enclave.instance.db.models import FeatureProvider, FeatureSetting
from enclave.instance.secrets import SecretBox, SecretDecryptError

# Associated data bound into every encrypted model API key (see secrets.SecretBox).
API_TOKEN_PURPOSE = "ai_self_hosted_models.api_token"  # noqa: S105 - AEAD label


class Feature(StrEnum):
    """The AI features an administrator can route (GitLab's ``Ai::FeatureSetting#feature``)."""

    CODE_COMPLETIONS = "code_completions"
    CODE_GENERATIONS = "code_generations"
    DUO_CHAT = "duo_chat"
    DUO_CHAT_EXPLAIN_CODE = "duo_chat_explain_code"
    DUO_CHAT_WRITE_TESTS = "duo_chat_write_tests"
    DUO_CHAT_REFACTOR_CODE = "duo_chat_refactor_code"
    DUO_CHAT_FIX_CODE = "duo_chat_fix_code"
    DUO_CHAT_TROUBLESHOOT_JOB = "duo_chat_troubleshoot_job"
    EXPLAIN_VULNERABILITY = "explain_vulnerability"
    RESOLVE_VULNERABILITY = "resolve_vulnerability"
    SUMMARIZE_REVIEW = "summarize_review"
    SUMMARIZE_NEW_MERGE_REQUEST = "summarize_new_merge_request"
    GENERATE_COMMIT_MESSAGE = "generate_commit_message"
    REVIEW_MERGE_REQUEST = "review_merge_request"
    GLAB_ASK_GIT_COMMAND = "glab_ask_git_command"


class ReleaseState(StrEnum):
    GA = "GA"
    BETA = "BETA"
    EXPERIMENTAL = "EXPERIMENTAL"


FEATURE_TITLES: dict[Feature, str] = {
    Feature.CODE_COMPLETIONS: "Code completions",
    Feature.CODE_GENERATIONS: "Code generations",
    Feature.DUO_CHAT: "General chat",
    Feature.DUO_CHAT_EXPLAIN_CODE: "Explain code",
    Feature.DUO_CHAT_WRITE_TESTS: "Write tests",
    Feature.DUO_CHAT_REFACTOR_CODE: "Refactor code",
    Feature.DUO_CHAT_FIX_CODE: "Fix code",
    Feature.DUO_CHAT_TROUBLESHOOT_JOB: "Root cause analysis (troubleshoot job)",
    Feature.EXPLAIN_VULNERABILITY: "Vulnerability explanation",
    Feature.RESOLVE_VULNERABILITY: "Vulnerability resolution",
    Feature.SUMMARIZE_REVIEW: "Code review summary",
    Feature.SUMMARIZE_NEW_MERGE_REQUEST: "Merge request summary",
    Feature.GENERATE_COMMIT_MESSAGE: "Merge commit message generation",
    Feature.REVIEW_MERGE_REQUEST: "Code review",
    Feature.GLAB_ASK_GIT_COMMAND: "GitLab Duo for the CLI",
}

# The unit primitive (token scope) the gateway demands for each feature.
FEATURE_UNIT_PRIMITIVES: dict[Feature, str] = {
    Feature.CODE_COMPLETIONS: wire.UP_COMPLETE_CODE,
    Feature.CODE_GENERATIONS: wire.UP_GENERATE_CODE,
    Feature.DUO_CHAT: wire.UP_DUO_CHAT,
    Feature.DUO_CHAT_EXPLAIN_CODE: "explain_code",
    Feature.DUO_CHAT_WRITE_TESTS: "write_tests",
    Feature.DUO_CHAT_REFACTOR_CODE: "refactor_code",
    Feature.DUO_CHAT_FIX_CODE: "fix_code",
    Feature.DUO_CHAT_TROUBLESHOOT_JOB: "troubleshoot_job",
    Feature.EXPLAIN_VULNERABILITY: "explain_vulnerability",
    Feature.RESOLVE_VULNERABILITY: "resolve_vulnerability",
    Feature.SUMMARIZE_REVIEW: "summarize_review",
    Feature.SUMMARIZE_NEW_MERGE_REQUEST: "summarize_new_merge_request",
    Feature.GENERATE_COMMIT_MESSAGE: "generate_commit_message",
    Feature.REVIEW_MERGE_REQUEST: "review_merge_request",
    Feature.GLAB_ASK_GIT_COMMAND: "glab_ask_git_command",
}

FEATURE_RELEASE_STATES: dict[Feature, ReleaseState] = {
    **dict.fromkeys(Feature, ReleaseState.BETA),
    **dict.fromkeys(
        (
            Feature.CODE_COMPLETIONS,
            Feature.CODE_GENERATIONS,
            Feature.DUO_CHAT,
            Feature.DUO_CHAT_EXPLAIN_CODE,
            Feature.DUO_CHAT_WRITE_TESTS,
            Feature.DUO_CHAT_REFACTOR_CODE,
            Feature.DUO_CHAT_FIX_CODE,
            Feature.REVIEW_MERGE_REQUEST,
        ),
        ReleaseState.GA,
    ),
    Feature.SUMMARIZE_REVIEW: ReleaseState.EXPERIMENTAL,
}

# Chat sub-features without a setting of their own use the duo_chat setting (GitLab's rule).
CHAT_SUB_FEATURES = frozenset(
    {
        Feature.DUO_CHAT_EXPLAIN_CODE,
        Feature.DUO_CHAT_WRITE_TESTS,
        Feature.DUO_CHAT_REFACTOR_CODE,
        Feature.DUO_CHAT_FIX_CODE,
        Feature.DUO_CHAT_TROUBLESHOOT_JOB,
    }
)


def main_feature(feature: Feature) -> Feature | None:
    """The feature whose setting ``feature`` falls back to when it has none of its own."""
    return Feature.DUO_CHAT if feature in CHAT_SUB_FEATURES else None


# Model families (GitLab's ``Ai::SelfHostedModel#model`` enum, plus qwen) with their display
# names and release states (GitLab's constant map; a family it does not list is EXPERIMENTAL).
FAMILY_DISPLAY_NAMES: dict[str, str] = {
    "mistral": "Mistral",
    "mixtral": "Mixtral",
    "codestral": "Codestral",
    "llama3": "Llama 3",
    "codellama": "Code Llama",
    "codegemma": "CodeGemma",
    "deepseekcoder": "DeepSeek Coder",
    "gpt": "GPT",
    "qwen": "Qwen",
    "gemini": "Gemini",
    "claude_3": "Claude 3",
    "general": "General",
}
MODEL_FAMILIES = frozenset(FAMILY_DISPLAY_NAMES)
_GA_FAMILIES = frozenset({"mistral", "codestral", "claude_3", "gpt", "mixtral"})
_BETA_FAMILIES = frozenset(
    {"llama3", "codegemma", "codellama", "deepseekcoder", "general", "gemini"}
)


def family_release_state(family: str) -> ReleaseState:
    if family in _GA_FAMILIES:
        return ReleaseState.GA
    if family in _BETA_FAMILIES:
        return ReleaseState.BETA
    return ReleaseState.EXPERIMENTAL


# Which families may serve which feature (GitLab's feature metadata, newest version; qwen is
# Enclave's addition wherever "general" is allowed). Gemini serves only GitLab's agent platform,
# which Enclave does not have, so no feature here accepts it.
_CODE_FAMILIES = frozenset(
    {
        "codegemma",
        "codellama",
        "codestral",
        "deepseekcoder",
        "mistral",
        "mixtral",
        "llama3",
        "claude_3",
        "gpt",
        "general",
        "qwen",
    }
)
_CHAT_FAMILIES = frozenset(
    {"mistral", "mixtral", "codestral", "claude_3", "gpt", "llama3", "general", "qwen"}
)
_OTHER_FAMILIES = frozenset({"mistral", "mixtral", "claude_3", "gpt", "llama3", "general", "qwen"})
COMPATIBLE_FAMILIES: dict[Feature, frozenset[str]] = {
    **dict.fromkeys(Feature, _OTHER_FAMILIES),
    Feature.CODE_COMPLETIONS: _CODE_FAMILIES,
    Feature.CODE_GENERATIONS: _CODE_FAMILIES,
    **dict.fromkeys(
        (
            Feature.DUO_CHAT,
            Feature.DUO_CHAT_EXPLAIN_CODE,
            Feature.DUO_CHAT_WRITE_TESTS,
            Feature.DUO_CHAT_REFACTOR_CODE,
            Feature.DUO_CHAT_FIX_CODE,
        ),
        _CHAT_FAMILIES,
    ),
}


def incompatibility(feature: Feature, family: str) -> str | None:
    """GitLab's "<Family> is incompatible with the <title> feature" message, or None."""
    if family in COMPATIBLE_FAMILIES[feature]:
        return None
    allowed = ", ".join(sorted(COMPATIBLE_FAMILIES[feature]))
    return (
        f"{FAMILY_DISPLAY_NAMES.get(family, family)} is incompatible with the "
        f"{FEATURE_TITLES[feature]} feature ({feature.value}); compatible model families: "
        f"{allowed}"
    )


class FeatureUnavailableError(Exception):
    """The feature cannot be served as configured (HTTP 403); the message says what to do."""


class FeatureMisconfiguredError(Exception):
    """The feature's model record is broken (e.g. its key cannot be decrypted) (HTTP 500)."""


@dataclass(frozen=True)
class ResolvedModel:
    """The self-hosted model that serves a feature, with its decrypted API key."""

    feature: Feature
    model_id: int
    name: str
    family: str
    provider: str
    endpoint: str | None
    identifier: str | None
    api_key: str | None = field(repr=False)


def _setting_row(session: Session, feature: Feature) -> FeatureSetting | None:
    return session.scalar(
        select(FeatureSetting)
        .options(joinedload(FeatureSetting.self_hosted_model))
        .where(FeatureSetting.feature == feature.value)
    )


def effective_setting(session: Session, feature: Feature) -> tuple[FeatureSetting | None, Feature]:
    """The row that decides ``feature`` and which feature it belongs to.

    A chat sub-feature without a row, or whose row is unassigned, uses the ``duo_chat`` row.
    """
    row = _setting_row(session, feature)
    parent = main_feature(feature)
    if parent is not None and (row is None or row.provider == FeatureProvider.UNASSIGNED):
        return _setting_row(session, parent), parent
    return row, feature


def resolve_feature(session: Session, secret_box: SecretBox, feature: Feature) -> ResolvedModel:
    """The model serving ``feature``; blocking (database), call it from a thread pool."""
    title = FEATURE_TITLES[feature]
    setting, source = effective_setting(session, feature)
    provider = setting.provider if setting is not None else FeatureProvider.UNASSIGNED.value
    via = f" (it uses the {source.value} setting)" if source is not feature else ""
    if provider == FeatureProvider.DISABLED:
        raise FeatureUnavailableError(
            f"{title} is disabled on this instance{via}. Ask an administrator to assign a "
            f"self-hosted model to the {feature.value} feature."
        )
    if provider == FeatureProvider.VENDORED:
        raise FeatureUnavailableError(
            f"{title} is set to a vendored model{via}, which this instance cannot use. Ask an "
            f"administrator to assign a self-hosted model to the {feature.value} feature."
        )
    model = setting.self_hosted_model if setting is not None else None
    if provider != FeatureProvider.SELF_HOSTED or model is None:
        raise FeatureUnavailableError(
            f"{title} has no model assigned. Ask an administrator to assign a self-hosted model "
            f"to the {feature.value} feature (or start the instance with "
            f"ENCLAVE_INSTANCE__EMBEDDED_MODEL_ENDPOINT to use the embedded model)."
        )
    api_key: str | None = None
    if model.api_token_encrypted is not None:
        try:
            api_key = secret_box.decrypt(model.api_token_encrypted, API_TOKEN_PURPOSE)
        except SecretDecryptError as exc:
            raise FeatureMisconfiguredError(
                f"the API key of self-hosted model {model.name!r} cannot be read: {exc}"
            ) from exc
    return ResolvedModel(
        feature=feature,
        model_id=model.id,
        name=model.name,
        family=model.family,
        provider=model.provider,
        endpoint=model.endpoint,
        identifier=model.identifier,
        api_key=api_key,
    )
