"""One answer of :class:`~enclave.common.http1.client.Http1Client`: status, headers, body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from multidict import CIMultiDict

from enclave.common.http1.body import Body

if TYPE_CHECKING:
    from enclave.common.http1.connection import Connection

# What read() takes at most unless told: answers on these hops are small JSON or text.
MAX_READ_BYTES: Final = 64 * 1024 * 1024


class Response:
    """Status and headers as received; the body arrives in :attr:`content`.

    Call :meth:`release` when done with it (the connection goes back to the pool if the whole
    body was read) or :meth:`close` to drop the connection (an abandoned stream: the origin
    notices and stops generating).
    """

    __slots__ = (
        "_body",
        "_connection",
        "_headers",
        "_raw_headers",
        "_released",
        "content",
        "content_length",
        "status",
    )

    def __init__(
        self,
        status: int,
        raw_headers: list[tuple[bytes, bytes]],
        content: Body,
        content_length: int | None,
        connection: Connection,
    ) -> None:
        self.status = status
        self._raw_headers = raw_headers  # (name, value) as received
        self._headers: CIMultiDict[str] | None = None
        self.content = content
        self.content_length = content_length
        self._connection = connection
        self._released = False
        self._body: bytes | None = None

    @property
    def headers(self) -> CIMultiDict[str]:
        """The headers as received, names and values decoded as latin-1. Built on first use:
        most calls never read them (the connection reads the framing ones itself)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self._raw_headers
            )
        return headers

    async def read(self, limit: int = MAX_READ_BYTES) -> bytes:
        """The whole body, then the connection goes back to the pool. Kept: a second call
        returns the same bytes (a caller may look at an answer before relaying it).
        :class:`ValueError` when the body is over ``limit`` bytes (at once when the headers
        announce that many)."""
        if self._body is None:
            try:
                if self.content_length is not None and self.content_length > limit:
                    raise ValueError(f"response of {self.content_length} bytes exceeds {limit}")
                self._body = await self.content.read_all(limit)
            finally:
                self.release()
        return self._body

    def release(self) -> None:
        """Done: the connection is reused when the body was complete, else closed."""
        if not self._released:
            self._released = True
            self._connection.finish(reusable=self.content.at_eof)

    def close(self) -> None:
        """Drop the connection, whatever is left of the body."""
        if not self._released:
            self._released = True
            self._connection.finish(reusable=False)

    def __del__(self) -> None:
        # A response dropped unreleased (a stream whose consumer never started) must not keep
        # its connection counted against the pool's limit for ever.
        if not self._released:
            self._released = True
            self._connection.finish(reusable=False)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
