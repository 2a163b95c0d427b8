"""A real RTSP camera for tests and the demo: Debian's GStreamer RTSP server in a subprocess.

The server runs under Debian's /usr/bin/python3 (python3-gi is built for it, not for the
project's venv) and serves live H.264 (constrained baseline, no B-frames, an IDR every two
seconds) from `videotestsrc`, optionally behind HTTP basic auth. Killing the process is a
camera outage; `start()` again on the same port is the camera coming back.

Also home of `ensure_debian_packages()`, the one place that apt-installs what the local
stack needs from Debian (GStreamer, python3-gi, iproute2).

Boundary: the subprocess and apt-get. Binds only to loopback (or an address the caller
names, e.g. a test namespace's veth address).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType

logger = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"

# What the RTSP test camera needs from Debian (see docs in test-infra.md).
DEBIAN_PACKAGES = [
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gir1.2-gstreamer-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-ugly",
    "iproute2",
]


class RtspServerError(RuntimeError):
    """The RTSP test server could not start; the message says what to install or fix."""


def _installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def ensure_debian_packages(packages: Sequence[str] = DEBIAN_PACKAGES) -> list[str]:
    """apt-get install the packages that are missing; return the ones installed.

    Runs `apt-get update` once, only when something is missing. Needs root; without it,
    fails with the exact command to run.
    """
    if not shutil.which("dpkg-query"):
        raise RtspServerError(
            "This is not a Debian-like system (no dpkg-query): install the equivalents of "
            f"{' '.join(packages)} by hand."
        )
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return []
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise RtspServerError(
            f"Missing Debian packages {', '.join(missing)}: run `sudo {' '.join(command)}`."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "update", "-q"], command):
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RtspServerError(
                f"`{' '.join(args)}` failed (exit {proc.returncode}): {proc.stderr[-2000:]}"
            )
    logger.info("Installed Debian packages %s", ", ".join(missing))
    return missing


# Runs under /usr/bin/python3 with python3-gi. Settings come from the environment so that a
# password never shows in `ps`.
_SERVER_SCRIPT = r"""
import os, sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

Gst.init(None)
env = os.environ
width, height, fps = int(env["RTSP_WIDTH"]), int(env["RTSP_HEIGHT"]), int(env["RTSP_FPS"])
pipeline = (
    "( videotestsrc is-live=true pattern={pattern} "
    "! video/x-raw,width={w},height={h},framerate={f}/1 ! videoconvert "
    "! x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max={gop} "
    "bitrate={kbps} ! video/x-h264,profile=constrained-baseline "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
).format(pattern=env["RTSP_PATTERN"], w=width, h=height, f=fps, gop=2 * fps,
         kbps=env["RTSP_KBPS"])
server = GstRtspServer.RTSPServer()
server.set_address(env["RTSP_ADDRESS"])
server.set_service(env["RTSP_PORT"])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(pipeline)
factory.set_shared(True)
user, password = env.get("RTSP_USERNAME"), env.get("RTSP_PASSWORD")
if user:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "camera-user")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password or ""), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role("camera-user", "media.factory.access", True)
    permissions.add_permission_for_role("camera-user", "media.factory.construct", True)
    factory.set_permissions(permissions)
server.get_mount_points().add_factory(env["RTSP_PATH"], factory)
if server.attach(None) == 0:
    sys.exit("could not bind the RTSP port")
print("READY", flush=True)
GLib.MainLoop().run()
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class RtspServer:
    """A live H.264 RTSP test camera at `url` (without credentials)."""

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 360,
        fps: int = 15,
        path: str = "/stream1",
        address: str = "127.0.0.1",
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        pattern: str = "ball",
        bitrate_kbps: int = 1000,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.path = path
        self.address = address
        self.port = port or free_port(address)
        self.username, self.password = username, password
        self.pattern = pattern
        self.bitrate_kbps = bitrate_kbps
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://{self.address}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart after `kill()`) the server on the same port; wait until it listens."""
        if self.running:
            return
        if not os.path.exists(SYSTEM_PYTHON):
            raise RtspServerError(f"{SYSTEM_PYTHON} is missing; the RTSP test camera needs it.")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RTSP_WIDTH": str(self.width),
            "RTSP_HEIGHT": str(self.height),
            "RTSP_FPS": str(self.fps),
            "RTSP_PATH": self.path,
            "RTSP_ADDRESS": self.address,
            "RTSP_PORT": str(self.port),
            "RTSP_PATTERN": self.pattern,
            "RTSP_KBPS": str(self.bitrate_kbps),
        }
        if self.username:
            env["RTSP_USERNAME"] = self.username
            env["RTSP_PASSWORD"] = self.password or ""
        self._proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", _SERVER_SCRIPT],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read() if self._proc.stderr else ""
                hint = ""
                if "Namespace" in err or "No module named 'gi'" in err:
                    hint = (
                        " GStreamer's RTSP server or python3-gi is missing: run "
                        "overshoot_localstack.rtsp.ensure_debian_packages() (or `make setup`)."
                    )
                raise RtspServerError(
                    f"The RTSP test server exited (code {self._proc.returncode}).{hint}\n"
                    f"{err[-2000:]}"
                )
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    logger.info("Started RTSP test camera at %s", self.url)
                    return
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RtspServerError(f"The RTSP test server did not listen on {self.url} in {timeout}s")

    def kill(self) -> None:
        """SIGKILL the server: a camera that loses power."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream:
                stream.close()
        self._proc = None

    stop = kill

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
