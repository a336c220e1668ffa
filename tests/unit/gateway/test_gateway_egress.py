"""Model endpoint safety: blocked addresses, resolution cache, connect-time guard."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from gateway_fakes import Harness
from pydantic import ValidationError

from enclave.common.http1 import Http1Client
from enclave.common.netrules import EgressPolicy
from enclave.config import GatewaySettings
from enclave.gateway.egress import (
    BlockedAddressError,
    EgressGuard,
    EgressRefused,
    GuardedLookup,
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


def _static_lookup(address: str) -> Callable[[str, int], Awaitable[list[str]]]:
    """A DNS that answers every name with ``address`` (what a rebinding attacker controls)."""

    async def lookup(host: str, port: int) -> list[str]:
        return [address]

    return lookup


async def test_guarded_lookup_checks_names_and_address_literals() -> None:
    # The model-call client's resolver hook: the same rules as the aiohttp resolver's.
    with pytest.raises(BlockedAddressError):
        await GuardedLookup(lookup=_static_lookup("169.254.169.254"))("x.example", 80)
    with pytest.raises(BlockedAddressError):  # literals are checked too, without a lookup
        await GuardedLookup(lookup=_static_lookup("127.0.0.1"))("169.254.169.254", 80)
    policy = EgressPolicy.parse(["10.0.0.0/8", "trusted.example"])
    with pytest.raises(EgressRefused, match="not in ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW"):
        await GuardedLookup(policy, _static_lookup("203.0.113.7"))("x.example", 80)
    assert await GuardedLookup(policy, _static_lookup("10.0.0.9"))("x.example", 80) == ["10.0.0.9"]
    by_name = await GuardedLookup(policy, _static_lookup("203.0.113.7"))("trusted.example", 80)
    assert by_name == ["203.0.113.7"]


async def test_guarded_resolver_refuses_blocked_answers() -> None:
    resolver = GuardedResolver(_StaticResolver("169.254.169.254"))
    with pytest.raises(BlockedAddressError):
        await resolver.resolve("rebinding.example", 80)
    allowed = GuardedResolver(_StaticResolver("127.0.0.1"))
    assert (await allowed.resolve("fine.example", 80))[0]["host"] == "127.0.0.1"


async def test_dns_rebinding_is_refused_at_connect_time() -> None:
    # The pre-check saw a harmless address; the connection-time answer is the metadata host.
    lookup = GuardedLookup(lookup=_static_lookup("169.254.169.254"))
    async with Http1Client(resolve=lookup) as session:
        client = OpenAICompatClient(session, timeout_s=5)
        request = ModelRequest(
            endpoint="http://rebinding.example/v1", model="m", api="completions", prompt="x"
        )
        with pytest.raises(EndpointNotAllowed) as refused:
            await client.complete(request)
    assert "169.254.169.254" in refused.value.reason


# -- the allow-list -------------------------------------------------------------------------


def test_egress_entries_parse() -> None:
    policy = EgressPolicy.parse(
        [
            "10.0.0.0/8",
            "192.168.1.20",
            "10.9.9.9:8000",
            "[fd12::5]:8443",
            "vllm.internal",
            "Ollama.Internal.:11434",
            "*.models.internal",
        ]
    )
    ip = ipaddress.ip_address
    assert policy.allows_ip(ip("10.2.3.4"), 80)
    assert policy.allows_ip(ip("192.168.1.20"), 1)
    assert not policy.allows_ip(ip("192.168.1.21"), 1)
    assert policy.allows_ip(ip("fd12::5"), 8443)
    assert not policy.allows_ip(ip("fd12::5"), 8444)
    assert policy.allows_name("vllm.internal", 8000)
    assert policy.allows_name("VLLM.internal.", 1)
    assert policy.allows_name("ollama.internal", 11434)
    assert not policy.allows_name("ollama.internal", 11435)
    assert policy.allows_name("a.models.internal", 80)
    assert policy.allows_name("a.b.models.internal", 80)
    assert not policy.allows_name("models.internal", 80)  # the wildcard needs a subdomain
    assert not policy.allows_name("evilmodels.internal", 80)


@pytest.mark.parametrize(
    "entry", ["http://vllm.internal", "10.0.0.0/33", "host:99999", "bad host", "", "[::1]", "a..b"]
)
def test_bad_egress_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="model_egress_allow"):
        EgressPolicy.parse([entry])


def test_egress_setting_is_validated_at_start_up() -> None:
    with pytest.raises(ValidationError, match="is a URL"):
        GatewaySettings(model_egress_allow=["http://vllm.internal:8000/v1"])
    assert GatewaySettings(model_egress_allow=[]).model_egress_allow == []


def test_metadata_addresses_are_refused_even_when_allowed() -> None:
    policy = EgressPolicy.parse(["0.0.0.0/0", "::/0"])
    assert not policy.allows_ip(ipaddress.ip_address("169.254.169.254"), 80)
    assert not policy.allows_ip(ipaddress.ip_address("fd00:ec2::254"), 80)
    assert policy.allows_ip(ipaddress.ip_address("203.0.113.7"), 80)


async def test_allow_list_is_applied_before_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    loop = asyncio.get_running_loop()
    answers = {
        "model.internal": "10.1.2.3",
        "public.example": "203.0.113.7",
        "named.example": "203.0.113.8",
    }
    monkeypatch.setattr(loop, "getaddrinfo", _fake_getaddrinfo(answers, calls))
    guard = EgressGuard(policy=EgressPolicy.parse(["10.0.0.0/8", "named.example:8000"]))

    await guard.check("http://model.internal:8000/v1")
    await guard.check("http://10.9.8.7/v1")
    await guard.check("http://named.example:8000/v1")  # allowed by name, resolved anyway
    for endpoint, why in [
        ("http://public.example/v1", "resolves to 203.0.113.7, which is not in the allow-list"),
        ("http://named.example:8001/v1", "resolves to 203.0.113.8"),
        ("http://203.0.113.7:8000/v1", "203.0.113.7 port 8000 is not in the allow-list"),
        ("http://127.0.0.1:8000/v1", "127.0.0.1 port 8000 is not in the allow-list"),
    ]:
        with pytest.raises(EndpointNotAllowed) as refused:
            await guard.check(endpoint)
        assert why in refused.value.reason
        assert "ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW" in refused.value.reason


async def test_empty_allow_list_refuses_everything() -> None:
    guard = EgressGuard(policy=EgressPolicy.parse([]))
    with pytest.raises(EndpointNotAllowed, match="allow-list of model endpoints is empty"):
        await guard.check("http://127.0.0.1:8000/v1")
    with pytest.raises(EndpointNotAllowed, match="allow-list of model endpoints is empty"):
        await guard.check("http://localhost:8000/v1")


async def test_guarded_resolver_applies_the_policy() -> None:
    policy = EgressPolicy.parse(["10.0.0.0/8", "trusted.example"])
    with pytest.raises(EgressRefused, match="not in ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW"):
        await GuardedResolver(_StaticResolver("203.0.113.7"), policy).resolve("x.example", 80)
    ok = await GuardedResolver(_StaticResolver("10.0.0.9"), policy).resolve("x.example", 80)
    assert ok[0]["host"] == "10.0.0.9"
    by_name = await GuardedResolver(_StaticResolver("203.0.113.7"), policy).resolve(
        "trusted.example", 80
    )
    assert by_name[0]["host"] == "203.0.113.7"
    with pytest.raises(BlockedAddressError):  # a name never unlocks a metadata address
        await GuardedResolver(_StaticResolver("169.254.169.254"), policy).resolve(
            "trusted.example", 80
        )


async def test_rebinding_outside_the_allow_list_is_refused_at_connect_time() -> None:
    policy = EgressPolicy.parse(["10.0.0.0/8"])
    lookup = GuardedLookup(policy, lookup=_static_lookup("127.0.0.1"))
    async with Http1Client(resolve=lookup) as session:
        client = OpenAICompatClient(session, timeout_s=5)
        request = ModelRequest(
            endpoint="http://rebinding.example:9/v1", model="m", api="completions", prompt="x"
        )
        with pytest.raises(EndpointNotAllowed) as refused:
            await client.complete(request)
    assert "127.0.0.1" in refused.value.reason
    assert "ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW" in refused.value.reason


@pytest.mark.parametrize("stream", [False, True])
async def test_model_redirects_are_not_followed(gw: Harness, stream: bool) -> None:
    # A model server (or something pretending to be one) redirecting to the metadata address
    # must not get the gateway to follow, nor the API key to travel on.
    gw.model.status = 307
    gw.model.location = "http://169.254.169.254/latest/meta-data"
    response = await gw.complete(gw.body(stream=stream))
    assert response.status_code == 503
    assert "redirect (HTTP 307), which the gateway does not follow" in response.json()["detail"]
    assert len(gw.model.requests) == 1
