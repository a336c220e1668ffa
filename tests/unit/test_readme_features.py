"""The README's feature table says what the code does: features, unit primitives, families."""

from __future__ import annotations

import re
from pathlib import Path

from enclave.common.features import (
    CHAT_SUB_FEATURES,
    COMPATIBLE_FAMILIES,
    FEATURE_PROMPT_IDS,
    FEATURE_UNIT_PRIMITIVES,
    Feature,
)

README = Path(__file__).parents[2] / "README.md"
ROW = re.compile(r"^\| `(?P<feature>[a-z_]+)` \(")


def table_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in README.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match["feature"]] = [cell.strip() for cell in line.strip("|").split("|")]
    return rows


def test_every_feature_has_one_row() -> None:
    assert set(table_rows()) == {feature.value for feature in Feature}


def test_unit_primitives_and_families_match_the_catalogue() -> None:
    rows = table_rows()
    for feature in Feature:
        _, instance, gateway, primitive, families = rows[feature.value]
        expected = f"`{FEATURE_UNIT_PRIMITIVES[feature]}`"
        if feature in CHAT_SUB_FEATURES:
            expected += " + `duo_chat`"
        assert primitive == expected, feature
        assert families == ", ".join(sorted(COMPATIBLE_FAMILIES[feature])), feature
        assert instance.startswith(("`POST /api/v4/", "chat `/")), feature
        # Every prompt-registry feature names its gateway prompt.
        prompt_id = FEATURE_PROMPT_IDS[feature.value]
        if not prompt_id.startswith(("code_suggestions/", "chat/agent")):
            assert f"/v1/prompts/{prompt_id.replace('/', '%2F')}" in gateway, feature
