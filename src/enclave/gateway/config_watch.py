"""Watch the gateway's config file and apply trusted-issuer changes without a restart.

A poll of the file's modification time and size every ``interval_s`` (no inotify: works on
every file system and in containers with mounted config). When it changed, the settings are
loaded again (the same environment, the same file) and handed to ``apply``; a file that no
longer parses is logged and ignored, so the last good trusted list stays in force.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from enclave.common.logging import get_logger
from enclave.config import EnclaveSettings, load_settings

log = get_logger(__name__)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


class ConfigWatcher:
    """Calls ``apply(settings)`` after each change of ``path``, checked every ``interval_s``."""

    def __init__(
        self, path: Path, interval_s: float, apply: Callable[[EnclaveSettings], None]
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self.apply = apply
        self._seen = _stamp(path)

    def check(self) -> bool:
        """Reload once if the file changed; True when new settings were applied."""
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            settings = load_settings(self.path)
        except ValidationError as exc:
            # Where and why, never the values (a misplaced key could hold a secret).
            problems = [
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            ]
            log.error("gateway_config_reload_failed", path=str(self.path), problems=problems[:10])
            return False
        except (ValueError, OSError) as exc:  # unreadable file, TOML syntax
            log.error(
                "gateway_config_reload_failed",
                path=str(self.path),
                error=type(exc).__name__,
                reason=str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            return False
        self.apply(settings)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.check()
            except Exception:  # the watcher must outlive one bad reload
                log.exception("gateway_config_reload_failed", path=str(self.path))
