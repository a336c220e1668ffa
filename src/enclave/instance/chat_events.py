"""Chat answers pushed to editors as they are generated (GraphQL ``aiCompletionResponse``).

GitLab's editors subscribe over ActionCable (``api/cable.py``) with the ``clientSubscriptionId``
they then pass to ``aiAction``; the answer's chunks go to that subscription, and the final
message also to the user's subscriptions without an id (GitLab's "every response" stream). Per
process and in memory, like :mod:`chat_history`; a listener's queue is bounded (a client that
does not read loses chunks, never the final message it can still poll for), and so is the
number of listeners per user.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from enclave.common.logging import get_logger

log = get_logger(__name__)

MAX_LISTENERS_PER_USER: Final = 20
QUEUE_SIZE: Final = 1000


class TooManyListenersError(Exception):
    pass


class Listener:
    """An async iterator of one subscription's events; registered from creation until
    :meth:`aclose` (graphql-core closes it when the subscription ends)."""

    def __init__(self, events: ChatEvents, user_id: int, client_subscription_id: str | None):
        self.user_id = user_id
        self.client_subscription_id = client_subscription_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._events = events

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.queue.get()

    async def aclose(self) -> None:
        self._events.remove(self)


class ChatEvents:
    def __init__(self, max_listeners_per_user: int = MAX_LISTENERS_PER_USER) -> None:
        self.max_listeners_per_user = max_listeners_per_user
        self._listeners: dict[int, set[Listener]] = {}

    def listen(self, user_id: int, client_subscription_id: str | None) -> Listener:
        listeners = self._listeners.setdefault(user_id, set())
        if len(listeners) >= self.max_listeners_per_user:
            raise TooManyListenersError(
                f"at most {self.max_listeners_per_user} chat subscriptions per user"
            )
        listener = Listener(self, user_id, client_subscription_id)
        listeners.add(listener)
        return listener

    def remove(self, listener: Listener) -> None:
        listeners = self._listeners.get(listener.user_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[listener.user_id]

    def listening(self, user_id: int, client_subscription_id: str | None) -> bool:
        return any(
            listener.client_subscription_id == client_subscription_id
            for listener in self._listeners.get(user_id, ())
        )

    def publish(
        self,
        user_id: int,
        client_subscription_id: str | None,
        message: dict[str, Any],
        *,
        final: bool,
    ) -> None:
        """Hand ``message`` to the user's matching subscriptions; never blocks."""
        for listener in list(self._listeners.get(user_id, ())):
            wanted = listener.client_subscription_id == client_subscription_id or (
                final and listener.client_subscription_id is None
            )
            if not wanted:
                continue
            try:
                listener.queue.put_nowait(message)
            except asyncio.QueueFull:
                log.warning("chat_subscriber_too_slow", user_id=user_id)
