"""Editor chat conversations, in memory, per user and bounded (GraphQL ``aiMessages``).

GitLab's editor chat sends a question with the ``aiAction`` mutation, which answers at once with
a ``requestId``; the answer arrives later, read by polling ``aiMessages(requestIds, roles)`` (or
pushed over ActionCable). So the instance keeps each user's recent messages: the question (role
``user``) when it is asked and the answer (role ``assistant``) when the model has given it.

Bounded three ways, so a client cannot grow it without limit: messages per user (oldest go
first), characters per user (oldest go first), and age (older messages are dropped when the
user's history is next touched); the number of users kept is bounded as well (least recently
active go first). Nothing is written to disk: a restart forgets conversations, as GitLab's
editors only need them while a chat is on screen. Each process keeps its own; with several
workers an editor's polls must reach the worker that took its question (sticky sessions), or
the chat waits for an answer it cannot see.

Only touched from the event loop; the lock makes it safe from threads as well.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

Role = Literal["user", "assistant"]

MAX_MESSAGES_PER_USER: Final = 50  # GitLab keeps the last 50 chat messages per user
MAX_CHARS_PER_USER: Final = 1_000_000
MAX_AGE_S: Final = 8 * 3600.0
MAX_USERS: Final = 10_000


@dataclass(frozen=True)
class ChatMessage:
    id: str
    request_id: str
    role: Role
    content: str
    timestamp: datetime
    errors: tuple[str, ...] = ()
    # The question's context items (id, category, metadata), echoed in ``extras``.
    additional_context: tuple[dict[str, Any], ...] = ()
    created: float = 0.0  # monotonic, for the age bound


class ChatHistory:
    def __init__(
        self,
        *,
        max_messages: int = MAX_MESSAGES_PER_USER,
        max_chars: int = MAX_CHARS_PER_USER,
        max_age_s: float = MAX_AGE_S,
        max_users: int = MAX_USERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_messages = max_messages
        self.max_chars = max_chars
        self.max_age_s = max_age_s
        self.max_users = max_users
        self._clock = clock
        self._users: OrderedDict[int, deque[ChatMessage]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def new_request_id() -> str:
        return str(uuid.uuid4())

    def add(
        self,
        user_id: int,
        request_id: str,
        role: Role,
        content: str,
        *,
        errors: Iterable[str] = (),
        additional_context: Iterable[dict[str, Any]] = (),
    ) -> ChatMessage:
        message = ChatMessage(
            id=str(uuid.uuid4()),
            request_id=request_id,
            role=role,
            content=content,
            timestamp=datetime.now(UTC),
            errors=tuple(errors),
            additional_context=tuple(additional_context),
            created=self._clock(),
        )
        with self._lock:
            messages = self._users.pop(user_id, None) or deque()
            messages.append(message)
            self._users[user_id] = messages  # most recently active last
            self._trim(messages)
            while len(self._users) > self.max_users:
                self._users.popitem(last=False)
        return message

    def clear(self, user_id: int) -> None:
        with self._lock:
            self._users.pop(user_id, None)

    def messages(
        self,
        user_id: int,
        *,
        request_ids: Iterable[str] | None = None,
        roles: Iterable[Role] | None = None,
    ) -> list[ChatMessage]:
        """The user's messages, oldest first, filtered by request id and role when given."""
        wanted_ids = set(request_ids) if request_ids is not None else None
        wanted_roles = set(roles) if roles is not None else None
        with self._lock:
            messages = self._users.get(user_id)
            if messages is None:
                return []
            self._trim(messages)
            return [
                m
                for m in messages
                if (wanted_ids is None or m.request_id in wanted_ids)
                and (wanted_roles is None or m.role in wanted_roles)
            ]

    def _trim(self, messages: deque[ChatMessage]) -> None:
        oldest_kept = self._clock() - self.max_age_s
        while messages and messages[0].created < oldest_kept:
            messages.popleft()
        while len(messages) > self.max_messages:
            messages.popleft()
        chars = sum(len(m.content) for m in messages)
        while len(messages) > 1 and chars > self.max_chars:
            chars -= len(messages.popleft().content)
