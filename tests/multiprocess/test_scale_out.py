"""Enclave scaled out (issue 15): 2 instances and 2 gateways, 2 workers each, behind nginx,
on one PostgreSQL and one Redis, all real processes on loopback (``cluster.py``).

In order (one cluster for the module; the last test kills replicas):

1. a representative flow through the balancers: the admin creates a user and a PAT and
   assigns Duo Chat; a code completion through the instance; direct access, then the IDE
   straight at the gateway; a chat;
2. a 10x flood over a per-user limit (direct access, ``DIRECT_ACCESS_LIMIT`` a minute) spread
   over the 4 instance workers admits exactly the limit: tolerance 0, because every worker
   counts in Redis with one atomic script (in process each would admit its own 10: up to 40);
   the same at the 4 gateway workers for the per-user token bucket (burst
   ``GATEWAY_USER_BURST``; tolerance: the refill while the flood lasts, 1 a minute);
3. a PAT revoked on instance 1 (its OpenAI-API token) and a user blocked on instance 2 (their
   direct-access user token) are refused by every gateway replica within
   ``routes_refresh_s + routes_fetch_timeout_s`` (each gateway worker re-reads the
   revocations on its own);
4. SIGKILL of one replica of each role (with its workers) under load loses no request:
   non-streamed completions are retried by nginx on the other replica, whether the killed
   one refused the connection or dropped it mid-request (``proxy_next_upstream error timeout
   http_502 non_idempotent``; the request body is buffered, so POSTs can be sent again). Not
   retryable, and not sent here: a streamed answer whose first bytes have reached the client
   (nginx cannot take them back); a client that talks to a replica directly, bypassing the
   balancer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from enclave.instance.bootstrap import EMBEDDED_MODEL_NAME
from enclave.model.tiny_gguf import TINY_ANSWER
from tests.multiprocess.cluster import (
    DIRECT_ACCESS_LIMIT,
    GATEWAY_USER_BURST,
    GATEWAY_USER_RPM,
    REVOCATION_BOUND_S,
    Cluster,
)
from tests.multiprocess.conftest import SUMMARY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TIMEOUT_S = 120
ADMIN = "/api/v4/admin/ai"
COMPLETION = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
}
IDE_BODY = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "",
    },
    "prompt_version": 2,
    "prompt": "",
    "stream": False,
}


def admin(cluster: Cluster) -> dict[str, str]:
    return {"PRIVATE-TOKEN": cluster.admin_token}


def new_user_token(cluster: Cluster, name: str) -> tuple[int, int, str]:
    """A new user's PAT (ai_features), made through the instance balancer:
    (user id, PAT id, token)."""
    user = httpx.post(
        f"{cluster.instance_url}/api/v4/users",
        json={"username": name, "email": f"{name}@example.test"},
        headers=admin(cluster),
        timeout=TIMEOUT_S,
    )
    assert user.status_code == 201, user.text
    pat = httpx.post(
        f"{cluster.instance_url}/api/v4/users/{user.json()['id']}/personal_access_tokens",
        json={"name": "ide", "scopes": ["ai_features"]},
        headers=admin(cluster),
        timeout=TIMEOUT_S,
    )
    assert pat.status_code == 201, pat.text
    return int(user.json()["id"]), int(pat.json()["id"]), str(pat.json()["token"])


def direct_access(cluster: Cluster, token: str) -> dict[str, Any]:
    response = httpx.post(
        f"{cluster.instance_url}/api/v4/code_suggestions/direct_access",
        headers={"PRIVATE-TOKEN": token},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def at_gateway(access: dict[str, Any], base_url: str | None = None) -> httpx.Response:
    """The IDE's completion straight at a gateway (a fresh connection each time)."""
    return httpx.post(
        f"{base_url or access['base_url']}/v2/code/completions",
        json=IDE_BODY,
        headers={**access["headers"], "Authorization": f"Bearer {access['token']}"},
        timeout=TIMEOUT_S,
    )


def metric_line(url: str, name: str) -> str:
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT_S).text
    return next((line for line in text.splitlines() if line.startswith(name + " ")), "")


def test_a_developer_flow_through_the_balancers(cluster: Cluster) -> None:
    _, _, token = new_user_token(cluster, "dev")
    models = httpx.get(
        f"{cluster.instance_url}{ADMIN}/self_hosted_models",
        headers=admin(cluster),
        timeout=TIMEOUT_S,
    ).json()
    [embedded] = [m for m in models if m["name"] == EMBEDDED_MODEL_NAME]
    for feature in ("code_completions", "duo_chat"):
        assigned = httpx.put(
            f"{cluster.instance_url}{ADMIN}/feature_settings/{feature}",
            json={"provider": "self_hosted", "self_hosted_model_id": embedded["id"]},
            headers=admin(cluster),
            timeout=TIMEOUT_S,
        )
        assert assigned.status_code == 200, assigned.text
    # Consecutive requests land on different instance replicas: each reads the shared DB.
    for _ in range(4):
        completion = httpx.post(
            f"{cluster.instance_url}/api/v4/code_suggestions/completions",
            json=COMPLETION,
            headers={"PRIVATE-TOKEN": token},
            timeout=TIMEOUT_S,
        )
        assert completion.status_code == 200, completion.text
        assert completion.json()["choices"][0]["text"] == TINY_ANSWER
    access = direct_access(cluster, token)
    assert access["base_url"] == cluster.gateway_url
    deadline = time.monotonic() + 30
    while (response := at_gateway(access)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)  # a gateway worker that has not read the routes yet
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == TINY_ANSWER
    chat = httpx.post(
        f"{cluster.instance_url}/api/v4/chat/completions",
        json={"content": "How do I add two numbers?"},
        headers={"PRIVATE-TOKEN": token},
        timeout=TIMEOUT_S,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json() == TINY_ANSWER
    for name, url in cluster.replica_urls.items():
        role = "instance" if name.startswith("instance") else "gateway"
        assert metric_line(url, f"enclave_{role}_redis_up").endswith(" 1.0"), name
    SUMMARY["flow"] = "passed"


def test_a_10x_flood_admits_exactly_the_limit_across_replicas(cluster: Cluster) -> None:
    _, _, token = new_user_token(cluster, "flooder")
    sent = 10 * DIRECT_ACCESS_LIMIT

    def one(_: int) -> httpx.Response:
        # A fresh connection each: nginx spreads them over both replicas, the kernel over
        # each replica's workers.
        return httpx.post(
            f"{cluster.instance_url}/api/v4/code_suggestions/direct_access",
            headers={"PRIVATE-TOKEN": token},
            timeout=TIMEOUT_S,
        )

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(sent)))
    statuses = [r.status_code for r in responses]
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}, [r.text for r in responses if r.status_code >= 500]
    assert admitted == DIRECT_ACCESS_LIMIT  # tolerance 0: one atomic count for all workers
    refused = [r for r in responses if r.status_code == 429]
    assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in refused)
    assert "requests per minute per user" in refused[0].json()["message"]
    SUMMARY["instance flood"] = (
        f"{sent} sent, {admitted} admitted (limit {DIRECT_ACCESS_LIMIT}, +0)"
    )


def test_a_10x_flood_at_the_gateways_admits_the_burst(cluster: Cluster) -> None:
    _, _, token = new_user_token(cluster, "gwflooder")
    access = direct_access(cluster, token)
    sent = 10 * GATEWAY_USER_BURST
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: at_gateway(access), range(sent)))
    elapsed = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}, [r.text for r in responses if r.status_code >= 500]
    # The tolerance is the refill while the flood lasted: 1 token a minute, so at most 1 for
    # a flood under a minute.
    tolerance = int(GATEWAY_USER_RPM * elapsed / 60) + 1
    assert GATEWAY_USER_BURST <= admitted <= GATEWAY_USER_BURST + tolerance, admitted
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    SUMMARY["gateway flood"] = (
        f"{sent} sent, {admitted} admitted (burst {GATEWAY_USER_BURST}, +{tolerance} allowed)"
    )


def openai_access(cluster: Cluster, token: str) -> str:
    """A token for the gateway's OpenAI-compatible API; it carries its PAT's id."""
    response = httpx.post(
        f"{cluster.instance_url}/api/v4/ai/openai/direct_access",
        headers={"PRIVATE-TOKEN": token},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def models_at(gateway: str, token: str) -> int:
    """GET /v1/models at one gateway replica, on a fresh connection: the status."""
    return httpx.get(
        f"{gateway}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT_S
    ).status_code


def seconds_until_refused(gateways: list[str], refused: Callable[[str], bool]) -> float:
    """Seconds from now until every gateway refuses: a gateway counts once 6 requests in a
    row on fresh connections (spread over its 2 workers by the kernel) are refused; the time
    is when that streak began."""
    started = time.monotonic()
    streak = dict.fromkeys(gateways, 0)
    since = dict.fromkeys(gateways, started)
    while min(streak.values()) < 6:
        assert time.monotonic() - started < REVOCATION_BOUND_S + 15, streak
        for url in gateways:
            asked = time.monotonic()
            if refused(url):
                if streak[url] == 0:
                    since[url] = asked
                streak[url] += 1
            else:
                streak[url] = 0
    return max(since.values()) - started


def test_a_revocation_on_one_instance_reaches_every_gateway(cluster: Cluster) -> None:
    gateways = [cluster.replica_urls[g.name] for g in cluster.gateways]
    # A PAT revoked on instance 1: the OpenAI-API token made from it stops working.
    _, pat_id, token = new_user_token(cluster, "leaver")
    oai_token = openai_access(cluster, token)
    deadline = time.monotonic() + 30
    while not all(models_at(g, oai_token) == 200 for g in gateways):
        assert time.monotonic() < deadline, "the gateways never loaded the routes"
        time.sleep(0.5)
    revoked = httpx.delete(
        f"{cluster.replica_urls['instance-1']}/api/v4/personal_access_tokens/{pat_id}",
        headers=admin(cluster),
        timeout=TIMEOUT_S,
    )
    assert revoked.status_code == 204, revoked.text
    pat_s = seconds_until_refused(gateways, lambda g: models_at(g, oai_token) == 401)
    # A user blocked on instance 2: the direct-access user token made for them stops working.
    user_id, _, token = new_user_token(cluster, "blocked")
    access = direct_access(cluster, token)
    assert all(at_gateway(access, g).status_code == 200 for g in gateways)
    blocked = httpx.post(
        f"{cluster.replica_urls['instance-2']}/api/v4/users/{user_id}/block",
        headers=admin(cluster),
        timeout=TIMEOUT_S,
    )
    assert blocked.status_code == 201, blocked.text
    block_s = seconds_until_refused(gateways, lambda g: at_gateway(access, g).status_code == 401)
    # One probe round of slack: a refusal is seen at the first probe after it starts.
    assert pat_s <= REVOCATION_BOUND_S + 1, f"{pat_s:.1f} s"
    assert block_s <= REVOCATION_BOUND_S + 1, f"{block_s:.1f} s"
    SUMMARY["revocation"] = (
        f"PAT revoked / user blocked enforced by every gateway after {pat_s:.1f} s / "
        f"{block_s:.1f} s (bound {REVOCATION_BOUND_S:g} s)"
    )


def test_killing_one_replica_of_each_role_mid_load_loses_nothing(cluster: Cluster) -> None:
    total, killed_after = 48, 8
    # 4 users, 12 completions each: under the gateway's per-user burst.
    tokens = [new_user_token(cluster, f"load{n}")[2] for n in range(4)]
    done = threading.Semaphore(0)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        try:
            response = httpx.post(
                f"{cluster.instance_url}/api/v4/code_suggestions/completions",
                json=COMPLETION,
                headers={"PRIVATE-TOKEN": tokens[n % len(tokens)]},
                timeout=TIMEOUT_S,
            )
            outcome = (response.status_code, response.text[:200])
        except httpx.HTTPError as exc:
            outcome = (0, type(exc).__name__)
        with lock:
            results.append(outcome)
        done.release()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, n) for n in range(total)]
        for _ in range(killed_after):
            done.acquire()
        cluster.kill(cluster.instances[1])
        cluster.kill(cluster.gateways[1])
        for future in futures:
            future.result()
    lost = [outcome for outcome in results if outcome[0] != 200]
    assert lost == [], lost
    assert not cluster.instances[1].alive() and not cluster.gateways[1].alive()
    SUMMARY["kill"] = (
        f"{total} completions, instance-2 and gateway-2 SIGKILLed after {killed_after}: "
        f"{len(lost)} lost"
    )
