"""Counts of fuzz inputs per target, for the summary lines (tests/fuzz/conftest.py)."""

from __future__ import annotations

from collections import Counter

EXAMPLES: Counter[str] = Counter()
# Per API target: answers by status class ("2xx", "4xx", "502"), to show the cases reached
# the handlers and not only the validation in front of them.
STATUSES: dict[str, Counter[str]] = {}


def count_example(target: str, n: int = 1) -> None:
    EXAMPLES[target] += n


def count_status(target: str, status: int) -> None:
    key = f"{status // 100}xx" if status < 500 else str(status)
    STATUSES.setdefault(target, Counter())[key] += 1


def status_text(target: str) -> str:
    counts = STATUSES.get(target)
    if not counts:
        return ""
    return " (" + ", ".join(f"{key}: {n}" for key, n in sorted(counts.items())) + ")"
