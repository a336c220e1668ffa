"""Socket-level guard: any connection (or name lookup) beyond loopback fails loudly.

Installed in the pytest process by ``tests/network_guard.py`` and in every Python process the
tests start by ``sitecustomize.py`` beside this file (the plugin puts this directory first on
``PYTHONPATH``). A blocked attempt raises :class:`NetworkGuardError` where it happens and is
appended to ``$NETGUARD_REPORT_DIR/<pid>.jsonl``, which the plugin reads at the end of the run:
one blocked attempt anywhere fails the session.

Covered: ``socket.socket.connect``/``connect_ex``/``sendto`` (stdlib, asyncio, httpx, aiohttp
on asyncio), ``socket.getaddrinfo``, and uvloop's own ``create_connection``, ``sock_connect``
and ``getaddrinfo`` (libuv does not go through Python's socket methods).

Name lookups: numeric hosts in any form the C library accepts ("2852039166", "0xa9.0xfe.0xa9.0xfe",
which SSRF tests use) resolve locally and pass; a name that would need a DNS server is answered
"unknown host" (``socket.gaierror``, as on an air-gapped machine) without asking one, and
counted. Only connections beyond loopback fail the run: a lookup sends nothing anywhere here.
Native code that opens its own sockets (llama.cpp) is not seen here: the ``unshare -n`` run
(tests/airgap) covers it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import threading
from typing import Any, Final

REPORT_DIR_ENV: Final = "NETGUARD_REPORT_DIR"
LOCAL_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class NetworkGuardError(PermissionError):
    """A connection beyond loopback was attempted while the tests ran."""


_lock = threading.Lock()
_state: dict[str, Any] = {
    "installed": False,
    "allowed": 0,
    "blocked": [],
    "lookups": 0,
    "where": "",
}
_original_getaddrinfo = socket.getaddrinfo


class OfflineLookupError(socket.gaierror):
    """A name that needs DNS, answered as an air-gapped resolver would: unknown."""


def numeric_addresses(host: str) -> list[str] | None:
    """The addresses of a numeric host (any inet_aton form), or None for a name."""
    try:
        infos = _original_getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return [str(info[4][0]) for info in infos]


def is_local_host(host: object) -> bool:
    """True for loopback (and the unspecified address, which Linux routes to this host)."""
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip().rstrip(".").lower()
    if name in LOCAL_NAMES or name.endswith(".localhost") or name == "":
        return True
    addresses = numeric_addresses(name.strip("[]"))
    if addresses is None:
        return False  # a name: resolving it would ask a DNS server
    return all(_is_loopback_ip(address) for address in addresses)


def _is_loopback_ip(text: str) -> bool:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_loopback or address.is_unspecified


LOOKUP: Final = "offline lookup"  # report entries of this kind are not failures


def _report(kind: str, target: str) -> None:
    entry = {"pid": os.getpid(), "argv": sys.argv[:3], "kind": kind, "target": target}
    entry["where"] = _state["where"]
    if kind != LOOKUP:
        with _lock:
            _state["blocked"].append(entry)
    report_dir = os.environ.get(REPORT_DIR_ENV)
    if report_dir:
        try:
            with open(os.path.join(report_dir, f"{os.getpid()}.jsonl"), "a") as out:
                out.write(json.dumps(entry) + "\n")
        except OSError:
            pass  # the exception below still fails the caller


def check(kind: str, host: object, port: object = None) -> None:
    """Raise :class:`NetworkGuardError` unless ``host`` is loopback."""
    if is_local_host(host):
        with _lock:
            _state["allowed"] += 1
        return
    target = f"{host}:{port}" if port is not None else str(host)
    _report(kind, target)
    raise NetworkGuardError(
        f"network guard: {kind} to {target} blocked; tests may only reach loopback "
        "(tests/netguard/enclave_netguard.py)"
    )


def check_lookup(host: object) -> None:
    """Let numeric and loopback hosts resolve; answer names "unknown" without asking DNS."""
    if is_local_host(host):
        return
    text = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
    if numeric_addresses(text.strip("[]")) is not None:
        return  # parsed locally; the connection to it is what gets checked
    with _lock:
        _state["lookups"] += 1
    _report(LOOKUP, text)
    raise OfflineLookupError(
        socket.EAI_NONAME, f"Name or service not known: {text} (network guard: no DNS in tests)"
    )


def _check_address(kind: str, family: int, address: Any) -> None:
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        check(kind, address[0], address[1] if len(address) > 1 else None)


def _wrap_socket_methods() -> None:
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_sendto = socket.socket.sendto
    original_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        _check_address("connect", self.family, address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address("connect", self.family, address)
        return original_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        _check_address("sendto", self.family, args[-1] if args else None)
        return original_sendto(self, data, *args)  # type: ignore[arg-type]

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        check_lookup(host)
        return original_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[assignment]
    socket.getaddrinfo = getaddrinfo


def _wrap_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    loop_class: Any = uvloop.Loop
    original_create_connection = loop_class.create_connection
    original_sock_connect = loop_class.sock_connect
    original_getaddrinfo = loop_class.getaddrinfo

    async def create_connection(
        self: Any, protocol_factory: Any, host: Any = None, port: Any = None, **kw: Any
    ) -> Any:
        if kw.get("sock") is None:
            if host is not None and not is_local_host(host):
                check_lookup(host)  # a name: "unknown", as offline
            check("connect", host, port)
        return await original_create_connection(self, protocol_factory, host, port, **kw)

    async def sock_connect(self: Any, sock: socket.socket, address: Any) -> Any:
        _check_address("connect", sock.family, address)
        return await original_sock_connect(self, sock, address)

    async def getaddrinfo(self: Any, host: Any, *args: Any, **kwargs: Any) -> Any:
        check_lookup(host)
        return await original_getaddrinfo(self, host, *args, **kwargs)

    loop_class.create_connection = create_connection
    loop_class.sock_connect = sock_connect
    loop_class.getaddrinfo = getaddrinfo


def install() -> None:
    """Install the guard in this process (idempotent)."""
    with _lock:
        if _state["installed"]:
            return
        _state["installed"] = True
    _wrap_socket_methods()
    _wrap_uvloop()
    report_dir = os.environ.get(REPORT_DIR_ENV)
    if report_dir:
        # One line per guarded process, so the summary can say how many were covered.
        try:
            with open(os.path.join(report_dir, f"{os.getpid()}.jsonl"), "a") as out:
                out.write(json.dumps({"pid": os.getpid(), "kind": "guarded"}) + "\n")
        except OSError:
            pass


def set_where(where: str) -> None:
    """Name the test now running (in the pytest process), for the report."""
    _state["where"] = where


def allowed_count() -> int:
    return int(_state["allowed"])


def offline_lookups() -> int:
    return int(_state["lookups"])


def blocked() -> list[dict[str, Any]]:
    with _lock:
        return list(_state["blocked"])
