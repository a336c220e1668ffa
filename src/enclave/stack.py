"""Where ``enclave up``'s roles listen, recorded in the data dir for every other command.

``enclave up`` may put the instance and the gateway on any port (flags, ``ENCLAVE_*``, the
config file). It writes ``<data-dir>/stack.json`` as soon as it knows the addresses, so that
``enclave doctor``, ``models test``, ``settings show``, ``status`` and the other commands talk
to the stack that runs, not to the defaults (8080, 5052). The record is a settings source
(see :func:`enclave.config.load_settings` with ``stack=True``) below flags and ``ENCLAVE_*``
variables, which still win, and above the config file, which ``up`` may have overridden.

The record applies while that ``enclave up`` runs (its pid is alive and it did not mark the
record stopped): once it stopped, roles started apart are found through the configuration as
before. The file holds no secret (addresses, ports, the supervisor's pid). It is replaced
atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

STACK_FILE: Final = "stack.json"
VERSION: Final = 1


@dataclass(frozen=True)
class StackRecord:
    instance_host: str
    instance_port: int
    instance_url: str
    gateway_host: str
    gateway_port: int
    gateway_url: str
    model_port: int | None
    model_url: str | None
    model_file: str | None  # the GGUF served (None: the bundled model)
    pid: int  # the supervisor (``enclave up``)
    started_at: str
    state: str = "running"  # "stopped" once ``up`` stopped in order

    def settings(self) -> dict[str, Any]:
        """The settings this record implies, as a nested settings dict."""
        instance: dict[str, Any] = {
            "host": self.instance_host,
            "port": self.instance_port,
            "gateway_url": self.gateway_url,
        }
        if self.model_url is not None:
            instance["embedded_model_endpoint"] = self.model_url
        values: dict[str, Any] = {
            "instance": instance,
            "gateway": {
                "host": self.gateway_host,
                "port": self.gateway_port,
                "issuer_url": self.instance_url,
            },
        }
        if self.model_port is not None:
            values["model"] = {"port": self.model_port}
        return values

    def supervisor_alive(self) -> bool:
        if self.state != "running":
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, someone else's
        return True


def stack_file(data_dir: Path) -> Path:
    return data_dir / STACK_FILE


def write_stack(data_dir: Path, record: StackRecord) -> Path:
    """Write the record atomically (temporary file + rename)."""
    path = stack_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": VERSION, **asdict(record)}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def mark_stopped(data_dir: Path, record: StackRecord) -> None:
    fields = {**asdict(record), "state": "stopped"}
    write_stack(data_dir, StackRecord(**fields))


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _port(value: Any) -> int | None:
    return value if isinstance(value, int) and 1 <= value <= 65535 else None


def read_stack(data_dir: Path) -> StackRecord | None:
    """The record in ``data_dir``; None when there is none or it is not one (never raises:
    a broken file must not stop a command, which then uses its configuration)."""
    try:
        raw = json.loads(stack_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        return None
    texts = ("instance_host", "instance_url", "gateway_host", "gateway_url", "started_at")
    if not all(isinstance(raw.get(name), str) for name in texts):
        return None
    instance_port, gateway_port = _port(raw.get("instance_port")), _port(raw.get("gateway_port"))
    if instance_port is None or gateway_port is None or not isinstance(raw.get("pid"), int):
        return None
    model_url, model_file = raw.get("model_url"), raw.get("model_file")
    return StackRecord(
        instance_host=raw["instance_host"],
        instance_port=instance_port,
        instance_url=raw["instance_url"],
        gateway_host=raw["gateway_host"],
        gateway_port=gateway_port,
        gateway_url=raw["gateway_url"],
        model_port=_port(raw.get("model_port")),
        model_url=model_url if isinstance(model_url, str) else None,
        model_file=model_file if isinstance(model_file, str) else None,
        pid=raw["pid"],
        started_at=raw["started_at"],
        state="stopped" if raw.get("state") == "stopped" else "running",
    )
