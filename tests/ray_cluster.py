"""A real multi-node Ray cluster on loopback for tests: one ``ray start --block`` per node, each with
its own logical resources and temp dir, stopped by its pid (and its descendants) at the end."""
from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.captions import processes

RAY = str(Path(sys.executable).parent / "ray")


@contextmanager
def ray_cluster(nodes: dict[str, dict], base_env: dict[str, str]) -> Iterator[tuple[str, dict, dict]]:
    """Start ``nodes`` ({name: {"num_cpus": n}}; the first is the head) on 127.0.0.1 and yield
    (address, env for drivers, {name: its `ray start` process}). Each node also carries a custom
    resource named after it, so tests can see or pin where work runs."""
    port = processes.free_port()
    env = {**base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    temp_dirs = {name: tempfile.mkdtemp(prefix=f"es-ray-{i}-", dir="/tmp") for i, name in enumerate(nodes)}  # short: socket paths
    started: dict = {}
    try:
        for i, (name, spec) in enumerate(nodes.items()):
            role = (["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={processes.free_port()}"]
                    if i == 0 else [f"--address=127.0.0.1:{port}"])
            log = Path(temp_dirs[name]) / "start.log"
            args = [RAY, "start", "--block", *role, "--node-ip-address=127.0.0.1", f"--num-cpus={spec.get('num_cpus', 1)}",
                    f"--resources={json.dumps({name: 1})}", f"--temp-dir={temp_dirs[name]}", "--disable-usage-stats",
                    f"--node-manager-port={processes.free_port()}", f"--object-manager-port={processes.free_port()}",
                    f"--dashboard-agent-listen-port={processes.free_port()}",
                    f"--dashboard-agent-grpc-port={processes.free_port()}",
                    f"--metrics-export-port={processes.free_port()}",
                    f"--runtime-env-agent-port={processes.free_port()}",
                    "--object-store-memory=100000000"]
            proc = processes.start(args, log, env=env)
            started[name] = proc
            processes.wait_for(lambda: "Ray runtime started" in log.read_text(errors="replace"), 120,
                               f"ray start ({name})", proc, log)
        yield f"127.0.0.1:{port}", env, started
    finally:
        for proc in reversed(list(started.values())):
            processes.stop(proc, grace_s=3)
        for d in temp_dirs.values():
            shutil.rmtree(d, ignore_errors=True)


def raylet_pid(node_proc) -> int:
    """The raylet among the processes a node's `ray start --block` started."""
    for pid in processes.descendants(node_proc.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                return pid
        except OSError:
            continue
    raise LookupError(f"no raylet under pid {node_proc.pid}")
