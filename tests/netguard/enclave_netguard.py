"""Socket-level guard: any connection (or name lookup) beyond loopback fails loudly.

Installed in the pytest process by ``tests/network_guard.py`` and in every Python process the
tests start by ``sitecustomize.py`` beside this file (the plugin puts this directory first on
``PYTHONPATH``). A blocked attempt raises :class:`NetworkGuardError` where it happens and is
appended to ``$NETGUARD_REPORT_DIR/<pid>.jsonl``, which the plugin reads at the end of the run:
one blocked attempt anywhere fails the session.

Covered: ``socket.socket.connect``/``connect_ex``/``sendto`` (stdlib, asyncio, httpx, aiohttp
on asyncio), ``socket.getaddrinfo`` (DNS), and uvloop's own ``create_connection``,
``sock_connect`` and ``getaddrinfo`` (libuv does not go through Python's socket methods).
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
_state: dict[str, Any] = {"installed": False, "allowed": 0, "blocked": [], "where": ""}


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
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False  # a name: resolving it would ask a DNS server
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_loopback or address.is_unspecified


def _report(kind: str, target: str) -> None:
    entry = {"pid": os.getpid(), "argv": sys.argv[:3], "kind": kind, "target": target}
    entry["where"] = _state["where"]
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
        check("name lookup", host)
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
            check("connect", host, port)
        return await original_create_connection(self, protocol_factory, host, port, **kw)

    async def sock_connect(self: Any, sock: socket.socket, address: Any) -> Any:
        _check_address("connect", sock.family, address)
        return await original_sock_connect(self, sock, address)

    async def getaddrinfo(self: Any, host: Any, *args: Any, **kwargs: Any) -> Any:
        check("name lookup", host)
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


def blocked() -> list[dict[str, Any]]:
    with _lock:
        return list(_state["blocked"])
