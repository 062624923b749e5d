"""A real Ray cluster of N nodes on this host for tests, stopped without touching anyone else's Ray.

Each node gets its own short --temp-dir (Unix socket paths are limited to 107 bytes) and free ports; the
cluster is found through its address (RAY_ADDRESS), not through /tmp/ray. `ray stop` would end every Ray on the
machine: stop() kills only the processes whose command line names one of our temp dirs, and their children
(the workers, renamed `ray::...`, keep no trace of the temp dir in theirs).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) for every process we can read."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(d)] = (ppid, cmd)
    return out


class LocalRayCluster:
    def __init__(self, nodes: int = 2, cpus: int = 1, env: dict | None = None):
        self.root = tempfile.mkdtemp(prefix="lsray", dir="/tmp")
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("RAY_ADDRESS", None)
        self.address = ""
        self.node_dirs: list[str] = []
        try:
            for i in range(nodes):
                self._start_node(i, cpus)
            self.wait_for_nodes(nodes)
        except BaseException:
            self.stop()
            raise

    def _start_node(self, i: int, cpus: int) -> None:
        temp = os.path.join(self.root, f"n{i}")
        self.node_dirs.append(temp)
        common = [f"--num-cpus={cpus}", "--num-gpus=0", f"--temp-dir={temp}", "--min-worker-port=0",
                  "--max-worker-port=0", "--object-store-memory=78643200", "--disable-usage-stats",
                  f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
        if i == 0:
            cmd = [RAY, "start", "--head", "--port=0", "--include-dashboard=false", *common]
        else:
            cmd = [RAY, "start", f"--address={self.address}", "--include-log-monitor=false", *common]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        if i == 0:
            m = re.search(r"--address='([^']+)'", r.stdout + r.stderr)
            if not m:
                raise RuntimeError(f"no address in ray start's output:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
            self.address = m.group(1)

    def alive_nodes(self) -> int:
        r = subprocess.run([RAY, "status", f"--address={self.address}"], env=self.env, capture_output=True,
                           text=True, timeout=60)
        active = r.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return len(re.findall(r"\bnode_[0-9a-f]+", active))

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster at {self.address} did not show {n} nodes in {timeout:g} s")
            time.sleep(0.5)

    def pids(self) -> set[int]:
        """Our Ray processes: those naming one of our temp dirs, and all their descendants."""
        procs = processes()
        ours = {pid for pid, (_, cmd) in procs.items() if self.root in cmd and pid != os.getpid()}
        grew = True
        while grew:
            kids = {pid for pid, (ppid, _) in procs.items() if ppid in ours} - ours
            ours |= kids
            grew = bool(kids)
        return ours

    def workers_running(self, title: str) -> list[int]:
        """Our worker processes whose title is exactly `title` (e.g. "ray::lipsync_job": running that task)."""
        procs = processes()
        return [pid for pid in self.pids() if procs.get(pid, (0, ""))[1].strip() == title]

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.pids():
                break
        shutil.rmtree(self.root, ignore_errors=True)
