"""Start and stop the processes a test owns (a CLI run, Ray nodes), and nothing else.

Each process starts in its own session; stopping it signals that process group and then every
process that descended from it (Ray's workers leave the group), found through /proc before the
first signal.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> set[int]:
    children, found, todo = _children_map(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def start(args: list[str], log_path: Path, **kwargs) -> subprocess.Popen:
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def _signal_all(proc: subprocess.Popen, pids: set[int], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Signal ``proc``'s group and descendants; SIGKILL whatever is left after ``grace_s``."""
    pids = descendants(proc.pid)
    _signal_all(proc, pids, sig)
    deadline = time.time() + grace_s
    while time.time() < deadline and (proc.poll() is None or any(_alive(p) for p in pids)):
        time.sleep(0.2)
    _signal_all(proc, {p for p in pids if _alive(p)}, signal.SIGKILL)
    proc.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"process exited (rc={proc.returncode}) while waiting for {what}:\n{tail}")
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}:\n{tail}")
