"""Golden files: every (feature, family) pair the instance may route, rendered with fixed inputs.

One readable file per pair under ``golden/`` (the messages with their roles, or the raw prompt,
and the model parameters), so a change to any prompt shows up in review as a text diff.
``ENCLAVE_UPDATE_GOLDEN=1 pytest tests/unit/gateway/prompts/test_golden.py`` rewrites them.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Final

import pytest

from enclave.common.features import COMPATIBLE_FAMILIES, FEATURE_PROMPT_IDS
from enclave.gateway.prompts.registry import Prompt, Rendered, get_registry

GOLDEN_DIR: Final = Path(__file__).with_name("golden")
UPDATE: Final = os.environ.get("ENCLAVE_UPDATE_GOLDEN") == "1"
DAY: Final = dt.date(2026, 1, 2)

_CODE = "def total(items):\n    return sum(i.price for i in items)\n"
# Sample values per input name; optional ones are given too, so every branch shows.
SAMPLES: Final[dict[str, str]] = {
    "prefix": "import math\n\ndef area(r):\n    ",
    "suffix": "\n\nprint(area(2))\n",
    "file_name": "shapes.py",
    "language": "python",
    "instruction": "",
    "input": "What does this do?",
    "selected_text": _CODE,
    "file_content": f"from shop import Item\n\n{_CODE}",
    "language_info": "The code is written in Python.",
    "file_content_reuse": "Reuse the helpers the file already defines.",
    "question": "How do I revert a commit?",
    "previous_answer": "Use git revert.",
    "title": "SQL injection",
    "identifiers": "CWE-89",
    "vulnerability_description": "User input reaches an SQL query unescaped.",
    "vulnerability_info": "The vulnerable code is in db.py: cur.execute(q % name)",
    "filename": "db.py",
    "name": "SQL injection",
    "source_code": "import db\n\ncur.execute(q % name)\n",
    "vulnerable_code": "cur.execute(q % name)",
    "draft_notes_content": "Rename x to count.\nAdd a test for the empty list.",
    "extracted_diff": "+def area(r):\n+    return math.pi * r * r\n",
    "diff": "+def area(r):\n+    return math.pi * r * r\n",
    "diff_lines": '<line type="added" old_line="" new_line="3">def area(r):</line>',
    "mr_title": "Add area()",
    "mr_description": "Needed for the shapes report.",
    "full_content_section": "",
    "full_file_intro": "",
    "custom_instructions_section": "",
    "prompt": "undo my last commit but keep the changes",
    "notes_content": "Alice: ship it.\nBob: needs a test first.",
}

PAIRS: Final = sorted(
    (feature.value, family)
    for feature, families in COMPATIBLE_FAMILIES.items()
    for family in families
)


def golden_text(prompt: Prompt, rendered: Rendered) -> str:
    """Readable, stable text: the resolved file, the parameters, then the prompt itself."""
    params = rendered.params
    lines = [
        f"# prompt: {prompt.prompt_id} (definitions/{prompt.prompt_id}/{prompt.family}/"
        f"{prompt.version}.yml)",
        f"api: {rendered.api}",
        f"max_tokens: {params.max_tokens}",
        f"temperature: {params.temperature}",
        f"top_p: {params.top_p}",
        f"stop: {list(params.stop)!r}",
    ]
    if rendered.prompt is not None:
        lines += ["", "=== prompt", rendered.prompt]
    for message in rendered.messages:
        lines += ["", f"=== {message.role}", message.content]
    return "\n".join(lines) + "\n"


def render_pair(feature: str, family: str) -> str:
    prompt = get_registry().resolve(FEATURE_PROMPT_IDS[feature], family)
    inputs = {name: SAMPLES[name] for name in prompt.definition.inputs}
    return golden_text(prompt, prompt.render(inputs, DAY))


@pytest.mark.parametrize(("feature", "family"), PAIRS)
def test_golden(feature: str, family: str) -> None:
    path = GOLDEN_DIR / f"{feature}__{family}.txt"
    text = render_pair(feature, family)
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path.name} is missing: run with ENCLAVE_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


def test_no_stale_golden_files() -> None:
    expected = {f"{feature}__{family}.txt" for feature, family in PAIRS}
    assert {path.name for path in GOLDEN_DIR.glob("*.txt")} == expected
