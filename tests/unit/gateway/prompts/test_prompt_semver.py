"""Version constraints as GitLab's clients send them (``^1.0.0``, ``~1.2.0``, ``>=1.0.0`` ...)."""

from __future__ import annotations

import pytest

from enclave.gateway.prompts.semver import InvalidVersion, Version, parse_constraint

VERSIONS = [
    Version.parse(v)
    for v in ("0.9.0", "1.0.0", "1.0.1", "1.1.0-dev", "1.1.0", "1.2.0", "1.2.3", "2.0.0-rc.1")
]


@pytest.mark.parametrize(
    ("constraint", "best"),
    [
        (None, "1.2.3"),
        ("", "1.2.3"),
        ("^1.0.0", "1.2.3"),
        ("^1.1.0", "1.2.3"),
        ("^0.9.0", "0.9.0"),
        ("~1.0.0", "1.0.1"),
        ("~1.2.0", "1.2.3"),
        ("~1", "1.2.3"),
        ("1.0.0", "1.0.0"),
        ("=1.0.1", "1.0.1"),
        ("==1.2.0", "1.2.0"),
        ("1", "1.2.3"),
        ("1.1", "1.1.0"),
        (">=1.0.0", "1.2.3"),
        (">1.0.0 <1.2.0", "1.1.0"),
        (">=1.0.0, <1.1.0", "1.0.1"),
        ("<=1.0.0", "1.0.0"),
        ("< 1.0.0", "0.9.0"),
        ("1.1.0-dev", "1.1.0-dev"),
        ("2.0.0-rc.1", "2.0.0-rc.1"),
        ("^2.0.0", None),  # only a pre-release of 2 exists: never chosen by a range
        ("^3.0.0", None),
        ("1.0.2", None),
    ],
)
def test_best_version(constraint: str | None, best: str | None) -> None:
    found = parse_constraint(constraint).best(VERSIONS)
    assert (str(found) if found else None) == best


@pytest.mark.parametrize(
    "constraint",
    ["latest", "^x", "1.0.0.0", "^1.0.0-", ">=1.0-dev", "v1", "~>1.0", "01.0.0", "^" + "1" * 200],
)
def test_invalid_constraints(constraint: str) -> None:
    with pytest.raises(InvalidVersion):
        parse_constraint(constraint)


def test_prerelease_ordering() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2", "1.0.0-beta.11"]
    ordered.append("1.0.0")
    versions = [Version.parse(v) for v in ordered]
    assert sorted(reversed(versions), key=Version.sort_key) == versions


@pytest.mark.parametrize("name", ["1.0", "1.0.0.yml", "a.b.c", "1.0.0-", "-1.0.0"])
def test_invalid_versions(name: str) -> None:
    with pytest.raises(InvalidVersion):
        Version.parse(name)
