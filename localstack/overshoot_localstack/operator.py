"""The operator as a real process for tests, benchmarks and the local stack.

Boundary: one `overshoot-operator` child process with settings in its environment and a
kubeconfig (in tests: a ServiceAccount's, so it runs with exactly the RBAC of deploy/rbac).
Output goes to a log file the caller can read (tests scan it for secrets).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OperatorProcess:
    """`overshoot-operator --kubeconfig ...` with `OVERSHOOT_*` settings."""

    def __init__(self, *, kubeconfig: Path, settings: Mapping[str, str], log_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            **{f"OVERSHOOT_{k.upper()}": v for k, v in settings.items()},
            "OVERSHOOT_LISTEN_HOST": "127.0.0.1",
            "OVERSHOOT_HEALTH_PORT": str(self.health_port),
            "OVERSHOOT_METRICS_PORT": str(self.metrics_port),
        }
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Self:
        """Start the process and wait until it answers /healthz (a standby answers too:
        it need not hold the leader Lease)."""
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "overshoot_operator", "--kubeconfig", str(self.kubeconfig)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"overshoot-operator exited with {self._process.returncode}:\n{self.logs()[-3000:]}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"overshoot-operator not healthy in {timeout}s:\n{self.logs()[-3000:]}")

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("overshoot-operator not running")
        return self._process.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_exit(self, timeout: float) -> int:
        """The exit code once the process ended by itself (within `timeout` seconds)."""
        if self._process is None:
            raise RuntimeError("overshoot-operator not started")
        return self._process.wait(timeout)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (a stalled node, a long GC pause) until resume()."""
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: a crash, with no cleanup of any kind."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None

    def stop(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
