"""The shared-gateway mode end to end, every part a real process on loopback.

* instance A with its own self-hosted gateway and the embedded llama.cpp model (the usual
  stack), duo_chat set to vendored (vendored gateway URL from its configuration), code
  completions on its own model;
* instance B (its own data dir, so its own signing keys), every feature vendored (vendored
  gateway URL set through the admin API);
* instance C, which the shared gateway does not trust;
* one shared gateway (config file: trusted instances with their own limits, a vendor model
  per feature with the key in a file, its own audience) in front of a fake Anthropic that
  answers in the Messages API's recorded wire format (the provider tests' fixtures).

It checks where each request goes, that the shared gateway's metrics show usage and limits
per instance, and that removing B from the config file refuses B's next request.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.common.features import Feature
from enclave.common.net import free_port
from enclave.model.tiny_gguf import TINY_ANSWER
from enclave.supervisor import Role, _wait_ready
from tests.e2e.conftest import FakeLoop, Stack, running_stack, stack_env

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "gateway" / "providers"))

from provider_fakes import FakeProvider, Reply, Seen, json_reply
from provider_setup import ANTHROPIC_KEY
from wire_fixtures import ANSWER, ANTHROPIC_MESSAGE, ANTHROPIC_MODEL, anthropic_stream

pytestmark = pytest.mark.e2e

ADMIN = "/api/v4/admin/ai"
SHARED_AUDIENCE = "enclave-shared-ai-gateway"
COMPLETION = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "",
    },
    "intent": "completion",
    "stream": False,
}
B_BURST = 6  # B's own bucket on the shared gateway (A keeps the gateway-wide default)


def anthropic_answer(seen: Seen) -> Reply:
    body = seen.json if seen.body else {}
    if isinstance(body, dict) and body.get("stream"):
        return Reply(content_type="text/event-stream", chunks=anthropic_stream())
    return json_reply(ANTHROPIC_MESSAGE)


@dataclass
class Instance:
    url: str
    data_dir: Path

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token.txt").read_text().strip()


@dataclass
class World:
    a: Stack
    b: Instance
    c: Instance
    shared_url: str
    config: Path
    vendor: FakeProvider
    b_entry: str
    a_entry: str


def gateway_config(port: int, key_file: Path, vendor: str, entries: list[str]) -> str:
    """The shared gateway's TOML (what an operator writes)."""
    vendor_model = (
        f'{{provider = "anthropic", model = "{ANTHROPIC_MODEL}", family = "claude_3", '
        f'endpoint = "{vendor}", api_key_file = "{key_file}"}}'
    )
    return "\n".join(
        [
            "[gateway]",
            'host = "127.0.0.1"',
            f"port = {port}",
            f'audience = "{SHARED_AUDIENCE}"',
            "config_reload_s = 0.5",
            "trusted_issuers = [",
            *[f"    {entry}," for entry in entries],
            "]",
            "[gateway.vendor_models]",
            f"duo_chat = {vendor_model}",
            f"code_completions = {vendor_model}",
            "",
        ]
    )


def start_role(role: Role, data_dir: Path, **env: str) -> Role:
    role.env.update(env)
    role.start(data_dir / "logs", stack_env(data_dir))
    try:
        _wait_ready(role, lambda name, elapsed: None)
    except BaseException:
        role.stop()
        raise
    return role


def instance_role(name: str, data_dir: Path, **env: str) -> tuple[Role, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    role = Role(
        name, ["instance", "--host", "127.0.0.1", "--port", str(port)], f"{url}/-/readiness"
    )
    # No self-hosted gateway for these two: nothing may ever be sent there.
    unused = f"http://127.0.0.1:{free_port()}"
    return start_role(role, data_dir, ENCLAVE_INSTANCE__GATEWAY_URL=unused, **env), url


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[World]:
    loop = FakeLoop()
    vendor = FakeProvider()
    vendor.responder = anthropic_answer
    loop.run(vendor.start())
    roles: list[Role] = []
    shared_port = free_port()
    shared_url = f"http://127.0.0.1:{shared_port}"
    vendored = {
        "ENCLAVE_INSTANCE__VENDORED_GATEWAY_AUDIENCE": SHARED_AUDIENCE,
    }
    try:
        with running_stack(
            tmp_path_factory.mktemp("shared-a"),
            tiny_gguf,
            ENCLAVE_INSTANCE__VENDORED_GATEWAY_URL=shared_url,
            **vendored,
        ) as a:
            b_dir = tmp_path_factory.mktemp("shared-b")
            c_dir = tmp_path_factory.mktemp("shared-c")
            role, b_url = instance_role("instance-b", b_dir, **vendored)
            roles.append(role)
            role, c_url = instance_role(
                "instance-c", c_dir, ENCLAVE_INSTANCE__VENDORED_GATEWAY_URL=shared_url, **vendored
            )
            roles.append(role)

            gw_dir = tmp_path_factory.mktemp("shared-gw")
            key_file = gw_dir / "anthropic.key"
            key_file.write_text(ANTHROPIC_KEY + "\n")
            key_file.chmod(0o600)
            a_entry = f'{{url = "{a.instance_url}"}}'
            b_entry = (
                f'{{url = "{b_url}", rate_limit_rps = 0.001, rate_limit_burst = {B_BURST}, '
                'allowed_features = ["duo_chat", "code_completions", "code_generations"]}'
            )
            config = gw_dir / "gateway.toml"
            config.write_text(
                gateway_config(shared_port, key_file, vendor.base, [a_entry, b_entry])
            )
            shared = Role(
                "shared-gateway",
                ["gateway", "--host", "127.0.0.1", "--port", str(shared_port)],
                f"{shared_url}/monitoring/ready",
            )
            roles.append(start_role(shared, gw_dir, ENCLAVE_CONFIG=str(config)))
            yield World(
                a,
                Instance(b_url, b_dir),
                Instance(c_url, c_dir),
                shared_url,
                config,
                vendor,
                b_entry,
                a_entry,
            )
    finally:
        for role in reversed(roles):
            role.stop()
        loop.run(vendor.stop())
        loop.close()


def call(
    url: str, token: str, method: str, path: str, body: Any = None, timeout: float = 60
) -> httpx.Response:
    return httpx.request(
        method, url + path, json=body, headers={"PRIVATE-TOKEN": token}, timeout=timeout
    )


def chat(url: str, token: str) -> httpx.Response:
    return call(url, token, "POST", "/api/v4/chat/completions", {"content": "How do I add?"})


def complete(url: str, token: str) -> httpx.Response:
    return call(url, token, "POST", "/api/v4/code_suggestions/completions", COMPLETION)


def metrics(world: World) -> str:
    return httpx.get(world.shared_url + "/metrics", timeout=10).text


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def vendor_posts(world: World) -> list[Seen]:
    return [seen for seen in world.vendor.seen if seen.method == "POST"]


def test_shared_gateway_serves_many_instances(world: World) -> None:
    a, b, c = world.a, world.b, world.c

    # A: chat vendored (the config's vendored gateway URL), code completions self-hosted.
    setting = call(
        a.instance_url, a.admin_token, "PUT", f"{ADMIN}/feature_settings/duo_chat",
        {"provider": "vendored"},
    )  # fmt: skip
    assert setting.status_code == 200, setting.text
    assert (setting.json()["gateway"], setting.json()["gateway_url"]) == (
        "vendored",
        world.shared_url,
    )
    answer = chat(a.instance_url, a.admin_token)
    assert answer.status_code == 200, answer.text
    assert ANSWER.strip() in str(answer.json())
    [to_vendor] = vendor_posts(world)
    assert to_vendor.path == "/v1/messages"
    assert to_vendor.headers["x-api-key"] == ANTHROPIC_KEY  # the gateway's key, from its file
    assert to_vendor.json["model"] == ANTHROPIC_MODEL
    completion = complete(a.instance_url, a.admin_token)
    assert completion.status_code == 200, completion.text
    assert completion.json()["choices"][0]["text"].strip() == TINY_ANSWER.strip()
    assert len(vendor_posts(world)) == 1  # A's code never left for the shared gateway

    # B: everything vendored (vendored gateway URL set by its administrator).
    settings = call(
        b.url, b.admin_token, "PATCH", f"{ADMIN}/settings",
        {"vendored_ai_gateway_url": world.shared_url},
    )  # fmt: skip
    assert settings.status_code == 200, settings.text
    every = call(
        b.url, b.admin_token, "PUT", f"{ADMIN}/feature_settings",
        {"features": [feature.value for feature in Feature], "provider": "vendored"},
    )  # fmt: skip
    assert every.status_code == 200, every.text
    answer = chat(b.url, b.admin_token)
    assert answer.status_code == 200, answer.text
    assert ANSWER.strip() in str(answer.json())
    completion = complete(b.url, b.admin_token)
    assert completion.status_code == 200, completion.text
    assert "a + b" in completion.json()["choices"][0]["text"]
    assert len(vendor_posts(world)) == 3

    # C is not trusted by the shared gateway: refused, and the vendor never sees it.
    assert call(
        c.url, c.admin_token, "PUT", f"{ADMIN}/feature_settings/duo_chat",
        {"provider": "vendored"},
    ).status_code == 200  # fmt: skip
    refused = chat(c.url, c.admin_token)
    assert refused.status_code >= 400
    assert len(vendor_posts(world)) == 3

    # Usage per instance and feature, and each instance's limit, on the shared gateway.
    text = metrics(world)
    usage = "enclave_gateway_instance_requests_total"
    assert metric(text, usage, instance=a.instance_url, feature="duo_chat") == 1
    assert metric(text, usage, instance=a.instance_url, feature="code_completions") == 0
    assert metric(text, usage, instance=b.url, feature="duo_chat") == 1
    assert metric(text, usage, instance=b.url, feature="code_completions") == 1
    tokens = "enclave_gateway_instance_tokens_total"
    assert metric(text, tokens, instance=a.instance_url, feature="duo_chat", direction="output")
    assert metric(text, tokens, instance=b.url, feature="code_completions", direction="input")
    assert metric(text, "enclave_gateway_auth_failures_total", reason="untrusted_issuer") >= 1
    assert metric(text, "enclave_gateway_instance_rate_limit_rps", instance=b.url) == 0.001
    assert ANTHROPIC_KEY not in text

    # B runs out of its own allowance; A, on the same gateway, is still served.
    statuses = [complete(b.url, b.admin_token).status_code for _ in range(B_BURST)]
    assert statuses[-1] == 429, statuses
    text = metrics(world)
    assert metric(text, "enclave_gateway_instance_rate_limited_total", instance=b.url) >= 1
    assert chat(a.instance_url, a.admin_token).status_code == 200

    # The operator removes B from the config file: B's next request is refused (its cached,
    # still valid token included), A keeps going.
    before = metric(text, "enclave_gateway_auth_failures_total", reason="untrusted_issuer")
    shared_port = int(world.shared_url.rsplit(":", 1)[1])
    key_file = world.config.parent / "anthropic.key"
    world.config.write_text(
        gateway_config(shared_port, key_file, world.vendor.base, [world.a_entry])
    )
    deadline = time.monotonic() + 15
    while True:
        refused = chat(b.url, b.admin_token)
        failures = metric(metrics(world), "enclave_gateway_auth_failures_total",
                          reason="untrusted_issuer")  # fmt: skip
        if failures > before or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert failures > before, "B was still trusted 15 s after it was removed"
    assert refused.status_code >= 400
    assert chat(a.instance_url, a.admin_token).status_code == 200

    # The vendor key stayed in the shared gateway's file: in no process's log.
    logs = [world.config.parent / "logs", b.data_dir / "logs", c.data_dir / "logs",
            a.data_dir / "logs"]  # fmt: skip
    for path in (log for folder in logs for log in folder.glob("*.log")):
        assert ANTHROPIC_KEY not in path.read_text(errors="replace"), path
    shared_log = (world.config.parent / "logs" / "shared-gateway.log").read_text()
    assert "gateway_trusted_issuers_reloaded" in shared_log
