"""What can go wrong on an outbound HTTP/1.1 call, one class per cause.

Callers map these to their own errors (the gateway's provider layer turns each into one
:class:`~enclave.gateway.models.base.ModelError`); none of the messages holds a header value,
so no credential can leak through them.
"""

from __future__ import annotations


class HttpClientError(Exception):
    """Base of every failure of :class:`~enclave.common.http1.client.Http1Client`."""


class InvalidRequest(HttpClientError, ValueError):
    """The call cannot be sent as asked: a URL or header that HTTP cannot carry."""


class ConnectFailed(HttpClientError):
    """No connection to the origin: refused, unreachable, or refused by the resolver's check.

    ``os_error`` is the underlying error (an :class:`OSError`, or the resolver's own refusal).
    """

    def __init__(self, message: str, os_error: OSError) -> None:
        super().__init__(message)
        self.os_error = os_error


class NameNotResolved(ConnectFailed):
    """The origin's host name did not resolve."""


class TlsFailed(ConnectFailed):
    """The TLS handshake failed (certificate not trusted, wrong host name, protocol)."""


class ConnectTimeout(HttpClientError, TimeoutError):
    """No connection within the connect timeout (or no free connection slot within it)."""


class ReadTimeout(HttpClientError, TimeoutError):
    """The origin sent nothing for the read timeout."""


class DeadlineExceeded(HttpClientError, TimeoutError):
    """The whole call (answer included) took longer than its total timeout."""


class Disconnected(HttpClientError):
    """The origin closed the connection before a status line, or it could not be written.

    ``reused`` says whether the connection came from the pool: then the origin most likely
    closed it while idle, and the call can be sent again on a fresh one.
    """

    def __init__(self, message: str, reused: bool) -> None:
        super().__init__(message)
        self.reused = reused


class TruncatedBody(HttpClientError):
    """The connection ended before the body its headers announced."""


class BadResponse(HttpClientError):
    """The answer is not readable HTTP/1.x, or breaks a limit (header size, line length)."""
