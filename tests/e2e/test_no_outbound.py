"""At run time Enclave talks to nothing but loopback (its own roles and configured models).

Linux only: every socket a role holds is matched, by inode, against /proc/net/tcp{,6}; each must
be a listener or connected to a loopback address. Taken right after real traffic went through,
when the pooled connections (gateway → model, instance → gateway) are still open.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc"),
]


def socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def decode_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host = hex_address.split(":")[0]
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # IPv6 in /proc is four little-endian 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return address.ipv4_mapped or address


def tcp_peers(pid: int) -> list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """(state, remote address) of every TCP socket the process holds."""
    inodes = socket_inodes(pid)
    peers = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                peers.append((fields[3], decode_address(fields[2])))
    return peers


def test_every_connection_of_every_role_is_loopback(stack: Stack, expected_answer: str) -> None:
    response = httpx.post(
        f"{stack.instance_url}/api/v4/code_suggestions/completions",
        json={
            "current_file": {
                "file_name": "a.py",
                "content_above_cursor": "x = ",
                "content_below_cursor": "",
            },
            "intent": "completion",
        },
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=60,
    )
    assert response.status_code == 200
    seen_established = 0
    for role in stack.plan.roles:
        assert role.process is not None
        for state, remote in tcp_peers(role.process.pid):
            listening = state == "0A"
            if listening:
                continue
            seen_established += 1
            assert remote.is_loopback, f"the {role.name} holds a connection to {remote}"
    # The pooled connections were seen, so the check looked at something real.
    assert seen_established > 0
