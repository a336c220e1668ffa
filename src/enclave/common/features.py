"""The AI feature catalogue shared by the instance and the gateway.

Which features exist (GitLab's ``Ai::FeatureSetting#feature``) and, in one
:class:`FeatureSpec` record each (:data:`FEATURES`), everything about them: title, the unit
primitive (token scope) it needs, the prompt that serves it, the model families that may serve
it (GitLab's compatibility matrix), its release state and whether it is a chat sub-feature. The
other tables here are views of those records. Plain data: the instance uses it to validate
settings, the gateway to describe itself (``GET /v1/models/definitions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from enclave.common import wire


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


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Everything Enclave knows about one feature: adding a feature is adding one record."""

    feature: Feature
    title: str
    unit_primitive: str  # the token scope the gateway demands for it
    prompt_id: str  # the gateway prompt-registry id that serves it (GitLab's ids)
    families: frozenset[str]  # the model families that may serve it (GitLab's matrix)
    release_state: ReleaseState = ReleaseState.BETA
    chat_sub_feature: bool = False  # without a setting of its own it uses duo_chat's


def _spec(
    feature: Feature,
    title: str,
    unit_primitive: str,
    prompt_id: str,
    families: frozenset[str],
    release_state: ReleaseState = ReleaseState.BETA,
    *,
    chat_sub_feature: bool = False,
) -> FeatureSpec:
    return FeatureSpec(
        feature, title, unit_primitive, prompt_id, families, release_state, chat_sub_feature
    )


_GA, _EXPERIMENTAL = ReleaseState.GA, ReleaseState.EXPERIMENTAL
FEATURES: Final[dict[Feature, FeatureSpec]] = {
    spec.feature: spec
    for spec in (
        _spec(
            Feature.CODE_COMPLETIONS,
            "Code completions",
            wire.UP_COMPLETE_CODE,
            "code_suggestions/completions",
            _CODE_FAMILIES,
            _GA,
        ),
        _spec(
            Feature.CODE_GENERATIONS,
            "Code generations",
            wire.UP_GENERATE_CODE,
            "code_suggestions/generations",
            _CODE_FAMILIES,
            _GA,
        ),
        _spec(
            Feature.DUO_CHAT, "General chat", wire.UP_DUO_CHAT, "chat/agent", _CHAT_FAMILIES, _GA
        ),
        _spec(
            Feature.DUO_CHAT_EXPLAIN_CODE,
            "Explain code",
            "explain_code",
            "chat/explain_code",
            _CHAT_FAMILIES,
            _GA,
            chat_sub_feature=True,
        ),
        _spec(
            Feature.DUO_CHAT_WRITE_TESTS,
            "Write tests",
            "write_tests",
            "chat/write_tests",
            _CHAT_FAMILIES,
            _GA,
            chat_sub_feature=True,
        ),
        _spec(
            Feature.DUO_CHAT_REFACTOR_CODE,
            "Refactor code",
            "refactor_code",
            "chat/refactor_code",
            _CHAT_FAMILIES,
            _GA,
            chat_sub_feature=True,
        ),
        _spec(
            Feature.DUO_CHAT_FIX_CODE,
            "Fix code",
            "fix_code",
            "chat/fix_code",
            _CHAT_FAMILIES,
            _GA,
            chat_sub_feature=True,
        ),
        _spec(
            Feature.DUO_CHAT_TROUBLESHOOT_JOB,
            "Root cause analysis (troubleshoot job)",
            "troubleshoot_job",
            "chat/troubleshoot_job",
            _OTHER_FAMILIES,
            chat_sub_feature=True,
        ),
        _spec(
            Feature.EXPLAIN_VULNERABILITY,
            "Vulnerability explanation",
            "explain_vulnerability",
            "chat/explain_vulnerability",
            _OTHER_FAMILIES,
        ),
        _spec(
            Feature.RESOLVE_VULNERABILITY,
            "Vulnerability resolution",
            "resolve_vulnerability",
            "resolve_vulnerability",
            _OTHER_FAMILIES,
        ),
        _spec(
            Feature.SUMMARIZE_REVIEW,
            "Code review summary",
            "summarize_review",
            "summarize_review",
            _OTHER_FAMILIES,
            _EXPERIMENTAL,
        ),
        _spec(
            Feature.SUMMARIZE_NEW_MERGE_REQUEST,
            "Merge request summary",
            "summarize_new_merge_request",
            "summarize_new_merge_request",
            _OTHER_FAMILIES,
        ),
        _spec(
            Feature.GENERATE_COMMIT_MESSAGE,
            "Merge commit message generation",
            "generate_commit_message",
            "generate_commit_message",
            _OTHER_FAMILIES,
        ),
        _spec(
            Feature.REVIEW_MERGE_REQUEST,
            "Code review",
            "review_merge_request",
            "review_merge_request",
            _OTHER_FAMILIES,
            _GA,
        ),
        _spec(
            Feature.GLAB_ASK_GIT_COMMAND,
            "GitLab Duo for the CLI",
            "glab_ask_git_command",
            "glab_ask_git_command",
            _OTHER_FAMILIES,
        ),
    )
}
assert set(FEATURES) == set(Feature), "every feature has exactly one record"

# Views of the records, by what callers look up.
FEATURE_TITLES: Final = {f: spec.title for f, spec in FEATURES.items()}
FEATURE_UNIT_PRIMITIVES: Final = {f: spec.unit_primitive for f, spec in FEATURES.items()}
FEATURE_RELEASE_STATES: Final = {f: spec.release_state for f, spec in FEATURES.items()}
FEATURE_PROMPT_IDS: Final = {f.value: spec.prompt_id for f, spec in FEATURES.items()}
COMPATIBLE_FAMILIES: Final = {f: spec.families for f, spec in FEATURES.items()}
CHAT_SUB_FEATURES: Final = frozenset(f for f, spec in FEATURES.items() if spec.chat_sub_feature)


def main_feature(feature: Feature) -> Feature | None:
    """The feature whose setting ``feature`` falls back to when it has none of its own."""
    return Feature.DUO_CHAT if feature in CHAT_SUB_FEATURES else None


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


# The families GitLab's own AI gateway (GitLab 18, 2026) serves on /v2/code/completions and
# /v2/code/generations for self-hosted (litellm) models; it refuses the others with 422,
# ``general`` among them, which Enclave's gateway serves. ``enclave doctor`` reports a feature
# whose family GitLab's gateway would refuse when the instance points at one.
_GITLAB_GATEWAY_CODE_FAMILY_SET: Final = frozenset(
    {
        "claude_3",
        "codegemma",
        "codellama",
        "codestral",
        "deepseekcoder",
        "gpt",
        "llama3",
        "mistral",
        "mixtral",
    }
)
GITLAB_GATEWAY_CODE_FAMILIES: dict[Feature, frozenset[str]] = {
    Feature.CODE_COMPLETIONS: _GITLAB_GATEWAY_CODE_FAMILY_SET,
    Feature.CODE_GENERATIONS: _GITLAB_GATEWAY_CODE_FAMILY_SET,
}
