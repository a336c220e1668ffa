"""``enclave status``: the roles of the stack, where they listen, whether they answer, and the
model — from what ``enclave up`` recorded in the data dir (:mod:`enclave.stack`), else from the
configuration. Read-only; it never starts anything and sends no token."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from enclave.config import EnclaveSettings
from enclave.stack import StackRecord, read_stack

HEALTH_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class RoleStatus:
    role: str
    url: str
    health_url: str
    healthy: bool
    detail: str

    def view(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "url": self.url,
            "healthy": self.healthy,
            "detail": self.detail,
        }


def probe(url: str) -> tuple[bool, str]:
    """Whether ``url`` answers 2xx, and what it said otherwise (never a body: no secrets)."""
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:  # noqa: S310 - configured loopback/admin URL
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"no answer at {url} ({reason})"
    if 200 <= status < 300:
        return True, "ready"
    return False, f"{url} answered HTTP {status}"


def _model_url(settings: EnclaveSettings, record: StackRecord | None) -> str | None:
    if record is not None and record.model_url:
        return record.model_url
    return settings.instance.embedded_model_endpoint


def stack_status(settings: EnclaveSettings) -> dict[str, Any]:
    """Every role's address and health, and the model served (settings from
    ``load_settings(stack=True)``, so the recorded stack is already in them)."""
    record = read_stack(settings.data_dir)
    instance_url = settings.instance.issuer()
    gateway_url = settings.instance.gateway_url.rstrip("/")
    roles = [("instance", instance_url, f"{instance_url}/-/readiness")]
    roles.append(("gateway", gateway_url, f"{gateway_url}/monitoring/ready"))
    model_url = _model_url(settings, record)
    if model_url is not None:
        base = model_url.rstrip("/").removesuffix("/v1")
        roles.append(("model", model_url, f"{base}/health"))
    statuses = []
    for role, url, health_url in roles:
        healthy, detail = probe(health_url)
        statuses.append(RoleStatus(role, url, health_url, healthy, detail))
    if record is None:
        source = "configuration (no enclave up recorded in this data dir)"
        supervisor = None
    elif not record.supervisor_alive():
        source = (
            f"configuration (the enclave up of {record.started_at} is stopped; it listened on "
            f"{record.instance_url} and {record.gateway_url})"
        )
        supervisor = {"pid": record.pid, "running": False}
    else:
        source = f"{settings.data_dir / 'stack.json'} (enclave up, started {record.started_at})"
        supervisor = {"pid": record.pid, "running": record.supervisor_alive()}
    model_file = record.model_file if record is not None and record.model_file else None
    return {
        "source": source,
        "supervisor": supervisor,
        "roles": [s.view() for s in statuses],
        "model": {
            "file": model_file or str(settings.model.gguf or "bundled SmolLM2-135M-Instruct"),
            "served_name": settings.model.served_name,
            "identifier": settings.instance.default_model_identifier,
            "family": settings.instance.default_model_family,
        },
        "healthy": all(s.healthy for s in statuses),
    }
