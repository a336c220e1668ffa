"""Completions stop where they leave the cursor's block, streamed or whole."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave.gateway.prompts.postprocess import (
    BlockEndFilter,
    FenceStripper,
    FilterChain,
    stop_at_block_end,
)

CASES = [
    # Python: the body of add, then the model goes on with another function.
    (
        "def add(a, b):\n    ",
        "",
        "return a + b\n\ndef sub(a, b):\n    return a - b\n",
        "return a + b\n",
    ),
    # Cursor on an empty line below a block opener.
    (
        "def add(a, b):\n",
        "",
        "    total = a + b\n    return total\n\n\nprint(add(1, 2))\n",
        "    total = a + b\n    return total\n",
    ),
    # Code on the cursor's line: lines as deep as it are kept, shallower ones end it.
    (
        "def f():\n    x = compute(",
        "",
        "a, b)\n    return x\n\nclass G:\n    pass\n",
        "a, b)\n    return x\n",
    ),
    # Brace language: the closing brace is kept when the code after the cursor lacks it...
    (
        "function f() {\n  ",
        "",
        "return 1;\n}\n\nfunction g() {\n  return 2;\n}\n",
        "return 1;\n}\n",
    ),
    # ... and dropped when the code after the cursor already closes the block.
    (
        "function f() {\n  ",
        "\n}\n",
        "return 1;\n}\n\nfunction g() {\n",
        "return 1;\n",
    ),
    # Top level: nothing to leave, nothing cut.
    ("import os\n", "", "import sys\n\nx = 1\n", "import sys\n\nx = 1\n"),
    # One line, no newline: untouched.
    ("    ", "", "return a + b", "return a + b"),
    # Tabs count as four columns.
    ("def f():\n\t", "", "return 1\nx = 2\n", "return 1\n"),
    # Trailing blank lines inside the block are kept.
    ("def f():\n    ", "", "pass\n\n", "pass\n\n"),
]


@pytest.mark.parametrize(("prefix", "suffix", "answer", "expected"), CASES)
def test_stop_at_block_end(prefix: str, suffix: str, answer: str, expected: str) -> None:
    assert stop_at_block_end(answer, prefix, suffix) == expected


@pytest.mark.parametrize(("prefix", "suffix", "answer", "expected"), CASES)
def test_streamed_in_single_characters_matches_whole(
    prefix: str, suffix: str, answer: str, expected: str
) -> None:
    block = BlockEndFilter(prefix, suffix)
    out = "".join(block.feed(char) for char in answer) + block.flush()
    assert out == expected


def test_mid_line_chunks_pass_through_as_they_come() -> None:
    block = BlockEndFilter("def f():\n    ", "")
    assert block.feed("return") == "return"
    assert block.feed(" a +") == " a +"
    assert block.feed(" b\n") == " b\n"
    assert block.feed("    ") == ""  # indentation alone: still undecided
    assert block.feed("x") == "    x"
    assert block.feed("\ndef g") == "\n"
    assert block.feed("():\n") == ""
    assert block.flush() == ""


@given(
    answer=st.text(alphabet=" \t\nab}:{", max_size=60),
    prefix=st.sampled_from(["def f():\n    ", "x = 1\n", "if a {\n  b(", "", "  y\n"]),
    suffix=st.sampled_from(["", "\n}", "x"]),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
)
def test_any_chunking_gives_the_same_text(
    answer: str, prefix: str, suffix: str, cuts: list[int]
) -> None:
    bounds = sorted({0, len(answer), *(min(cut, len(answer)) for cut in cuts)})
    block = BlockEndFilter(prefix, suffix)
    out = "".join(block.feed(answer[a:b]) for a, b in itertools.pairwise(bounds))
    out += block.flush()
    assert out == stop_at_block_end(answer, prefix, suffix)
    assert answer.startswith(out)


def test_filter_chain_strips_fences_then_cuts_the_block() -> None:
    chain = FilterChain(FenceStripper(), BlockEndFilter("def f():\n    ", ""))
    answer = "```python\nreturn 1\ndef g():\n```\n"
    out = "".join(chain.feed(char) for char in answer) + chain.flush()
    assert out == "return 1\n"
