"""A Ray node started with the `ray` CLI on loopback, with its own temp dir and ports, and
stopped by pid: what the job-submission test and the two-node bench run their clusters on.

`ray stop` is never used: it stops every Ray process of the user on the machine (it cannot be
scoped), other clusters included. A node here is `ray start [--head] --block`, a child of the
caller in its own session. Its processes are that child's descendants and any process whose
command line names its temp dir (catches re-parented ones). `stop` does what `ray stop` does --
SIGTERM, a grace period, SIGKILL -- to those only; `kill` is SIGKILL at once (a lost machine).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from tagi_ray.ports import free_ports


class LocalRayNode:
    """`ray start --head` (`head_gcs` None) or `ray start --address head_gcs`, `num_cpus` CPUs.
    `gcs` is what drivers connect to; `dashboard` (head only) is the job API's address."""

    def __init__(self, ray_bin: str, temp_dir: str | Path, env: dict, num_cpus: int = 1,
                 head_gcs: str | None = None, log: str | Path | None = None):
        self.temp_dir = str(temp_dir)  # keep it short: Ray's socket paths must stay < 108 chars
        Path(self.temp_dir).mkdir(parents=True, exist_ok=True)
        ports = free_ports(9)
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--temp-dir", self.temp_dir,
                  "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
                  "--metrics-export-port", str(ports[2]), "--runtime-env-agent-port", str(ports[3]),
                  "--dashboard-agent-listen-port", str(ports[4]), "--dashboard-agent-grpc-port", str(ports[5]),
                  "--disable-usage-stats", "--block"]
        if head_gcs is None:
            self.gcs, self.dashboard = f"127.0.0.1:{ports[6]}", f"http://127.0.0.1:{ports[7]}"
            cmd = [ray_bin, "start", "--head", "--port", str(ports[6]), "--dashboard-host", "127.0.0.1",
                   "--dashboard-port", str(ports[7]), "--ray-client-server-port", str(ports[8]), *common]
        else:
            self.gcs, self.dashboard = head_gcs, ""
            cmd = [ray_bin, "start", "--address", head_gcs, *common]
        self._log = open(log, "w") if log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=self._log,
                                         stderr=subprocess.STDOUT)
        except BaseException:
            self._close_log()
            raise

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Until the head's job API answers (raises if the node exits or the time runs out)."""
        if not self.dashboard:
            raise ValueError("wait_ready: only a head node serves the job API")
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray head did not come up (exit {self.proc.poll()}); see {self.temp_dir}")
                time.sleep(1)

    def processes(self) -> dict[int, psutil.Process]:
        """This node's processes (never the caller)."""
        procs: dict[int, psutil.Process] = {}
        if self.proc.poll() is None:  # once reaped, its pid may belong to someone else
            try:
                procs = {p.pid: p for p in psutil.Process(self.proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
        for p in psutil.process_iter(["cmdline"]):
            try:
                if self.temp_dir in " ".join(p.info["cmdline"] or []):
                    procs[p.pid] = p
            except psutil.Error:
                continue
        procs.pop(os.getpid(), None)
        return procs

    def kill(self) -> None:
        """SIGKILL to the node's processes at once (a lost machine, no goodbye)."""
        for p in self.processes().values():
            _signal(p, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._close_log()

    def stop(self, grace_s: float = 10) -> list[int]:
        """SIGTERM, `grace_s`, then SIGKILL, to this node's processes only; returns the pids that
        survived even that (none, normally)."""
        ours = self.processes()
        for p in ours.values():
            _signal(p, signal.SIGTERM)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(list(ours.values()), timeout=grace_s)
        alive += [p for pid, p in self.processes().items() if pid not in ours]  # started meanwhile
        for p in alive:
            _signal(p, signal.SIGKILL)
        _, alive = psutil.wait_procs(alive, timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                alive.append(psutil.Process(self.proc.pid))
        self._close_log()
        return [p.pid for p in alive]

    def _close_log(self) -> None:
        if self._log is not subprocess.DEVNULL and not self._log.closed:
            self._log.close()


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass
