"""One background fetch at a time, shared by everyone who needs it (keys, feature routes).

A request that finds the cache stale or missing starts the fetch, or joins the one already in
flight; it never runs its own. The task runs without the request's log context (it serves every
request, so it must not log as the one that happened to start it), and a caller that gives up
does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

from enclave.common.logging import REQUEST_FIELDS


class SingleFlight:
    def __init__(self, work: Callable[[], Coroutine[Any, Any, bool]]) -> None:
        self._work = work
        self._task: asyncio.Task[bool] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> asyncio.Task[bool]:
        """The fetch in flight, or a new one."""
        if self._task is None or self._task.done():
            context = contextvars.copy_context()
            # Shared by every request that waits: it logs under none of their ids.
            context.run(REQUEST_FIELDS.set, None)
            self._task = asyncio.get_running_loop().create_task(self._work(), context=context)
        return self._task

    async def join(self) -> bool:
        """Wait for the fetch in flight (starting one if needed); its result."""
        return await asyncio.shield(self.start())

    async def aclose(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
