"""Model endpoint safety: blocked addresses, resolution cache, connect-time guard."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from enclave.gateway.egress import (
    BlockedAddressError,
    EgressGuard,
    GuardedResolver,
    blocked_address,
    display_url,
)
from enclave.gateway.models.base import EndpointNotAllowed, ModelRequest
from enclave.gateway.models.openai_compat import OpenAICompatClient

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("169.254.169.254", True),
        ("169.254.0.1", True),
        ("fe80::1%eth0", True),
        ("fd00:ec2::254", True),
        ("100.100.100.200", True),
        ("::ffff:169.254.169.254", True),
        ("127.0.0.1", False),
        ("10.0.0.5", False),
        ("::1", False),
        ("model-host", False),
    ],
)
def test_blocked_addresses(address: str, blocked: bool) -> None:
    assert blocked_address(address) is blocked


def test_display_url_drops_credentials_and_query() -> None:
    assert display_url("https://u:secret@host:8443/v1?key=abc#x") == "https://host:8443/v1"
    assert display_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


def _fake_getaddrinfo(answers: dict[str, str], calls: list[str]) -> Any:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        calls.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    return getaddrinfo


async def test_hostnames_are_resolved_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    loop = asyncio.get_running_loop()
    answers = {"metadata.internal": "169.254.169.254", "model.internal": "10.1.2.3"}
    monkeypatch.setattr(loop, "getaddrinfo", _fake_getaddrinfo(answers, calls))
    now = [0.0]
    guard = EgressGuard(clock=lambda: now[0])

    with pytest.raises(EndpointNotAllowed) as refused:
        await guard.check("http://metadata.internal/v1")
    assert "resolves to 169.254.169.254" in refused.value.reason
    await guard.check("http://model.internal:8000/v1")
    await guard.check("http://model.internal:8000/v1")
    assert calls == ["metadata.internal", "model.internal"]  # the second check was cached

    now[0] = 61.0  # the cache entry expired
    await guard.check("http://model.internal:8000/v1")
    assert calls[-1] == "model.internal" and len(calls) == 3

    # Unresolvable names are left to the model call, which reports them precisely.
    await guard.check("http://nowhere.internal/v1")


class _StaticResolver(AbstractResolver):
    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": self.address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


async def test_guarded_resolver_refuses_blocked_answers() -> None:
    resolver = GuardedResolver(_StaticResolver("169.254.169.254"))
    with pytest.raises(BlockedAddressError):
        await resolver.resolve("rebinding.example", 80)
    allowed = GuardedResolver(_StaticResolver("127.0.0.1"))
    assert (await allowed.resolve("fine.example", 80))[0]["host"] == "127.0.0.1"


async def test_dns_rebinding_is_refused_at_connect_time() -> None:
    # The pre-check saw a harmless address; the connection-time answer is the metadata host.
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(_StaticResolver("169.254.169.254")))
    async with aiohttp.ClientSession(connector=connector) as session:
        client = OpenAICompatClient(session, timeout_s=5)
        request = ModelRequest(
            endpoint="http://rebinding.example/v1", model="m", api="completions", prompt="x"
        )
        with pytest.raises(EndpointNotAllowed) as refused:
            await client.complete(request)
    assert "169.254.169.254" in refused.value.reason
