"""The uvicorn factory: settings from the environment, JSON logs, no secret in them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.unit.instance.conftest import EMBEDDED_ENDPOINT, MODEL_API_KEY, write_model_api_key

SCRIPT = """
import json, warnings
warnings.simplefilter("ignore")
from fastapi.testclient import TestClient
from enclave.instance.app import create_app_from_env
paths = ["/.well-known/openid-configuration", "/oauth/discovery/keys", "/-/readiness",
         "/api/v4/user", "/docs", "/openapi.json"]
# From loopback: the instance checks client addresses (TestClient's default is "testclient").
with TestClient(create_app_from_env(), client=("127.0.0.1", 50000)) as client:
    print(json.dumps({path: client.get(path).status_code for path in paths}))
    docs = client.get("/docs")
    print(json.dumps({"csp": docs.headers["content-security-policy"], "page": docs.text}))
"""


def run_factory(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(
        {
            "ENCLAVE_DATA_DIR": str(data_dir),
            "ENCLAVE_INSTANCE__EMBEDDED_MODEL_ENDPOINT": EMBEDDED_ENDPOINT,
        }
    )
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_factory_builds_the_app_from_the_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_model_api_key(data_dir)
    result = run_factory(data_dir)
    statuses, docs = (json.loads(line) for line in result.stdout.splitlines())
    assert statuses == {
        "/.well-known/openid-configuration": 200,
        "/oauth/discovery/keys": 200,
        "/-/readiness": 200,
        "/api/v4/user": 401,
        "/docs": 200,
        "/openapi.json": 200,
    }
    # The docs page works air-gapped: no script, nothing loaded from elsewhere (no CDN).
    assert "<script" not in docs["page"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", docs["page"])
    assert "default-src 'none'" in docs["csp"]
    assert "/api/v4/code_suggestions/completions" in docs["page"]
    token = (data_dir / "admin-token.txt").read_text().strip()
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines, "the factory logged nothing"
    assert all(line["component"] == "instance" for line in lines)
    assert all({"ts", "level", "event"} <= set(line) for line in lines)
    events = [line["event"] for line in lines]
    assert "admin_created" in events and "instance_initialised" in events
    created = next(line for line in lines if line["event"] == "admin_created")
    assert created["path"] == str(data_dir / "admin-token.txt")
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 7
    assert {"method", "route", "status", "duration_ms", "request_id"} <= set(requests[0])
    assert token not in result.stderr
    assert MODEL_API_KEY not in result.stderr
    # Second start: same token file, still nothing secret logged.
    again = run_factory(data_dir)
    assert (data_dir / "admin-token.txt").read_text().strip() == token
    again_events = [json.loads(line)["event"] for line in again.stderr.splitlines() if line]
    assert "admin_created" not in again_events and "instance_initialised" in again_events
    assert token not in again.stderr
