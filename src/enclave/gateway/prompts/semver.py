"""Semantic versions of prompt definitions and the constraints clients send for them.

GitLab's clients ask for a prompt with a constraint such as ``^1.0.0``, ``~1.2.0``, ``1.0.0``
or ``>=1.0.0`` (poetry/npm syntax). Neither ``packaging`` (PEP 440, no caret) nor any other
locked dependency parses these, so this module does, for the small subset in use: a
comma- or space-separated conjunction of ``^ ~ = == >= > <= <`` or bare versions, each of one
to three numeric parts. Pre-releases (``1.1.0-dev``) are only chosen when asked for exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

_VERSION: Final = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_PARTIAL: Final = re.compile(r"^(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?$")
_TERM: Final = re.compile(r"^(\^|~|==|=|>=|<=|>|<)?\s*(.+)$")
MAX_CONSTRAINT_CHARS: Final = 100


class InvalidVersion(ValueError):
    """A version or constraint that is not in the supported syntax."""


def _prerelease_key(pre: str) -> tuple[tuple[int, int | str], ...]:
    # SemVer §11: numeric identifiers sort before alphanumeric ones, each in its own order.
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in pre.split("."))


@dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.match(text)
        if match is None:
            raise InvalidVersion(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        major, minor, patch, pre = match.groups()
        return cls(int(major), int(minor), int(patch), pre or "")

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def sort_key(self) -> tuple[tuple[int, int, int], int, tuple[tuple[int, int | str], ...]]:
        # A pre-release sorts before its release: 1.0.0-dev < 1.0.0.
        if self.prerelease:
            return (self.release, 0, _prerelease_key(self.prerelease))
        return (self.release, 1, ())

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{self.prerelease}" if self.prerelease else core


Predicate = Callable[[Version], bool]


def _bounds(lower: tuple[int, int, int], upper: tuple[int, int, int]) -> Predicate:
    return lambda v: lower <= v.release < upper and not v.prerelease


def _term(op: str, text: str) -> Predicate:
    if "-" in text:
        # Only an exact pre-release is supported: "1.1.0-dev" or "=1.1.0-dev".
        if op not in ("", "=", "=="):
            raise InvalidVersion(f"a pre-release is only accepted as an exact version: {text!r}")
        exact = Version.parse(text)
        return lambda v: v == exact
    match = _PARTIAL.match(text)
    if match is None:
        raise InvalidVersion(f"{text!r} is not a version")
    parts = [int(p) for p in match.groups() if p is not None]
    given = len(parts)
    major, minor, patch = (*parts, 0, 0)[:3]
    low = (major, minor, patch)
    if op == "^":
        # Compatible: the left-most non-zero part may not change (npm/poetry rules).
        if major > 0 or given == 1:
            return _bounds(low, (major + 1, 0, 0))
        if minor > 0 or given == 2:
            return _bounds(low, (0, minor + 1, 0))
        return _bounds(low, (0, 0, patch + 1))
    if op == "~":
        return _bounds(low, (major + 1, 0, 0) if given == 1 else (major, minor + 1, 0))
    if op in ("", "=", "=="):
        if given == 3:
            return lambda v: v.release == low and not v.prerelease
        # "1" or "1.2" mean "any 1.x" / "any 1.2.x", like poetry's wildcard-free partials.
        return _term("^" if given == 1 else "~", text)
    comparisons: dict[str, Callable[[tuple[int, int, int]], bool]] = {
        ">=": lambda r: r >= low,
        ">": lambda r: r > low,
        "<=": lambda r: r <= low,
        "<": lambda r: r < low,
    }
    compare = comparisons[op]
    return lambda v: compare(v.release) and not v.prerelease


@dataclass(frozen=True, slots=True)
class Constraint:
    """A parsed constraint; ``None`` text means "the newest release"."""

    text: str | None
    _terms: tuple[Predicate, ...]

    def allows(self, version: Version) -> bool:
        if not self._terms:
            return not version.prerelease
        return all(term(version) for term in self._terms)

    def best(self, versions: Iterable[Version]) -> Version | None:
        """The highest allowed version, or None."""
        allowed = [v for v in versions if self.allows(v)]
        return max(allowed, key=Version.sort_key) if allowed else None


@lru_cache(maxsize=256)
def parse_constraint(text: str | None) -> Constraint:
    """Parse once per distinct string (clients send a handful of constant constraints)."""
    if text is None or not text.strip():
        return Constraint(None, ())
    if len(text) > MAX_CONSTRAINT_CHARS:
        raise InvalidVersion("the version constraint is too long")
    # Join operators to their versions ("> = 1.0" is not accepted, ">= 1.0" is).
    normalized = re.sub(r"(\^|~|==|=|>=|<=|>|<)\s+", r"\1", text.strip())
    terms: list[Predicate] = []
    for raw in re.split(r"[,\s]+", normalized):
        if not raw:
            continue
        match = _TERM.match(raw)
        if match is None:  # pragma: no cover - the pattern matches any non-empty string
            raise InvalidVersion(f"{raw!r} is not a version constraint")
        terms.append(_term(match.group(1) or "", match.group(2)))
    if not terms:
        raise InvalidVersion(f"{text!r} is not a version constraint")
    return Constraint(text, tuple(terms))
