"""Start and stop a real ``bentoml serve`` of the byol-embed service on a free loopback port, as a child process.

For code that needs a live server for a while and then none: the test suite, the benchmarks, a notebook. Production
runs ``byol serve`` (which execs BentoML in the foreground) under a process manager instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: the service is imported from here
SERVICE = "serving.service:ByolEmbed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log_path: Path
    env: dict = field(repr=False, default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the whole process group (BentoML runs a main and a worker process) and wait."""
        workers = descendants(self.proc.pid)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in workers:  # a worker that outlived its main process (it runs in its own session)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL the main process and its workers at once (BentoML starts workers in their own sessions, so a
        process-group kill alone would leave them running), as a power cut would."""
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``...); OSError when the process is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_kb(pids) -> int:
    """The summed RSS of the processes still alive among ``pids``."""
    total = 0
    for pid in pids:
        try:
            total += status_kb(pid, "VmRSS")
        except OSError:
            continue
    return total


def service_processes(server: Server) -> dict[int, str]:
    """The server's BentoML service workers → their service's name (``byol_embed`` workers, the ``byol_index``
    service), read from their command lines (``--service-name NAME``); BentoML's arbiter and helpers are left out."""
    found = {}
    for pid in descendants(server.proc.pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--service-name" in args[:-1]:
            found[pid] = args[args.index(b"--service-name") + 1].decode()
    return found


def ready(url: str) -> bool:
    """Whether the server at ``url`` answers ``/readyz`` with 200 now."""
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def command(port: int, service: str = SERVICE) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", service, "--host", "127.0.0.1", "--port", str(port)]


def start(env: dict | None = None, timeout: float = 90.0, service: str = SERVICE, cmd: list[str] | None = None,
          port: int | None = None) -> Server:
    """Start a server and wait for ``/readyz``; raise ``RuntimeError`` with its log if it exits or times out.

    ``cmd`` replaces ``bentoml serve ...`` (e.g. ``byol serve``); then pass the ``port`` it listens on. A port this
    function picked itself is tried again with another when it was taken between :func:`free_port` and BentoML's
    bind (a client connection of another process may get the same ephemeral port meanwhile).
    """
    picked, attempt = port is None and cmd is None, 1
    while True:
        server = _start(env, timeout, service, cmd, port or free_port(), retry=picked and attempt < PORT_TRIES)
        if server is not None:
            return server
        attempt += 1


PORT_TRIES = 3


def _start(env: dict | None, timeout: float, service: str, cmd: list[str] | None, port: int,
           retry: bool) -> Server | None:
    """One start (see :func:`start`); ``None`` when it exited because its port was taken and ``retry`` allows
    another."""
    full_env = {**os.environ, **(env or {}), "BENTOML_DO_NOT_TRACK": "true", "PYTHONPATH": str(REPO)}
    log_path = Path(tempfile.mkstemp(prefix="byol-server-", suffix=".log")[1])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd or command(port, service), cwd=REPO, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path, full_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if retry and "Address already in use" in server.log():
                return None
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        if ready(server.url):
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{server.log()[-3000:]}")
