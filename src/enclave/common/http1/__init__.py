"""A small pooled HTTP/1.1 client for the calls on the hot path (see :mod:`.client`)."""

from enclave.common.http1.body import MAX_LINE_BYTES, Body
from enclave.common.http1.client import Http1Client, Resolve, Timeouts
from enclave.common.http1.errors import (
    BadResponse,
    ConnectFailed,
    ConnectTimeout,
    DeadlineExceeded,
    Disconnected,
    HttpClientError,
    InvalidRequest,
    NameNotResolved,
    ReadTimeout,
    TlsFailed,
    TruncatedBody,
)
from enclave.common.http1.response import Response

__all__ = [
    "MAX_LINE_BYTES",
    "BadResponse",
    "Body",
    "ConnectFailed",
    "ConnectTimeout",
    "DeadlineExceeded",
    "Disconnected",
    "Http1Client",
    "HttpClientError",
    "InvalidRequest",
    "NameNotResolved",
    "ReadTimeout",
    "Resolve",
    "Response",
    "Timeouts",
    "TlsFailed",
    "TruncatedBody",
]
