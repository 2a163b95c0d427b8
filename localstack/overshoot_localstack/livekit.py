"""A real LiveKit server process for tests, benchmarks and the local stack.

The server runs inside a network namespace (see `netns.py` for why and for the topology),
bound to the namespace-side veth address, which is also its ICE node IP. Clients on the
host reach it at `url` (ws://<namespace ip>:<port>). For a real node's Pods, which reach
only the host, it runs on one of the host's addresses instead (`netns.HostAddress`) and
gathers ICE candidates on that address alone.

The config is generated (not `--dev`) so that:
- API keys are per instance, and `restart(rotate=[key])` revokes every token signed with
  that key (LiveKit has no per-token revocation; a new secret is the real equivalent);
- the ICE servers handed to clients point at the namespace address: with no STUN server
  configured, LiveKit would give clients Google's public STUN servers;
- the RTC ports are fixed inside the namespace (the namespace is ours alone).

Boundary: the livekit-server process and its config file. Tokens are minted here with
livekit-api for tests only; the emulator mints its own.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from overshoot_localstack import binaries
from overshoot_localstack.netns import HostAddress, NetNamespace

logger = logging.getLogger(__name__)


class LiveKitError(RuntimeError):
    """The LiveKit server could not start or stopped unexpectedly."""


class LiveKitServer:
    """livekit-server inside `ns`, on `ns.ns_ip`. Use `start()`/`stop()` or `with`."""

    def __init__(
        self,
        ns: NetNamespace | HostAddress,
        *,
        port: int = 7880,
        rtc_tcp_port: int = 7881,
        rtc_udp_port: int = 7882,
        api_key: str = "overshoot-test",
        binary: Path | None = None,
        log_level: str = "info",
        workdir: Path | None = None,
    ) -> None:
        self.ns = ns
        self.port = port
        self.rtc_tcp_port = rtc_tcp_port
        self.rtc_udp_port = rtc_udp_port
        self.api_key = api_key
        # Every key pair the server accepts; `api_key` is the main one (the emulator's).
        self.keys: dict[str, str] = {api_key: secrets.token_hex(24)}
        self._binary = binary
        self.log_level = log_level
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="overshoot-livekit-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.log_path = workdir / "livekit-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.generation = 0

    @property
    def api_secret(self) -> str:
        return self.keys[self.api_key]

    def add_key(self, api_key: str) -> None:
        """Accept a second key pair (e.g. one tests mint publisher tokens with and revoke)."""
        self.keys[api_key] = secrets.token_hex(24)

    @property
    def host(self) -> str:
        return self.ns.ns_ip

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def binary(self) -> Path:
        if self._binary is None:
            self._binary = binaries.ensure(["livekit-server"])["livekit-server"]
        return self._binary

    def config(self) -> dict[str, object]:
        rtc: dict[str, object] = {
            "tcp_port": self.rtc_tcp_port,
            "udp_port": self.rtc_udp_port,
            "node_ip": self.host,
            "use_external_ip": False,
            # Anything but empty keeps LiveKit from handing clients Google's STUN
            # servers; this one is the server's own address, so no packet leaves.
            "stun_servers": [f"{self.host}:{self.rtc_udp_port}"],
        }
        if isinstance(self.ns, HostAddress):
            # On the host, only the one address: no candidate on the host's real network.
            rtc["ips"] = {"includes": [f"{self.host}/32"]}
        return {
            "port": self.port,
            "bind_addresses": [self.host],
            "keys": dict(self.keys),
            "rtc": rtc,
            "logging": {"level": self.log_level},
        }

    def write_config(self) -> Path:
        path = self.workdir / "livekit.yaml"
        # JSON is YAML; the file holds the API secret, so only its owner reads it.
        path.write_text(json.dumps(self.config(), indent=2))
        path.chmod(0o600)
        return path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        config = self.write_config()
        self._log = self.log_path.open("ab")
        self._proc = self.ns.popen(
            [str(self.binary()), "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.generation += 1
        self.wait_ready(timeout)
        logger.info("Started LiveKit server at %s (generation %d)", self.url, self.generation)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise LiveKitError(
                    f"livekit-server exited with code {self._proc.returncode}; log tail:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.http_url + "/", timeout=1) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise LiveKitError(
            f"livekit-server did not answer on {self.http_url} in {timeout}s; log tail:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (graceful) or SIGKILL (a crash)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(
        self, *, rotate: Sequence[str] = (), kill: bool = True, down_for: float = 0.0
    ) -> None:
        """Restart on the same address and ports, `down_for` seconds later.

        Every key named in `rotate` gets a new secret: tokens signed with the old one stop
        working (LiveKit has no per-token revocation, and accepts a token up to a minute
        past its `exp`, so an expired token is not a revoked one).
        """
        self.stop(kill=kill)
        for api_key in rotate:
            self.keys[api_key] = secrets.token_hex(24)
        if down_for:
            time.sleep(down_for)
        self.start()

    def token(
        self,
        room: str,
        identity: str,
        *,
        ttl_seconds: int = 3600,
        can_publish: bool = True,
        can_subscribe: bool = True,
        api_key: str | None = None,
    ) -> str:
        """A room token signed with the current secret of `api_key` (default: the main key)."""
        from datetime import timedelta

        from livekit import api

        grants = api.VideoGrants(
            room_join=True, room=room, can_publish=can_publish, can_subscribe=can_subscribe
        )
        token = (
            api.AccessToken(api_key or self.api_key, self.keys[api_key or self.api_key])
            .with_identity(identity)
            .with_grants(grants)
            .with_ttl(timedelta(seconds=ttl_seconds))
        )
        jwt: str = token.to_jwt()
        return jwt

    async def remove_participant(self, room: str, identity: str) -> bool:
        """Kick a participant (the server tells its SDK not to reconnect); False if absent."""
        from livekit import api

        async with api.LiveKitAPI(self.http_url, self.api_key, self.api_secret) as lkapi:
            try:
                await lkapi.room.remove_participant(
                    api.RoomParticipantIdentity(room=room, identity=identity)
                )
            except api.TwirpError as exc:
                if exc.code == api.TwirpErrorCode.NOT_FOUND:
                    return False
                raise
        return True

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LiveKitServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
