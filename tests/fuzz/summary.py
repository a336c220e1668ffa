"""Counts of fuzz inputs per target, for the summary lines (tests/fuzz/conftest.py)."""

from __future__ import annotations

from collections import Counter

EXAMPLES: Counter[str] = Counter()


def count_example(target: str, n: int = 1) -> None:
    EXAMPLES[target] += n
