"""Client address allow-list and X-Forwarded-For handling (pure ASGI middleware)."""

from __future__ import annotations

import ipaddress

import pytest
from gateway_fakes import Harness, HarnessFactory
from pydantic import ValidationError

from enclave.common.netrules import forwarded_client, parse_networks
from enclave.config import GatewaySettings

pytestmark = pytest.mark.anyio

PROXIES = parse_networks(["10.0.0.0/24", "fd00:1::/64"], "trusted_proxies")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),  # not a proxy: the header is ignored
        ("10.0.0.1", ["192.168.1.5"], "192.168.1.5"),
        ("10.0.0.1", ["8.8.8.8, 192.168.1.5"], "192.168.1.5"),  # rightmost untrusted hop
        ("10.0.0.1", ["192.168.1.5, 10.0.0.7"], "192.168.1.5"),  # skipping inner proxies
        ("10.0.0.1", ["8.8.8.8", "192.168.1.5, 10.0.0.2"], "192.168.1.5"),  # several headers
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # all proxies: the leftmost
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["192.168.1.5:5555"], "192.168.1.5"),
        ("10.0.0.1", ["[fd12::9]:443"], "fd12::9"),
        ("fd00:1::2", ["::ffff:192.168.1.5"], "192.168.1.5"),
    ],
)
def test_forwarded_client(peer: str, forwarded: list[str], client: str) -> None:
    found, _ = forwarded_client(_ip(peer), forwarded, PROXIES)
    assert found == _ip(client)


def test_forwarded_garbage_is_no_address() -> None:
    assert forwarded_client(_ip("10.0.0.1"), ["192.168.1.5, unknown"], PROXIES) == (
        None,
        "unknown",
    )


async def test_default_allows_loopback_and_private(gw: Harness) -> None:
    for address in ("127.0.0.1", "10.1.2.3", "172.20.0.5", "192.168.7.7", "::1", "fd12::1"):
        response = await gw.post_from(address)
        assert response.status_code == 200, (address, response.text)


@pytest.mark.parametrize("address", ["203.0.113.9", "8.8.8.8", "2001:db8::1", "testclient"])
async def test_other_clients_are_refused(gw: Harness, address: str) -> None:
    response = await gw.post_from(address)
    assert response.status_code == 403
    message = response.json()["detail"]
    assert message.startswith(f"Client address {address} is not allowed to use this AI gateway")
    assert "ENCLAVE_GATEWAY__ALLOWED_CLIENT_CIDRS" in message
    assert gw.model.requests == []
    # Cached verdicts answer the same.
    assert (await gw.post_from(address)).status_code == 403


async def test_health_checks_are_refused_too(gw: Harness) -> None:
    response = await gw.post_from("203.0.113.9", path="/monitoring/healthz")
    assert response.status_code == 403


async def test_configured_allow_list(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(allowed_client_cidrs=["203.0.113.0/24"])
    assert (await gw.post_from("203.0.113.9")).status_code == 200
    assert (await gw.post_from("127.0.0.1")).status_code == 403


async def test_empty_allow_list_refuses_everyone(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(allowed_client_cidrs=[])
    assert (await gw.post_from("127.0.0.1")).status_code == 403


async def test_forwarded_for_from_a_trusted_proxy(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(
        allowed_client_cidrs=["192.168.0.0/16"], trusted_proxies=["10.0.0.0/24"]
    )
    headers = {**gw.headers(), "X-Forwarded-For": "192.168.1.5"}
    assert (await gw.post_from("10.0.0.1", headers=headers)).status_code == 200

    # The proxy itself is not an allowed client.
    assert (await gw.post_from("10.0.0.1")).status_code == 403

    refused = await gw.post_from(
        "10.0.0.1", headers={**gw.headers(), "X-Forwarded-For": "203.0.113.9"}
    )
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith(
        "Client address 203.0.113.9 (forwarded by the trusted proxy 10.0.0.1) is not allowed"
    )
    # A client cannot hide behind an allowed address it writes itself.
    spoofed = {**gw.headers(), "X-Forwarded-For": "192.168.1.5, 203.0.113.9"}
    assert (await gw.post_from("10.0.0.1", headers=spoofed)).status_code == 403
    garbage = await gw.post_from(
        "10.0.0.1", headers={**gw.headers(), "X-Forwarded-For": "not-an-ip"}
    )
    assert garbage.status_code == 403
    assert "cannot read the client address 'not-an-ip'" in garbage.json()["detail"]
    assert len(gw.model.requests) == 1


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_harness: HarnessFactory,
) -> None:
    gw: Harness = await make_harness(allowed_client_cidrs=["192.168.0.0/16"])
    headers = {**gw.headers(), "X-Forwarded-For": "192.168.1.5"}
    assert (await gw.post_from("203.0.113.9", headers=headers)).status_code == 403
    headers = {**gw.headers(), "X-Forwarded-For": "203.0.113.9"}
    assert (await gw.post_from("192.168.1.6", headers=headers)).status_code == 200


def test_client_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="allowed_client_cidrs: 'everyone'"):
        GatewaySettings(allowed_client_cidrs=["everyone"])
    with pytest.raises(ValidationError, match="trusted_proxies"):
        GatewaySettings(trusted_proxies=["10.0.0.0/33"])
    assert "fc00::/7" in GatewaySettings().allowed_client_cidrs
    assert GatewaySettings().trusted_proxies == []
