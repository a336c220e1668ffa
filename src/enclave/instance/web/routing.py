"""The route class of web pages: an :class:`InstanceRoute` with a small fixed body limit."""

from __future__ import annotations

from enclave.instance.api.routing import InstanceRoute


class WebRoute(InstanceRoute):
    """Forms carry a few short fields: 64 KiB is plenty (413 past it, before any parsing)."""

    fixed_limit = 64 * 1024
