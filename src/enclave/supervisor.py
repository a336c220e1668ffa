"""``enclave up``: run the model, the instance and the gateway as child processes.

Each role runs in its own process (``python -m enclave <role>``), exactly as it would in a
production deployment, so ``up`` exercises the real network path: IDE → instance → gateway →
model, all over loopback. The supervisor starts them in dependency order (the instance needs the
model's URL, the gateway needs the instance's keys), waits for each to report ready, and stops
them in reverse order on Ctrl-C or when one of them dies.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from enclave.common.net import free_port, http_ok

# Routes secret: "enclkey-" makes the log redaction recognise it wherever it might appear.
ROUTES_SECRET_PREFIX = "enclkey-routes-"  # noqa: S105 - a prefix


def ensure_routes_secret(path: Path) -> Path:
    """Create the instance↔gateway routes secret at ``path`` (0600) unless it exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path  # generated once; both roles keep reading the same file
    with os.fdopen(fd, "w") as handle:
        handle.write(ROUTES_SECRET_PREFIX + secrets.token_urlsafe(32) + "\n")
    return path


class StartupFailed(RuntimeError):
    """A role did not become ready; the message says which and shows its last log lines."""


def _terminate_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the supervisor dies."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Role:
    """One child process: how to start it and how to tell that it is ready."""

    name: str
    args: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 120.0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log_file: IO[bytes] | None = None

    def start(self, log_dir: Path, base_env: dict[str, str]) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "enclave", *self.args],
            env={**base_env, **self.env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: Ctrl-C reaches the supervisor only, which then stops the
            # children in order instead of all of them dying at once mid-request.
            start_new_session=True,
            # ... but if the supervisor itself is killed, the children must not live on.
            preexec_fn=_terminate_with_parent,  # only calls prctl (safe before exec)
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass
class Plan:
    """What ``enclave up`` will run, with the addresses it will print."""

    model: Role
    instance: Role
    gateway: Role
    instance_url: str
    gateway_url: str
    model_url: str

    @property
    def roles(self) -> list[Role]:
        return [self.model, self.instance, self.gateway]


def make_plan(
    *,
    instance_host: str,
    instance_port: int,
    gateway_host: str,
    gateway_port: int,
    model_port: int = 0,
    gguf: Path | None = None,
    config_args: list[str] | None = None,
    routes_secret_file: Path | None = None,
    model_egress_allow: list[str] | None = None,
) -> Plan:
    """Build the three roles. The model gets a free loopback port unless one is given.

    ``routes_secret_file`` (see :func:`ensure_routes_secret`) is given to the instance and the
    gateway: with it the gateway reads the feature→model routes for its OpenAI-compatible API.
    ``model_egress_allow`` goes to both as well, so that the instance saves exactly the model
    endpoints the gateway will call.
    """
    common = config_args or []
    model_port = model_port or free_port()
    model_url = f"http://127.0.0.1:{model_port}/v1"
    instance_url = f"http://{_client_host(instance_host)}:{instance_port}"
    gateway_url = f"http://{_client_host(gateway_host)}:{gateway_port}"
    model_args = [*common, "model", "--port", str(model_port)]
    if gguf is not None:
        model_args += ["--gguf", str(gguf)]
    model = Role("model", model_args, f"http://127.0.0.1:{model_port}/health")
    instance = Role(
        "instance",
        [*common, "instance", "--host", instance_host, "--port", str(instance_port)],
        f"{instance_url}/-/readiness",
        env={
            "ENCLAVE_INSTANCE__EMBEDDED_MODEL_ENDPOINT": model_url,
            "ENCLAVE_INSTANCE__GATEWAY_URL": gateway_url,
        },
    )
    gateway = Role(
        "gateway",
        [*common, "gateway", "--host", gateway_host, "--port", str(gateway_port)],
        f"{gateway_url}/monitoring/ready",
        env={"ENCLAVE_GATEWAY__ISSUER_URL": instance_url},
    )
    if routes_secret_file is not None:
        instance.env["ENCLAVE_INSTANCE__GATEWAY_ROUTES_SECRET_FILE"] = str(routes_secret_file)
        gateway.env["ENCLAVE_GATEWAY__GATEWAY_ROUTES_SECRET_FILE"] = str(routes_secret_file)
    if model_egress_allow is not None:
        allow = json.dumps(model_egress_allow)
        instance.env["ENCLAVE_INSTANCE__MODEL_EGRESS_ALLOW"] = allow
        gateway.env["ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW"] = allow
    return Plan(model, instance, gateway, instance_url, gateway_url, model_url)


def _client_host(bind_host: str) -> str:
    """Where a local client reaches a server bound to ``bind_host``."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "", "::") else bind_host


def start_all(
    plan: Plan,
    log_dir: Path,
    on_progress: Callable[[str, float], None],
    env: dict[str, str] | None = None,
) -> None:
    """Start every role in order and wait until each is ready; stop them all on failure."""
    base_env = dict(env if env is not None else os.environ)
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        for role in plan.roles:
            role.start(log_dir, base_env)
            _wait_ready(role, on_progress)
    except BaseException:
        stop_all(plan)
        raise


def _wait_ready(role: Role, on_progress: Callable[[str, float], None]) -> None:
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if not role.alive():
            raise StartupFailed(
                f"the {role.name} exited during start-up (log: {role.log_path}):\n{role.log_tail()}"
            )
        if http_ok(role.ready_url, timeout=1.0):
            return
        if elapsed > role.ready_timeout_s:
            raise StartupFailed(
                f"the {role.name} was not ready after {role.ready_timeout_s:.0f} s "
                f"({role.ready_url}); log: {role.log_path}:\n{role.log_tail()}"
            )
        on_progress(role.name, elapsed)
        time.sleep(0.2)


def watch(plan: Plan, poll_s: float = 0.5) -> Role:
    """Block until a role exits; return it. Ctrl-C raises KeyboardInterrupt as usual."""
    while True:
        for role in plan.roles:
            if not role.alive():
                return role
        time.sleep(poll_s)


def stop_all(plan: Plan) -> None:
    """Stop in reverse order: the gateway first, so no request reaches a stopped model."""
    for role in reversed(plan.roles):
        role.stop()
