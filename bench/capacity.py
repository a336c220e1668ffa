"""Capacity figures for docs/capacity.md: what one completion costs each component.

Runs on 127.0.0.1 only: the fake model server (upstream.py, 0 ms answers), a real Enclave
instance on PostgreSQL (a throwaway cluster from the Debian packages, as the tests use) and a
real gateway, then sends code completions through the instance's GitLab endpoint with several
users' personal access tokens (closed loop, loadgen.py) and measures, over the load only:

* CPU seconds of each process tree (instance, gateway, PostgreSQL, upstream) per request;
* PostgreSQL work per request: transactions, rows read and written (pg_stat_database);
* requests per second and latency.

The instance's and gateway's limits are turned off for the run (they would stop one user's
flood, which is the point of them, not of this measurement).

    .venv/bin/python bench/capacity.py [--duration 20] [--connections 8] [--users 4]
    -> bench/results/capacity.json and one summary line
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.unit.instance.pg import postgres_server  # noqa: E402

from procs import Processes, cpu_seconds, free_port, http_get, process_tree  # noqa: E402

ENCLAVE = [sys.executable, "-m", "enclave"]
BODY = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "import math\n\ndef area(r):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
}


def wait_ready(url: str, server: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        try:
            if http_get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready:\n{server.log_tail()}")


def pg_counters(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, "
                    "tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            ).one()
    finally:
        engine.dispose()
    return dict(zip(("transactions", "returned", "fetched", "written"), map(int, row), strict=True))


def postmaster_pid(admin_url: str) -> int:
    engine = create_engine(admin_url)
    try:
        with engine.connect() as connection:
            data_dir = connection.execute(text("SHOW data_directory")).scalar_one()
    finally:
        engine.dispose()
    return int(Path(data_dir, "postmaster.pid").read_text().splitlines()[0])


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*ENCLAVE, *args], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=8, help="in all, over the users")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="enclave-capacity-"))
    processes = Processes(work)
    with postgres_server() as pg:
        database_url = pg.create_database()
        try:
            result = run(args, work, processes, pg.admin_url, database_url)
        except BaseException:
            print(f"capacity: failed; logs in {work}", file=sys.stderr)
            raise
        finally:
            processes.stop_all()
    shutil.rmtree(work, ignore_errors=True)  # kept above when the run failed, for its logs
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "capacity: {rps:.0f} completions/s through instance+gateway; CPU ms/request: instance "
        "{instance:.2f}, gateway {gateway:.2f}, PostgreSQL {postgres:.2f}; PostgreSQL "
        "{pg_tx:.1f} transactions and {pg_rows:.0f} rows read per request".format(
            rps=result["rps"],
            pg_tx=result["postgres_per_request"]["transactions"],
            pg_rows=result["postgres_per_request"]["returned"]
            + result["postgres_per_request"]["fetched"],
            **result["cpu_ms_per_request"],
        )
    )
    return 0


def run(
    args: argparse.Namespace, work: Path, processes: Processes, admin_url: str, database_url: str
) -> dict[str, Any]:
    data_dir = work / "data"
    (data_dir / "model").mkdir(parents=True, mode=0o700)
    key_file = data_dir / "model" / "api-key"
    key_file.write_text("enclkey-capacity-bench-0123456789abcdef\n")
    key_file.chmod(0o600)
    up_port, instance_port, gateway_port = free_port(), free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env = {
        **base,
        "ENCLAVE_DATA_DIR": str(data_dir),
        "ENCLAVE_DATABASE_URL": database_url,
        "ENCLAVE_LOG_LEVEL": "warning",
        "ENCLAVE_INSTANCE__PORT": str(instance_port),
        "ENCLAVE_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
        "ENCLAVE_INSTANCE__EMBEDDED_MODEL_ENDPOINT": f"http://127.0.0.1:{up_port}/v1",
        "ENCLAVE_INSTANCE__CODE_SUGGESTIONS_API_RATE_LIMIT": "0",
        "ENCLAVE_GATEWAY__PORT": str(gateway_port),
        "ENCLAVE_ISSUER_URL": f"http://127.0.0.1:{instance_port}",
        "ENCLAVE_GATEWAY__RATE_LIMIT_PER_USER_RPM": "0",
        "ENCLAVE_GATEWAY__RATE_LIMIT_PER_INSTANCE_RPS": "0",
    }
    upstream = processes.start(
        "upstream", [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)]
    )
    wait_ready(f"http://127.0.0.1:{up_port}/health", upstream)
    instance = processes.start("instance", [*ENCLAVE, "instance"], env=env)
    wait_ready(f"http://127.0.0.1:{instance_port}/-/readiness", instance)
    gateway = processes.start("gateway", [*ENCLAVE, "gateway"], env=env)
    wait_ready(f"http://127.0.0.1:{gateway_port}/monitoring/ready", gateway)

    tokens = []
    for number in range(args.users):
        user = f"dev{number}"
        cli(env, "users", "add", user, "--email", f"{user}@example.com")
        created = cli(env, "tokens", "create", user, "--name", "ide", "--scope", "api", "--json")
        tokens.append(orjson.loads(created)["token"])

    url = f"http://127.0.0.1:{instance_port}/api/v4/code_suggestions/completions"
    body_file = work / "body.json"
    body_file.write_bytes(orjson.dumps(BODY))

    def loadgens(duration: float) -> list[subprocess.Popen[str]]:
        started = []
        per_user = max(1, args.connections // len(tokens))
        for number, token in enumerate(tokens):
            headers = work / f"headers{number}.txt"
            headers.write_text(f"PRIVATE-TOKEN: {token}\nContent-Type: application/json\n")
            started.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "loadgen.py"),
                        "--url",
                        url,
                        "--connections",
                        str(per_user),
                        "--duration",
                        str(duration),
                    ],
                    env={**base, "WRK_BODY_FILE": str(body_file), "WRK_HEADERS_FILE": str(headers)},
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        return started

    for warm in loadgens(3.0):  # warm caches and connection pools first
        warm.communicate(timeout=60)

    trees = {
        "instance": process_tree(instance.pid),
        "gateway": process_tree(gateway.pid),
        "upstream": process_tree(upstream.pid),
        "postgres": process_tree(postmaster_pid(admin_url)),
    }
    cpu_before = {name: cpu_seconds(pids) for name, pids in trees.items()}
    pg_before = pg_counters(database_url)
    started = time.monotonic()
    summaries = []
    for generator in loadgens(args.duration):
        out, _ = generator.communicate(timeout=args.duration + 60)
        line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
        summaries.append(orjson.loads(line.removeprefix("WRK_JSON ")))
    elapsed = time.monotonic() - started
    pg_after = pg_counters(database_url)
    cpu_after = {name: cpu_seconds(pids) for name, pids in trees.items()}

    requests = sum(s["requests"] for s in summaries)
    errors = sum(sum(s["errors"].values()) for s in summaries)
    if requests == 0:
        raise RuntimeError(f"no request completed:\n{instance.log_tail()}\n{gateway.log_tail()}")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "duration_s": round(elapsed, 1),
        "connections": args.connections,
        "users": args.users,
        "requests": requests,
        "errors": errors,
        "rps": requests / elapsed,
        "latency_p50_ms": max(dict(s["latency_us"]["percentiles"]).get(50.0, 0) for s in summaries)
        / 1000,
        "cpu_ms_per_request": {
            name: (cpu_after[name] - cpu_before[name]) * 1000 / requests for name in trees
        },
        "postgres_per_request": {
            key: (pg_after[key] - pg_before[key]) / requests for key in pg_before
        },
    }


if __name__ == "__main__":
    sys.exit(main())
