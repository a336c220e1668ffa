"""A small pooled HTTP/1.1 client for the calls on the hot path (model calls).

Why not aiohttp here: a model call through aiohttp costs about 100 µs of CPU in the gateway,
more than a third of everything the gateway does for a completion; the same call on an asyncio
protocol with httptools' parser costs about half (measured in ``bench/README.md``). This
client does only what those calls need: one request at a time per keep-alive connection, TLS
from an :class:`ssl.SSLContext`, a resolver hook through which every address is checked before
it is connected to, deadlines on every wait, no redirects, no cookies, no proxies, no
compression (it asks for identity).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from yarl import URL

from enclave.common.http1.connection import Connection
from enclave.common.http1.errors import (
    ConnectFailed,
    ConnectTimeout,
    DeadlineExceeded,
    Disconnected,
    InvalidRequest,
    NameNotResolved,
    TlsFailed,
)
from enclave.common.http1.response import Response

# host, port -> the addresses to try, in order; raises an OSError to refuse the host.
Resolve = Callable[[str, int], Awaitable[list[str]]]

_DNS_TTL_S: Final = 60.0
_DNS_CACHE_MAX: Final = 1024
# Header names the client writes itself: a call's own are dropped rather than sent twice.
_FRAMING: Final = frozenset({"host", "content-length", "transfer-encoding"})
# A field name is a token (RFC 9110 §5.1): no separators, spaces or controls.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Limits of one call, in seconds.

    ``connect``: to open a connection (TLS handshake included). ``total``: the whole call,
    body included (whole answers). ``read``: each wait for the next bytes (streams, where the
    whole answer may take long but must keep flowing).
    """

    connect: float
    total: float | None = None
    read: float | None = None


@dataclass(frozen=True, slots=True)
class _Origin:
    """What one URL says about where and how to connect, parsed once per URL."""

    tls: bool
    host: str  # as given to DNS and TLS (IDNA-encoded, no brackets)
    port: int
    host_header: str
    target: str  # path and query, as sent on the request line

    @property
    def key(self) -> tuple[bool, str, int]:
        return self.tls, self.host, self.port


@lru_cache(maxsize=1024)
def _origin_of_text(url: str) -> _Origin:
    try:
        return _origin(URL(url))
    except ValueError as exc:
        raise InvalidRequest(f"not a valid URL ({exc})") from None


def _origin(url: URL) -> _Origin:
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise InvalidRequest("only absolute http and https URLs can be called")
    host = url.raw_host
    port = url.port or (443 if url.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if url.is_default_port() else f"{shown}:{port}"
    target = url.raw_path_qs or "/"
    return _Origin(url.scheme == "https", host, port, host_header, target)


@lru_cache(maxsize=1024)
def _header_name(name: str) -> str:
    """``name`` lower-cased, once it is known to be a valid field name (calls reuse a handful
    of names, so each is checked once); :class:`InvalidRequest` otherwise."""
    if not _TOKEN.fullmatch(name):
        raise InvalidRequest(f"{name[:40]!r} is not a valid header name")
    return name.lower()


def _split_value(headers: Mapping[str, str]) -> InvalidRequest:
    """The error naming the header whose value would start a line of its own (or hold NUL)."""
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\0" in value:
            return InvalidRequest(f"the header {name[:40]!r} holds a line break or NUL")
    return InvalidRequest("a header holds a line break or NUL")


class DnsCache:
    """The system resolver's answers for a minute (the pool opens few connections, but a
    reconnect storm must not become a DNS storm)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._answers: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def __call__(self, host: str, port: int) -> list[str]:
        now = self._clock()
        cached = self._answers.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if len(self._answers) >= _DNS_CACHE_MAX:
            self._answers.clear()
        self._answers[(host, port)] = (now + _DNS_TTL_S, addresses)
        return addresses


class Http1Client:
    """Pooled keep-alive connections per origin (scheme, host, port, TLS settings)."""

    def __init__(
        self,
        *,
        resolve: Resolve | None = None,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 1024,
        keepalive_s: float = 4.0,
        ask_identity: bool = True,
    ) -> None:
        self._resolve: Resolve = resolve if resolve is not None else DnsCache()
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        # Sent with every call unless the call sets them itself. ``ask_identity``: say that
        # only uncompressed answers are wanted (a compressed one is refused either way).
        asked = {"Accept-Encoding": "identity"} if ask_identity else {}
        self._default_lines = [
            (_header_name(name), f"{name}: {value}\r\n")
            for name, value in {**asked, **(headers or {})}.items()
        ]
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._idle: dict[tuple[bool, str, int, int], list[Connection]] = {}
        self._open: set[Connection] = set()
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._connecting = 0  # connections being opened: they count against the limit
        self._closed = False

    # -- calls ------------------------------------------------------------------------------

    # ``post`` and ``get`` hand back :meth:`request`'s coroutine rather than awaiting it in
    # one of their own: a model call's every step resumes each await level above it.

    def post(
        self,
        url: str | URL,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Coroutine[Any, Any, Response]:
        return self.request("POST", url, body, headers, timeouts, ssl_context)

    def get(
        self,
        url: str | URL,
        *,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Coroutine[Any, Any, Response]:
        return self.request("GET", url, None, headers, timeouts, ssl_context)

    async def request(
        self,
        method: str,
        url: str | URL,
        body: bytes | None,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Response:
        """Send one call; the answer once its headers are in (its body still to be read).

        Redirects are answers like any other: never followed.
        """
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        origin = _origin_of_text(url) if isinstance(url, str) else _origin(url)
        loop = asyncio.get_running_loop()
        deadline = None if timeouts.total is None else loop.time() + timeouts.total
        data = self._encode(method, origin, body, headers)
        context = (ssl_context or self._ssl) if origin.tls else None
        connection = await self._acquire(loop, origin, context, timeouts, deadline)
        # The connection bounds the wait (ReadTimeout or DeadlineExceeded, see send()).
        head = connection.send(data, timeouts.read, deadline)
        try:
            return await head
        except BaseException:
            connection.abort()  # a late answer must not be read as the next call's
            self._done(connection, False)
            raise

    def _encode(
        self, method: str, origin: _Origin, body: bytes | None, headers: Mapping[str, str]
    ) -> bytes:
        given: set[str] = set()
        own: list[str] = []
        for name, value in headers.items():
            lower = _header_name(name)
            given.add(lower)
            if lower not in _FRAMING:
                own.append(f"{name}: {value}\r\n")
        lines = [f"{method} {origin.target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
        lines += [line for lower, line in self._default_lines if lower not in given]
        lines += own
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # Each piece ends in one CR LF (the first in two) and holds no other: a value with a
        # line break of its own (header injection) or a NUL changes these counts.
        breaks = len(lines) + 1
        if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
            raise _split_value(headers)
        try:
            head = text.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidRequest("a header holds characters HTTP/1.1 cannot carry") from None
        return head + body if body else head

    # -- the pool ---------------------------------------------------------------------------

    async def _acquire(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: _Origin,
        context: ssl.SSLContext | None,
        timeouts: Timeouts,
        deadline: float | None,
    ) -> Connection:
        key = (*origin.key, id(context))
        idle = self._idle.get(key)
        if idle:
            stale_before = time.monotonic() - self._keepalive_s
            while idle:
                connection = idle.pop()  # the most recently used: the least likely closed
                if connection.closed or connection.idle_since < stale_before:
                    connection.close()
                    self._forget(connection)
                    continue
                return connection
        return await self._connect(loop, origin, key, context, timeouts, deadline)

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: _Origin,
        key: tuple[bool, str, int, int],
        context: ssl.SSLContext | None,
        timeouts: Timeouts,
        deadline: float | None,
    ) -> Connection:
        limit = timeouts.connect
        if deadline is not None:
            limit = min(limit, max(0.0, deadline - loop.time()))
        try:
            async with asyncio.timeout(limit):
                await self._slot()
                self._connecting += 1
                try:
                    connection = await self._open_connection(loop, origin, key, context)
                except BaseException:
                    self._free_slot()
                    raise
                finally:
                    self._connecting -= 1
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {origin.host_header} within {limit:g} s"
            ) from None
        if self._closed:  # closed while connecting: close() did not see this one
            connection.close()
            self._free_slot()
            raise RuntimeError("the HTTP client is closed")
        self._open.add(connection)
        return connection

    async def _open_connection(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: _Origin,
        key: tuple[bool, str, int, int],
        context: ssl.SSLContext | None,
    ) -> Connection:
        try:
            addresses = await self._resolve(origin.host, origin.port)
        except socket.gaierror as exc:
            raise NameNotResolved(f"cannot resolve {origin.host}", exc) from None
        except OSError as exc:  # the resolver's own refusal (an address not allowed)
            raise ConnectFailed(str(exc), exc) from None
        last: OSError = OSError(f"{origin.host} resolved to no address")
        for address in addresses:

            def protocol() -> Connection:
                return Connection(loop, self._done)

            try:
                _, connection = await loop.create_connection(
                    protocol,
                    address,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
            except ssl.SSLError as exc:
                raise TlsFailed(f"TLS with {origin.host_header} failed", exc) from None
            except OSError as exc:
                last = exc
                continue
            connection.pool_key = key
            return connection
        raise ConnectFailed(f"cannot connect to {origin.host_header}", last)

    async def _slot(self) -> None:
        """Wait for room under ``max_connections``, closing an idle connection to make it."""
        while len(self._open) + self._connecting >= self._max_connections:
            if self._close_one_idle():
                continue
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                # Woken, then cancelled (its timeout) before it could take the slot: pass
                # the wake on, or the next waiter sleeps though there is room.
                if waiter.done() and not waiter.cancelled():
                    self._free_slot()
                raise
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)

    def _free_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                connection = idle.pop(0)  # the longest idle
                connection.close()
                self._forget(connection)
                return True
        return False

    def _done(self, connection: Connection, reusable: bool) -> None:
        """A call on ``connection`` is over (or the connection closed)."""
        if reusable and not self._closed:
            connection.reused = True
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.pool_key, []).append(connection)
            # A call waiting for room (to another origin) can now close this one to make it.
            self._free_slot()
            return
        self._forget(connection)

    def _forget(self, connection: Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            idle = self._idle.get(connection.pool_key)
            if idle and connection in idle:
                idle.remove(connection)
            self._free_slot()

    async def __aenter__(self) -> Http1Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; calls after this fail."""
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        while self._slot_waiters:  # they end at once instead of at their timeout
            self._free_slot()


__all__ = [
    "ConnectFailed",
    "ConnectTimeout",
    "DeadlineExceeded",
    "Disconnected",
    "DnsCache",
    "Http1Client",
    "Resolve",
    "Timeouts",
]
