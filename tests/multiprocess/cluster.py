"""A scaled-out Enclave on loopback: the topology of the README's "Scaling out".

* one PostgreSQL (the instance database) and one Redis (shared limits), test servers;
* one model server (the tiny GGUF, llama.cpp);
* 2 instance replicas and 2 gateway replicas, each ``python -m enclave <role>`` with 2
  workers, each its own process group (so SIGKILL of a replica takes its workers with it);
* nginx in front of each role (one port per role), configured here: round robin, a replica
  that refuses or drops a connection is skipped and the request retried on the other
  (``proxy_next_upstream error timeout http_502 non_idempotent``).

Replicas of a role share what must be the same everywhere, as a deployment shares a volume
and Secrets: the data dir (instance signing keys, the gateway's user-token key, the secret
key, the routes secret) and the database and Redis URLs. Both instances sign as the balancer's
URL (``external_url``), which is also the gateway's issuer and the instances' ``gateway_url``
points at the gateway balancer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from enclave.common.net import free_port, http_ok
from enclave.supervisor import Role, ensure_routes_secret
from tests.redis_server import RedisServer, redis_binary, redis_server
from tests.unit.instance.pg import find_bin_dir, postgres_server

NGINX = "/usr/sbin/nginx"
ENV_SWITCH = "ENCLAVE_TEST_SCALE_OUT"
SWITCH = os.environ.get(ENV_SWITCH, "").strip().lower()
# The gateway re-reads routes and revocations this often in the test (30 s by default), and
# gives up on one fetch after this long: a revocation reaches every gateway worker within
# their sum.
ROUTES_REFRESH_S = 2.0
ROUTES_FETCH_TIMEOUT_S = 2.0
REVOCATION_BOUND_S = ROUTES_REFRESH_S + ROUTES_FETCH_TIMEOUT_S
DIRECT_ACCESS_LIMIT = 10  # per user per minute: the instance limit the flood test floods
# The gateway's per-user bucket: a burst of 20, then 1 a minute (so a flood of a few seconds
# may see at most 1 token more than the burst).
GATEWAY_USER_BURST = 20
GATEWAY_USER_RPM = 1
WORKERS = 2
READY_TIMEOUT_S = 180.0


def missing_binaries() -> list[str]:
    missing = []
    if not Path(NGINX).exists():
        missing.append("nginx (Debian package nginx-light)")
    if redis_binary() is None:
        missing.append("redis-server")
    if find_bin_dir() is None:
        missing.append("postgresql")
    return missing


def scale_out_wanted() -> tuple[bool, str]:
    """Whether to run (binaries present, or ENCLAVE_TEST_SCALE_OUT=1 to fail when absent)."""
    if SWITCH in ("0", "false", "no", "off"):
        return False, f"{ENV_SWITCH}={SWITCH}"
    missing = missing_binaries()
    if not missing or SWITCH in ("1", "true", "yes", "on"):
        return True, ""
    return False, f"missing {', '.join(missing)}"


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    client_max_body_size 16m;
{upstreams}
}}
"""

UPSTREAM = """\
    upstream {name} {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{name};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # A replica that refuses, drops or times out a request: try the other one, POSTs
            # included (the request body is buffered, so nginx can send it again). Once the
            # answer has begun reaching the client nothing can be retried.
            proxy_next_upstream error timeout http_502 non_idempotent;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;
            proxy_buffering off;
        }}
    }}
"""


@dataclass
class Nginx:
    root: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_nginx(balancers: dict[str, tuple[int, list[int]]]) -> Nginx:
    """nginx on loopback: for each role name, its listening port and its replicas' ports."""
    root = Path(tempfile.mkdtemp(prefix="enclave-nginx-"))
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / "tmp" / sub).mkdir(parents=True)
    # nginx started as root runs its worker as nobody: it must reach the temp folders.
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)
    upstreams = "".join(
        UPSTREAM.format(
            name=name,
            port=port,
            servers="\n".join(
                f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in replicas
            ),
        )
        for name, (port, replicas) in balancers.items()
    )
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, upstreams=upstreams))
    process = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(root), "-e", str(root / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nginx = Nginx(root, process)
    deadline = time.monotonic() + 20
    while not all(_listening(port) for port, _ in balancers.values()):
        if process.poll() is not None or time.monotonic() > deadline:
            nginx.stop()
            raise RuntimeError(f"nginx did not start:\n{(root / 'error.log').read_text()}")
        time.sleep(0.1)
    return nginx


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Cluster:
    data_dir: Path
    log_dir: Path
    instance_url: str  # the balancer
    gateway_url: str  # the balancer
    model_url: str
    instances: list[Role]
    gateways: list[Role]
    model: Role
    nginx: Nginx
    redis: RedisServer
    replica_urls: dict[str, str] = field(default_factory=dict)

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token.txt").read_text().strip()

    def kill(self, role: Role) -> None:
        """SIGKILL the replica and its workers (its own process group): a crash, no goodbye."""
        assert role.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(role.process.pid, signal.SIGKILL)
        role.process.wait(10)

    def roles(self) -> list[Role]:
        return [*self.gateways, *self.instances, self.model]


def _start(role: Role, log_dir: Path, env: dict[str, str]) -> None:
    role.ready_timeout_s = READY_TIMEOUT_S
    role.start(log_dir, env)


def _wait_ready(role: Role) -> None:
    deadline = time.monotonic() + role.ready_timeout_s
    while not http_ok(role.ready_url, timeout=2.0):
        if not role.alive():
            raise RuntimeError(f"{role.name} exited during start-up:\n{role.log_tail(40)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{role.name} not ready ({role.ready_url}):\n{role.log_tail(40)}")
        time.sleep(0.3)


@contextlib.contextmanager
def running_cluster(gguf: Path) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="enclave-scale-"))
    data_dir, log_dir = root / "data", root / "logs"
    data_dir.mkdir()
    ports = {name: free_port() for name in ("lb_instance", "lb_gateway", "model")}
    instance_ports = [free_port() for _ in range(2)]
    gateway_ports = [free_port() for _ in range(2)]
    instance_url = f"http://127.0.0.1:{ports['lb_instance']}"
    gateway_url = f"http://127.0.0.1:{ports['lb_gateway']}"
    model_url = f"http://127.0.0.1:{ports['model']}/v1"
    secret = ensure_routes_secret(data_dir / "keys" / "gateway-routes.secret")
    started: list[Role] = []
    nginx: Nginx | None = None
    with postgres_server() as postgres, redis_server() as redis:
        try:
            base = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
            env = {
                **base,
                "PYTHONUNBUFFERED": "1",
                "ENCLAVE_DATA_DIR": str(data_dir),
                "ENCLAVE_DATABASE_URL": postgres.create_database(),
                "ENCLAVE_REDIS_URL": redis.url,
                # The CI box has 2 cores for a dozen processes: Redis answers in < 1 ms, but
                # a worker may wait for the CPU; the 0.1 s default is for real servers.
                "ENCLAVE_REDIS_TIMEOUT_S": "0.5",
                "ENCLAVE_MODEL__THREADS": "1",
                "ENCLAVE_INSTANCE__WORKERS": str(WORKERS),
                "ENCLAVE_INSTANCE__EXTERNAL_URL": instance_url,
                "ENCLAVE_INSTANCE__GATEWAY_URL": gateway_url,
                "ENCLAVE_INSTANCE__EMBEDDED_MODEL_ENDPOINT": model_url,
                "ENCLAVE_INSTANCE__GATEWAY_ROUTES_SECRET_FILE": str(secret),
                "ENCLAVE_INSTANCE__CODE_SUGGESTIONS_DIRECT_ACCESS_RATE_LIMIT": str(
                    DIRECT_ACCESS_LIMIT
                ),
                "ENCLAVE_INSTANCE__CODE_SUGGESTIONS_API_RATE_LIMIT": "10000",
                "ENCLAVE_GATEWAY__WORKERS": str(WORKERS),
                "ENCLAVE_GATEWAY__ISSUER_URL": instance_url,
                "ENCLAVE_GATEWAY__GATEWAY_ROUTES_SECRET_FILE": str(secret),
                "ENCLAVE_GATEWAY__ROUTES_REFRESH_S": str(ROUTES_REFRESH_S),
                "ENCLAVE_GATEWAY__ROUTES_FETCH_TIMEOUT_S": str(ROUTES_FETCH_TIMEOUT_S),
                "ENCLAVE_GATEWAY__RATE_LIMIT_PER_USER_RPM": str(GATEWAY_USER_RPM),
                "ENCLAVE_GATEWAY__RATE_LIMIT_PER_USER_BURST": str(GATEWAY_USER_BURST),
            }
            nginx = start_nginx(
                {
                    "instance": (ports["lb_instance"], instance_ports),
                    "gateway": (ports["lb_gateway"], gateway_ports),
                }
            )
            model = Role(
                "model",
                ["model", "--port", str(ports["model"]), "--gguf", str(gguf)],
                f"http://127.0.0.1:{ports['model']}/health",
            )
            instances = [
                Role(
                    f"instance-{n}",
                    ["instance", "--host", "127.0.0.1", "--port", str(port)],
                    f"http://127.0.0.1:{port}/-/readiness",
                )
                for n, port in enumerate(instance_ports, 1)
            ]
            gateways = [
                Role(
                    f"gateway-{n}",
                    ["gateway", "--host", "127.0.0.1", "--port", str(port)],
                    f"http://127.0.0.1:{port}/monitoring/ready",
                )
                for n, port in enumerate(gateway_ports, 1)
            ]
            # The first replica of each role initialises the shared state (database schema,
            # keys); the second starts on it, with the model and the other roles overlapping.
            for first_wave in ([model, instances[0]], [instances[1], gateways[0]], [gateways[1]]):
                for role in first_wave:
                    _start(role, log_dir, env)
                    started.append(role)
                for role in first_wave:
                    _wait_ready(role)
            cluster = Cluster(
                data_dir,
                log_dir,
                instance_url,
                gateway_url,
                model_url,
                instances,
                gateways,
                model,
                nginx,
                redis,
                {
                    role.name: f"http://127.0.0.1:{port}"
                    for role, port in zip(
                        [*instances, *gateways], [*instance_ports, *gateway_ports], strict=True
                    )
                },
            )
            yield cluster
        finally:
            for role in reversed(started):
                role.stop()
            if nginx is not None:
                nginx.stop()
            shutil.rmtree(root, ignore_errors=True)
