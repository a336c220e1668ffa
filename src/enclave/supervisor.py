"""``enclave up``: run the model, the instance and the gateway as child processes.

Each role runs in its own process (``python -m enclave <role>``), exactly as it would in a
production deployment, so ``up`` exercises the real network path: IDE → instance → gateway →
model, all over loopback. The supervisor starts them in dependency order (the instance needs the
model's URL, the gateway needs the instance's keys), waits for each to report ready, and stops
them in reverse order on Ctrl-C.

A role that dies afterwards is restarted with exponential backoff (:class:`RestartPolicy`) while
the others keep serving: a model crash makes the instance and gateway answer "model unavailable"
errors for a few seconds instead of taking everything down. The model comes back on the same
port (recorded in the data dir, see :func:`choose_model_port`), so the endpoint stored in the
instance stays right.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from enclave.common.net import free_port, http_ok
from enclave.stack import StackRecord, now_text

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


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``port`` now. SO_REUSEADDR as servers set it (llama.cpp's
    does): connections of a previous run lingering in TIME_WAIT do not make it taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_model_port(record: Path, requested: int = 0) -> int:
    """The embedded model's port: ``requested`` if given, else the one recorded in ``record``
    when it is free, else a new free one; recorded for the next ``enclave up``.

    The instance stores the model's endpoint (``embedded-smollm2``); a port that stays the same
    across runs keeps that record right, and within one run restarts reuse the port anyway.
    """
    port = requested
    if not port:
        try:
            recorded = int(record.read_text().strip())
        except (OSError, ValueError):
            recorded = 0
        port = recorded if 1024 <= recorded <= 65535 and port_is_free(recorded) else free_port()
    record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record.write_text(f"{port}\n")
    return port


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
        if self._log_file is not None:  # a restart: the previous run's handle
            self._log_file.close()
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

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def exit_code(self) -> int | None:
        """The exit status (negative: killed by that signal), None while running."""
        return self.process.poll() if self.process is not None else None

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
    instance_host: str = "127.0.0.1"
    instance_port: int = 8080
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 5052
    model_port: int = 0

    @property
    def roles(self) -> list[Role]:
        return [self.model, self.instance, self.gateway]


def stack_record(plan: Plan, gguf: Path | None) -> StackRecord:
    """What ``enclave up`` records in the data dir for the other commands (enclave.stack)."""
    return StackRecord(
        instance_host=plan.instance_host,
        instance_port=plan.instance_port,
        instance_url=plan.instance_url,
        gateway_host=plan.gateway_host,
        gateway_port=plan.gateway_port,
        gateway_url=plan.gateway_url,
        model_port=plan.model_port,
        model_url=plan.model_url,
        model_file=str(gguf) if gguf is not None else None,
        pid=os.getpid(),
        started_at=now_text(),
    )


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
        env={
            "ENCLAVE_GATEWAY__ISSUER_URL": instance_url,
            # Calls to the embedded model get its per-feature output caps (output_caps.py).
            "ENCLAVE_GATEWAY__EMBEDDED_MODEL_ENDPOINT": model_url,
        },
    )
    if routes_secret_file is not None:
        instance.env["ENCLAVE_INSTANCE__GATEWAY_ROUTES_SECRET_FILE"] = str(routes_secret_file)
        gateway.env["ENCLAVE_GATEWAY__GATEWAY_ROUTES_SECRET_FILE"] = str(routes_secret_file)
    if model_egress_allow is not None:
        allow = json.dumps(model_egress_allow)
        instance.env["ENCLAVE_INSTANCE__MODEL_EGRESS_ALLOW"] = allow
        gateway.env["ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW"] = allow
    return Plan(
        model,
        instance,
        gateway,
        instance_url,
        gateway_url,
        model_url,
        instance_host,
        instance_port,
        gateway_host,
        gateway_port,
        model_port,
    )


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
    base_env = _base_env(env)
    try:
        for role in plan.roles:
            role.start(log_dir, base_env)
            _wait_ready(role, on_progress)
    except BaseException:
        stop_all(plan)
        raise


def _base_env(env: dict[str, str] | None) -> dict[str, str]:
    base_env = dict(env if env is not None else os.environ)
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    return base_env


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


# -- keeping the roles up ---------------------------------------------------------------------


@dataclass
class RestartPolicy:
    """When to restart a role that died, and when to give up.

    Exponential backoff (``initial_s`` doubling up to ``cap_s``) so that a role that crashes
    at once again does not spin the CPU, while a one-off crash is retried within a second. A
    run that lasted ``stable_s`` resets the backoff: a crash a day is always retried quickly.
    After ``max_attempts`` crashes in a row without a stable run (about 3 minutes of trying
    with the defaults) the supervisor gives up and stops everything with the role's log: such
    a role is broken (bad config, port taken, model file gone) and a loop that hides it helps
    nobody. ``clock`` is injectable for tests.
    """

    initial_s: float = 1.0
    cap_s: float = 30.0
    stable_s: float = 60.0
    max_attempts: int = 10
    clock: Callable[[], float] = time.monotonic
    attempt: int = 0  # crashes in a row without a stable run

    def on_exit(self, started_at: float) -> float | None:
        """The delay before restarting a role that started at ``started_at`` and just died;
        None to give up."""
        if self.clock() - started_at >= self.stable_s:
            self.attempt = 0
        self.attempt += 1
        if self.attempt > self.max_attempts:
            return None
        return float(min(self.cap_s, self.initial_s * 2 ** (self.attempt - 1)))


EventSink = Callable[[str, dict[str, Any]], None]


@dataclass
class _Watch:
    """The supervisor's view of one role after start-up."""

    role: Role
    policy: RestartPolicy
    started_at: float
    restart_at: float | None = None  # set while it waits to be restarted
    waiting_ready: bool = False
    exited_at: float = 0.0


def supervise(
    plan: Plan,
    log_dir: Path,
    on_event: EventSink,
    env: dict[str, str] | None = None,
    policy_factory: Callable[[], RestartPolicy] = RestartPolicy,
    poll_s: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
) -> Role:
    """Keep every role running: restart the ones that die, with backoff, the others untouched.

    Blocks until a role exceeds its policy's attempts; returns it (the caller stops the rest).
    Ctrl-C raises KeyboardInterrupt as usual, whatever the loop is doing (it never blocks for
    long: a restarted role's readiness is polled here, not waited for).
    Events (``role_exited``, ``role_restarting``, ``role_restarted``, ``role_gave_up``) go to
    ``on_event`` with the role, its exit code and the attempt.
    """
    base_env = _base_env(env)
    now = clock()
    watches = [_Watch(role, policy_factory(), now) for role in plan.roles]
    while True:
        for item in watches:
            role = item.role
            now = clock()
            if item.restart_at is not None:
                if now >= item.restart_at:
                    item.restart_at = None
                    role.start(log_dir, base_env)
                    item.started_at, item.waiting_ready = now, True
                    on_event(
                        "role_restarting",
                        {"role": role.name, "attempt": item.policy.attempt, "pid": role.pid},
                    )
                continue
            if not role.alive():
                code = role.exit_code
                delay = item.policy.on_exit(item.started_at)
                fields = {"role": role.name, "exit_code": code, "attempt": item.policy.attempt}
                if delay is None:
                    on_event("role_gave_up", fields)
                    return role
                on_event("role_exited", {**fields, "restart_in_s": delay})
                item.restart_at, item.exited_at, item.waiting_ready = now + delay, now, False
                continue
            if item.waiting_ready and http_ok(role.ready_url, timeout=0.5):
                item.waiting_ready = False
                on_event(
                    "role_restarted",
                    {
                        "role": role.name,
                        "attempt": item.policy.attempt,
                        "pid": role.pid,
                        "down_s": round(now - item.exited_at, 2),
                    },
                )
        time.sleep(poll_s)


def stop_all(plan: Plan) -> None:
    """Stop in reverse order: the gateway first, so no request reaches a stopped model."""
    for role in reversed(plan.roles):
        role.stop()
