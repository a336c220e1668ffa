"""Completions stop where they leave the cursor's block, streamed or whole."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from enclave.gateway.prompts.postprocess import (
    _BLOCK_OPENERS,
    BlockEndFilter,
    FenceStripper,
    FilterChain,
    _block_indent,
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
    # The closing brace's line ends the answer, even when deeper lines follow it.
    ("function f() {\n  ", "", "return 1;\n}\n  more();\n", "return 1;\n}\n"),
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


class _CharByCharBlockEnd(BlockEndFilter):
    """The filter's first implementation, one Python step per character: the reference the
    newline-jumping ``feed`` must agree with."""

    def feed(self, delta: str) -> str:
        out: list[str] = []
        start = 0
        for index, char in enumerate(delta):
            state = self._state
            if state == "done":
                out.append(delta[start:index])
                return "".join(out)
            if state in ("first", "in_line", "closing"):
                if char == "\n":
                    if state == "closing":
                        out.append(delta[start : index + 1])
                        self._state = "done"
                        return "".join(out)
                    self._state = "line_start"
                    out.append(delta[start : index + 1])
                    start = index + 1
                continue
            self._held += char
            start = index + 1
            if char.isspace():
                continue
            indent = len(self._held.rsplit("\n", 1)[-1].expandtabs(4)) - len(
                self._held.rsplit("\n", 1)[-1].expandtabs(4).lstrip(" ")
            )
            if indent >= self._min_indent:
                self._state = "in_line"
            elif char in ("}", ")", "]") and char != self._suffix_head:
                self._state = "closing"
            else:
                self._state = "done"
                self._held = ""
                return "".join(out)
            out.append(self._held)
            self._held = ""
        if self._state != "line_start":
            out.append(delta[start:])
        return "".join(out)


@given(
    answer=st.text(alphabet=" \t\nab})]:{(", max_size=80),
    prefix=st.sampled_from(["def f():\n    ", "x = 1\n", "if a {\n  b(", "", "  y\n", "\tz\n\t"]),
    suffix=st.sampled_from(["", "\n}", "x", ")"]),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=8),
)
@example(answer="a\n}\n    b\n", prefix="def f():\n    ", suffix="", cuts=[3, 4])
def test_every_chunk_passes_as_the_char_by_char_filter_passes_it(
    answer: str, prefix: str, suffix: str, cuts: list[int]
) -> None:
    bounds = sorted({0, len(answer), *(min(cut, len(answer)) for cut in cuts)})
    fast, reference = BlockEndFilter(prefix, suffix), _CharByCharBlockEnd(prefix, suffix)
    for a, b in itertools.pairwise(bounds):
        assert fast.feed(answer[a:b]) == reference.feed(answer[a:b])
    assert fast.flush() == reference.flush()


def _indent_by_split(prefix: str) -> int:
    """The block's indentation as first written (split the prefix into lines): the reference
    for the backwards search."""
    lines = prefix.split("\n")
    cursor_line = lines[-1]
    if cursor_line.strip():
        return len(cursor_line.expandtabs(4)) - len(cursor_line.expandtabs(4).lstrip(" "))
    above = next((line for line in reversed(lines[:-1]) if line.strip()), "")
    width = len(above.expandtabs(4)) - len(above.expandtabs(4).lstrip(" "))
    return width + (1 if above.rstrip().endswith(_BLOCK_OPENERS) else 0)


@given(prefix=st.text(alphabet=" \t\n\r\x0bab:{(=>", max_size=60))
@example(prefix="")
@example(prefix="\n")
@example(prefix="a\n")
@example(prefix="\n\nx\n  \n")
@example(prefix="  if a:\n\n \t\n")
def test_block_indent_is_the_one_found_by_splitting_into_lines(prefix: str) -> None:
    assert _block_indent(prefix) == _indent_by_split(prefix)
    assert BlockEndFilter(prefix)._min_indent == _indent_by_split(prefix)
