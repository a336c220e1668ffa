"""The AI feature catalogue shared by the instance and the gateway.

Which features exist (GitLab's ``Ai::FeatureSetting#feature``), the unit primitive (token
scope) each one needs, their release states, the model families GitLab knows, and which
families may serve which feature (GitLab's compatibility matrix). Plain data: the instance
uses it to validate settings, the gateway to describe itself (``GET /v1/models/definitions``).
"""

from __future__ import annotations

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
