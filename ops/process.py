"""Processes of the native stack and of the functions: spawn, pid checks, waits, port checks, log rotation.

The stack's services (ops.stack) and the functions run in the background (ops.functions_ctl) both use these,
so a pid file, a log file and a readiness wait mean the same thing everywhere.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from cryptopipe.settings import ROOT


class StackError(Exception):
    """A problem the user must fix; the message names it and the fix."""


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def process_exists(pid: int) -> bool:
    """True while the process runs; an exited child waiting to be reaped counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def pid_from_file(path: Path, marker: str) -> int | None:
    """The pid recorded in `path` if that process runs and its command line holds `marker`: a pid the
    kernel recycled for another program never counts as ours."""
    try:
        pid = int(path.read_text().split()[0])
        cmdline = command_line(pid)
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker in cmdline and process_exists(pid) else None


def spawn(argv: list[str], log_path: Path, pid_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a process in its own session, output appended to its log, pid recorded in its pid file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    pid_path.write_text(f"{proc.pid}\n")
    return proc


def terminate(pid: int, alive: Callable[[], bool], timeout: float, group: bool = True) -> None:
    """SIGTERM (to the process group when `group`), then SIGKILL once `timeout` passed with `alive()` true."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rotate_at_start(path: Path, max_bytes: int, backups: int) -> None:
    """For services that write their log through stdout (which cannot be reopened while they run): keep a
    large log as <name>.1 (older ones shifted up to `backups`) before the service starts again."""
    if not path.exists() or path.stat().st_size < max_bytes:
        return
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kb, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.M)
        total_kb += int(match.group(1)) if match else 0
        todo.extend(children.get(current, []))
    return total_kb / 1024


def wait_until(what: str, check: Callable[[], bool], timeout: float, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not ready yet: the check talks to a service that is still starting
            pass
        time.sleep(0.25)
    hint = f"; see {log_file}" if log_file else ""
    raise StackError(f"{what} was not ready after {timeout:.0f} s{hint}")
