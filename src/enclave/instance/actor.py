"""Who makes an administrative change: recorded with every audit event."""

from __future__ import annotations

import getpass
from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """The author of a change: a user (API), the local operator (CLI) or the instance itself."""

    user_id: int | None
    name: str
    ip_address: str | None = None

    @classmethod
    def cli(cls) -> Actor:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (containers)
            who = "unknown"
        return cls(None, f"{who} (enclave CLI)")


SYSTEM = Actor(None, "system")
