"""The feature catalogue: titles, unit primitives, release states, the family matrix."""

from __future__ import annotations

import pytest

from enclave.instance.features import (
    CHAT_SUB_FEATURES,
    COMPATIBLE_FAMILIES,
    FEATURE_RELEASE_STATES,
    FEATURE_TITLES,
    FEATURE_UNIT_PRIMITIVES,
    MODEL_FAMILIES,
    Feature,
    ReleaseState,
    family_release_state,
    incompatibility,
    main_feature,
)


def test_every_feature_is_described() -> None:
    assert len(Feature) == 15
    for feature in Feature:
        assert FEATURE_TITLES[feature]
        assert FEATURE_UNIT_PRIMITIVES[feature]
        assert FEATURE_RELEASE_STATES[feature] in ReleaseState
        assert COMPATIBLE_FAMILIES[feature] <= MODEL_FAMILIES


def test_the_issue_lists_these_families() -> None:
    assert {
        "mistral", "mixtral", "codestral", "llama3", "codellama", "codegemma", "deepseekcoder",
        "gpt", "qwen", "gemini", "claude_3", "general",
    } == MODEL_FAMILIES  # fmt: skip


@pytest.mark.parametrize(
    ("family", "state"),
    [
        ("mistral", ReleaseState.GA),
        ("codestral", ReleaseState.GA),
        ("claude_3", ReleaseState.GA),
        ("gpt", ReleaseState.GA),
        ("mixtral", ReleaseState.GA),
        ("llama3", ReleaseState.BETA),
        ("general", ReleaseState.BETA),
        ("gemini", ReleaseState.BETA),
        ("qwen", ReleaseState.EXPERIMENTAL),
    ],
)
def test_family_release_state(family: str, state: ReleaseState) -> None:
    assert family_release_state(family) is state


def test_matrix_follows_gitlab() -> None:
    assert incompatibility(Feature.CODE_COMPLETIONS, "codellama") is None
    assert incompatibility(Feature.DUO_CHAT, "codellama") is not None
    assert incompatibility(Feature.DUO_CHAT_EXPLAIN_CODE, "codestral") is None
    assert incompatibility(Feature.DUO_CHAT_TROUBLESHOOT_JOB, "codestral") is not None
    assert incompatibility(Feature.REVIEW_MERGE_REQUEST, "deepseekcoder") is not None
    assert all(incompatibility(f, "gemini") is not None for f in Feature)
    assert all(incompatibility(f, "general") is None for f in Feature)
    assert incompatibility(Feature.DUO_CHAT, "codegemma") == (
        "CodeGemma is incompatible with the General chat feature (duo_chat); compatible model "
        "families: claude_3, codestral, general, gpt, llama3, mistral, mixtral, qwen"
    )


def test_chat_sub_features_fall_back_to_duo_chat() -> None:
    assert {
        Feature.DUO_CHAT_EXPLAIN_CODE,
        Feature.DUO_CHAT_WRITE_TESTS,
        Feature.DUO_CHAT_REFACTOR_CODE,
        Feature.DUO_CHAT_FIX_CODE,
        Feature.DUO_CHAT_TROUBLESHOOT_JOB,
    } == CHAT_SUB_FEATURES
    assert all(main_feature(f) is Feature.DUO_CHAT for f in CHAT_SUB_FEATURES)
    assert main_feature(Feature.CODE_COMPLETIONS) is None
    assert main_feature(Feature.EXPLAIN_VULNERABILITY) is None
