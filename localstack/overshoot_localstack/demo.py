"""`overshoot-localstack demo` (`make demo`): the whole product on one machine, with real video.

Role: bring up, in order, a real Kubernetes control plane, one real node (kubelet +
containerd + runc, `node.py`) with the image `make image` built from the Dockerfile, a
LiveKit server on the node's address, an RTSP test camera, the Overshoot emulator joined to
LiveKit as the media gateway, the CRD and RBAC of deploy/, a namespace enforcing Pod
Security `restricted`, and the operator under its own ServiceAccount; then apply the
examples a user would with the real kubectl: `examples/api-key-secret.yaml`,
`examples/test-pattern.yaml` (delivered by a publisher container) and
`examples/server-pull.yaml` pointed at the test camera (pulled by Overshoot itself: no
Pod). It prints both resources' status until each is `Publishing` with a frame count that
grows (frames the gateway really decoded), then looks at each through the kubectl plugin
(`kubectl overshoot snapshot`), which writes a JPEG of what the model sees.

The node is the cluster's only Node (no kwok, no taint), so the examples apply unchanged.
Everything listens on 127.0.0.1 or on the node's own addresses. Every process, mount and
interface is removed on the way out: normal exit, failure, Ctrl-C, SIGTERM/SIGHUP.

Boundary: orchestration and the terminal. Each component lives in its own module
(`cluster`, `node`, `image`, `livekit`, `emulator`, `operator`); this one starts and stops
them, runs kubectl, and reads the resource's status. It never prints a token or the API key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from overshoot_localstack import binaries, image, kube, netns
from overshoot_localstack import node as localnode
from overshoot_localstack.cluster import BINARIES as CLUSTER_BINARIES
from overshoot_localstack.cluster import ControlPlane, tail
from overshoot_localstack.emulator import EmulatorProcess
from overshoot_localstack.livekit import LiveKitServer
from overshoot_localstack.operator import OperatorProcess
from overshoot_localstack.rtsp import RtspServer, free_port

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
API_KEY_SECRET_EXAMPLE = EXAMPLES / "api-key-secret.yaml"
STREAM_EXAMPLE = EXAMPLES / "test-pattern.yaml"
PULL_EXAMPLE = EXAMPLES / "server-pull.yaml"
# The test camera's login: the demo's own, not a secret anyone could use elsewhere.
CAMERA_USER, CAMERA_PASSWORD = "viewer", "demo-camera-pw"

NAMESPACE = "demo"
OPERATOR_NAMESPACE = "overshoot-system"
OPERATOR_SERVICE_ACCOUNT = "overshoot-operator"
CRD_NAME = "overshootstreams.overshoot.ai"
STREAMS_PATH = "/apis/overshoot.ai/v1alpha1/namespaces/{namespace}/overshootstreams/{name}"

# Status is refreshed from the emulator this often, so the frame count visibly moves; the
# operator's production default (60 s) would leave the demo looking stuck.
STATUS_POLL_SECONDS = 5
READ_INTERVAL = 3.0
# Once Publishing, an interactive demo prints a line this often (not every read).
QUIET_INTERVAL = 30.0
# A day: a demo left running overnight keeps its operator authenticated. The API server
# may shorten it; the TokenRequest answer is what counts.
OPERATOR_TOKEN_SECONDS = 86400

REQUIRED_BINARIES = (*CLUSTER_BINARIES, "kubectl", "kubelet", "livekit-server")


class DemoError(RuntimeError):
    """The demo could not reach its goal; the message says what and where to look."""


# --- signals ----------------------------------------------------------------------------


class Interrupts:
    """One handler for SIGINT, SIGTERM and SIGHUP through set-up, running and teardown.

    Before the event loop runs, a signal raises KeyboardInterrupt, so the set-up unwinds
    through `finally`; while it runs, the signal sets the stop event; during teardown a
    second Ctrl-C is refused with a word, since stopping halfway would leave the network
    namespace or processes behind.
    """

    def __init__(self) -> None:
        self.requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def attach(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self._loop, self._event = loop, event

    def detach(self) -> None:
        self._loop = self._event = None

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.requested:
            print("Still cleaning up; the demo exits once everything is stopped.", flush=True)
            return
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping the demo ...", flush=True)
        if self._loop is not None and self._event is not None:
            self._loop.call_soon_threadsafe(self._event.set)
            return
        raise KeyboardInterrupt


# --- status lines -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StreamView:
    """What `kubectl get ovs` shows, plus the frame count."""

    phase: str | None
    delivery: str | None
    stream_id: str | None
    fps: float | None
    frames: int | None
    reason: str | None

    @classmethod
    def from_object(cls, obj: dict[str, Any] | None) -> StreamView:
        status: dict[str, Any] = (obj or {}).get("status") or {}
        stream: dict[str, Any] = status.get("stream") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        return cls(
            phase=status.get("phase"),
            delivery=status.get("delivery"),
            stream_id=status.get("streamId"),
            fps=stream.get("recentFps"),
            frames=stream.get("lastFrameIndex"),
            reason=(ready or {}).get("reason"),
        )


ROW_FORMAT = "{:>6}  {:<13} {:<11} {:<13} {:<37} {:>5}  {:>7}  {}"
HEADER = ROW_FORMAT.format(
    "TIME", "NAME", "DELIVERY", "PHASE", "STREAM ID", "FPS", "FRAMES", "REASON"
)


def format_row(elapsed: float, name: str, view: StreamView) -> str:
    return ROW_FORMAT.format(
        f"{elapsed:.0f}s",
        name,
        view.delivery or "-",
        view.phase or "<none>",
        view.stream_id or "<none>",
        "-" if view.fps is None else f"{view.fps:.1f}",
        "-" if view.frames is None else str(view.frames),
        view.reason or "",
    )


class Progress:
    """Decides when the goal is reached: Publishing, and a frame count above an earlier
    Publishing read (so frames are arriving now, not merely some time ago)."""

    def __init__(self) -> None:
        self.first_frames: int | None = None
        self.last_frames: int | None = None

    def update(self, view: StreamView) -> bool:
        if view.phase != "Publishing" or view.frames is None:
            self.first_frames = None
            return False
        self.last_frames = view.frames
        if self.first_frames is None or view.frames < self.first_frames:
            # A recreated stream counts from zero again: start over.
            self.first_frames = view.frames
            return False
        return view.frames > self.first_frames


# --- the stack --------------------------------------------------------------------------


def stream_name(example: Path = STREAM_EXAMPLE) -> str:
    """An OvershootStream's name, from its example manifest (one source of truth)."""
    for manifest in yaml.safe_load_all(example.read_text()):
        if manifest and manifest.get("kind") == "OvershootStream":
            name: str = manifest["metadata"]["name"]
            return name
    raise DemoError(f"{example} has no OvershootStream")


def pull_example(camera_url: str) -> str:
    """examples/server-pull.yaml pointed at the demo's camera, with its login: what a user
    does with the example (replace the address and the placeholder login)."""
    documents = list(yaml.safe_load_all(PULL_EXAMPLE.read_text()))
    for document in documents:
        if document.get("kind") == "Secret":
            document["stringData"] = {"username": CAMERA_USER, "password": CAMERA_PASSWORD}
        elif document.get("kind") == "OvershootStream":
            document["spec"]["source"]["rtsp"]["url"] = camera_url
            # The emulator serves one region; any other name would be refused (409).
            document["spec"].pop("region", None)
    return yaml.safe_dump_all(documents, sort_keys=False)


def example_api_key() -> str:
    """The key in the example Secret: the emulator accepts exactly it, so the demo exercises
    the operator's real key handling (a wrong key would show as Unauthorized)."""
    manifest = yaml.safe_load(API_KEY_SECRET_EXAMPLE.read_text())
    key: str = manifest["stringData"]["apiKey"]
    return key


class Demo:
    """The running stack. `start()` brings it up; `close()` takes down whatever was started."""

    def __init__(self, workdir: Path, paths: dict[str, Path], out: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.paths = paths
        self.out = out
        self.name = stream_name()
        self.pulled_name = stream_name(PULL_EXAMPLE)
        self.node: localnode.RealNode | None = None
        self.livekit: LiveKitServer | None = None
        self.camera: RtspServer | None = None
        self.emulator: EmulatorProcess | None = None
        self._emulator_log: Any = None
        self.plane: ControlPlane | None = None
        self.operator: OperatorProcess | None = None

    # Start-up ---------------------------------------------------------------------------

    def start(self, publisher_image: image.ImageRef) -> None:
        for file in (API_KEY_SECRET_EXAMPLE, STREAM_EXAMPLE, PULL_EXAMPLE):
            if not file.is_file():
                raise DemoError(f"{file} is missing: run the demo from a checkout (make demo)")
        self.out("Starting the control plane (etcd, kube-apiserver, controller-manager, ...) ...")
        # No kwok Nodes: the real node is the only place a Pod can run.
        self.plane = ControlPlane(nodes=0, binary_paths=self.paths)
        self.plane.start()
        self.out(
            f"Control plane up in {self.plane.started_seconds or 0:.0f} s at {self.plane.server}."
        )

        self.out("Starting a node (kubelet, containerd, runc, a CNI bridge) ...")
        self.node = localnode.RealNode.for_control_plane(
            self.plane, kubelet=self.paths["kubelet"], kubelet_config={"registerWithTaints": []}
        )
        self.node.start()
        started = time.monotonic()
        self.node.import_image(publisher_image.archive)
        self.out(
            f"Node {self.node.name} Ready in {self.node.started_seconds or 0:.0f} s at "
            f"{self.node.node_ip} (work directory {self.node.workdir}); imported "
            f"{publisher_image.name} in {time.monotonic() - started:.0f} s."
        )

        # On the node's address: Pods reach the node's host, and WebRTC ignores loopback.
        address = self.node.node_ip
        self.livekit = LiveKitServer(
            netns.HostAddress(address),
            port=free_port(address),
            rtc_tcp_port=free_port(address),
            rtc_udp_port=free_port(address),
            binary=self.paths["livekit-server"],
            workdir=self.workdir / "livekit",
        )
        self.livekit.workdir.mkdir(parents=True, exist_ok=True)
        self.livekit.start()
        self.out(f"LiveKit server at {self.livekit.url} (the node's address).")

        self.camera = RtspServer(
            address=address, username=CAMERA_USER, password=CAMERA_PASSWORD, pattern="smpte"
        )
        self.camera.start()
        self.out(f"RTSP test camera at {self.camera.url} (login {CAMERA_USER}).")

        self._emulator_log = (self.logs / "emulator.log").open("ab")
        self.emulator = EmulatorProcess(
            api_keys=[example_api_key()],
            livekit_url=self.livekit.url,
            livekit_api_key=self.livekit.api_key,
            livekit_api_secret=self.livekit.api_secret,
            # Overshoot pulls only cameras on the public internet; the demo's camera is on
            # this machine, so the emulator is told to allow it.
            allow_private_sources=True,
            # Its own session: a Ctrl-C in the terminal reaches only the demo, which then
            # stops everything in order.
            command_prefix=["setsid"],
            stderr=self._emulator_log,
        ).start()
        self.out(f"Overshoot emulator at {self.api_url}, media gateway joined to LiveKit.")

        self.kubectl("apply", "--server-side", "-f", str(ROOT / "deploy" / "crds"))
        self.wait_for_established()
        self.kubectl("apply", "--server-side", "-f", str(ROOT / "deploy" / "rbac"))
        self.kubectl("create", "namespace", NAMESPACE)
        # What a platform team enforces: the operator's Pods pass Pod Security `restricted`.
        self.kubectl(
            "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
        )
        self.wait_for_default_service_account()

        sa_kubeconfig = kube.serviceaccount_kubeconfig(
            self.plane,
            OPERATOR_NAMESPACE,
            OPERATOR_SERVICE_ACCOUNT,
            self.workdir / "operator.kubeconfig",
            expiration_seconds=OPERATOR_TOKEN_SECONDS,
        )
        self.operator = OperatorProcess(
            kubeconfig=sa_kubeconfig,
            settings={
                "api_url": self.api_url,
                "namespaces": NAMESPACE,
                "status_poll_seconds": str(STATUS_POLL_SECONDS),
                # Never pulled: imported into the node's containerd (there is no registry).
                "publisher_image": publisher_image.name,
                "publisher_image_pull_policy": "Never",
            },
            log_path=self.logs / "operator.log",
        ).start()
        self.out(
            f"Operator running as ServiceAccount {OPERATOR_NAMESPACE}/{OPERATOR_SERVICE_ACCOUNT}."
        )

    @property
    def api_url(self) -> str:
        """The emulator under /v1beta: the API version with camera sources."""
        assert self.emulator is not None
        return self.emulator.url + "/v1beta"

    def apply_examples(self) -> None:
        assert self.camera is not None
        self.kubectl("apply", "-n", NAMESPACE, "-f", str(API_KEY_SECRET_EXAMPLE))
        self.kubectl("apply", "-n", NAMESPACE, "-f", str(STREAM_EXAMPLE))
        self.out(f"(examples/server-pull.yaml, its camera set to {self.camera.url} and its login)")
        self.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=pull_example(self.camera.url))

    def snapshots(self, directory: Path) -> list[Path]:
        """A JPEG of each stream as Overshoot sees it, through the kubectl plugin (viewer
        tokens, a subscribe-only join): what `kubectl overshoot snapshot` shows a user."""
        assert self.plane is not None
        directory.mkdir(parents=True, exist_ok=True)
        self.plugin("get", "-n", NAMESPACE)
        written: list[Path] = []
        for name in (self.name, self.pulled_name):
            target = directory / f"{name}.jpg"
            self.plugin("snapshot", name, "-n", NAMESPACE, "-o", str(target))
            written.append(target)
        return written

    def plugin(self, *args: str) -> None:
        """Run `kubectl overshoot ...` (the venv's console script) as the admin user."""
        assert self.plane is not None
        self.out(f"$ kubectl overshoot {' '.join(args)}")
        result = subprocess.run(
            [str(Path(sys.executable).with_name("kubectl-overshoot")), *args],
            env={
                **os.environ,
                "KUBECONFIG": str(self.plane.kubeconfig),
                "OVERSHOOT_API_URL": self.api_url,
            },
            capture_output=True,
            text=True,
            check=False,
            timeout=90,
        )
        for line in (result.stdout + result.stderr).splitlines():
            self.out(f"  {line}")
        if result.returncode != 0:
            raise DemoError(f"kubectl overshoot {args[0]} failed")

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """Run the cached kubectl as admin and echo it as a user would type it."""
        assert self.plane is not None
        shown = " ".join(a if a.startswith("-") or "/" not in a else _relative(a) for a in args)
        self.out(f"$ kubectl {shown}")
        result = subprocess.run(
            [str(self.paths["kubectl"]), *args],
            env={**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)},
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=90,
        )
        for line in result.stdout.splitlines():
            self.out(f"  {line}")
        if result.returncode != 0:
            raise DemoError(f"kubectl {shown} failed: {result.stderr.strip()}")
        return result.stdout

    def wait_for_established(self, timeout: float = 60.0) -> None:
        # Not `kubectl wait --for=condition=Established`: it fails at once, instead of
        # waiting, on a CRD whose status the apiextensions controller has not written yet.
        assert self.plane is not None
        self.out(f"Waiting for crd/{CRD_NAME} to be Established ...")
        query = '{.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(
                [str(self.paths["kubectl"]), "get", f"crd/{CRD_NAME}", "-o", f"jsonpath={query}"],
                env={**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)},
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            if result.returncode == 0 and result.stdout.strip() == "True":
                return
            time.sleep(0.2)
        raise DemoError(f"crd/{CRD_NAME} was not Established in {timeout:.0f} s")

    def wait_for_default_service_account(self, timeout: float = 60.0) -> None:
        # The serviceaccount controller makes `default` asynchronously; Pods (the
        # publisher's) are refused until it exists.
        assert self.plane is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(
                [str(self.paths["kubectl"]), "get", "-n", NAMESPACE, "serviceaccount/default"],
                env={**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)},
                capture_output=True,
                check=False,
                timeout=30,
            )
            if result.returncode == 0:
                return
            time.sleep(0.5)
        raise DemoError(f"ServiceAccount {NAMESPACE}/default did not appear in {timeout:.0f} s")

    def api(self) -> httpx.AsyncClient:
        assert self.plane is not None and self.plane.pki is not None
        pki = self.plane.pki
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        # trust_env=False: a proxy from the environment must never see 127.0.0.1 traffic.
        return httpx.AsyncClient(
            base_url=self.plane.server, verify=context, trust_env=False, timeout=10.0
        )

    def usage(self) -> str:
        assert self.plane is not None
        kubectl = self.paths["kubectl"]
        return "\n".join(
            [
                "",
                "Use kubectl against the local cluster (in another terminal):",
                f"  export KUBECONFIG={self.plane.kubeconfig}",
                f"  export PATH={kubectl.parent}:$PATH",
                f"  kubectl get ovs -n {NAMESPACE} -o wide",
                f"  kubectl describe ovs -n {NAMESPACE} {self.name}",
                f"  export OVERSHOOT_API_URL={self.api_url}",
                f"  {Path(sys.executable).parent}/kubectl-overshoot get -n {NAMESPACE}",
                f"  {Path(sys.executable).parent}/kubectl-overshoot snapshot "
                f"{self.pulled_name} -n {NAMESPACE} -o {self.pulled_name}.jpg",
                f"  kubectl get pods,secrets -n {NAMESPACE}",
                f"  kubectl logs -n {NAMESPACE} {self.name}-publisher",
                f"  kubectl apply -n {NAMESPACE} -f examples/test-pattern.yaml   # edit, re-apply",
                f"Logs (operator, emulator, LiveKit): {self.logs}",
                "Stop: Ctrl-C. Every process, container, mount and interface is removed.",
                "",
            ]
        )

    # Health -----------------------------------------------------------------------------

    def dead_component(self) -> str | None:
        """The name of a component that stopped on its own, if any."""
        if self.livekit is not None and not self.livekit.running:
            return "livekit-server"
        if self.camera is not None and not self.camera.running:
            return "RTSP camera"
        if self.emulator is not None and not self.emulator.running:
            return "emulator"
        if self.node is not None:
            for component in self.node.components.values():
                if not component.running():
                    return component.name
        if self.plane is not None:
            for component in self.plane.components.values():
                if not component.running():
                    return component.name
        return None

    def log_tails(self, lines: int = 25, plane_lines: int = 8) -> str:
        """The last lines of every component's log, for a failure message.

        The control plane's logs get fewer lines unless one of its components died: they
        are rarely the story, and they are removed with it.
        """
        logs = [(path, lines) for path in sorted(self.logs.glob("*.log"))]
        if self.livekit is not None:
            logs.append((self.livekit.log_path, lines))
        if self.plane is not None:
            dead = self.dead_component()
            logs.extend(
                (path, lines if path.stem == dead else plane_lines)
                for path in sorted((self.plane.workdir / "logs").glob("*.log"))
            )
        return "\n".join(f"--- {path} (last {n} lines) ---\n{tail(path, n)}" for path, n in logs)

    # Teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything that was started, newest first; never raises."""
        steps: list[tuple[str, Callable[[], object]]] = []
        if self.operator is not None:
            steps.append(("operator", self.operator.stop))
        if self.node is not None:
            # Before the control plane: it deletes its Node object on the way out.
            steps.append(("node", self.node.stop))
        if self.plane is not None:
            steps.append(("control plane", self.plane.stop))
        if self.emulator is not None:
            steps.append(("emulator", self.emulator.stop))
        if self._emulator_log is not None:
            steps.append(("emulator log", self._emulator_log.close))
        if self.camera is not None:
            steps.append(("RTSP camera", self.camera.stop))
        if self.livekit is not None:
            steps.append(("LiveKit server", self.livekit.stop))
        for what, step in steps:
            try:
                step()
            except Exception as err:  # one failed step must not leave the rest running
                print(f"Stopping the {what} failed: {err}", file=sys.stderr, flush=True)
        self.operator = self.node = self.plane = self.emulator = self.livekit = None
        self.camera = None
        self._emulator_log = None


def _relative(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(ROOT))
    return path


# --- running ----------------------------------------------------------------------------


async def watch(
    demo: Demo, stop: asyncio.Event, *, deadline: float | None, snapshots: Path | None
) -> int:
    """Print status until the goal (with a deadline) or until `stop`: both streams
    Publishing with growing frames, then a snapshot of each."""
    out = demo.out
    names = (demo.name, demo.pulled_name)
    async with demo.api() as api:
        progress = {name: Progress() for name in names}
        reached: set[str] = set()
        started = time.monotonic()
        done = False
        last_printed: dict[str, float] = dict.fromkeys(names, 0.0)
        last_state: dict[str, tuple[str | None, ...]] = {}
        await asyncio.to_thread(demo.apply_examples)
        out("")
        out(HEADER)
        while not stop.is_set():
            dead = demo.dead_component()
            if dead is not None:
                raise DemoError(f"{dead} exited on its own")
            views: dict[str, StreamView] = {}
            for name in names:
                obj: dict[str, Any] | None = None
                try:
                    response = await api.get(STREAMS_PATH.format(namespace=NAMESPACE, name=name))
                    if response.status_code == 200:
                        obj = response.json()
                except httpx.HTTPError as err:
                    out(f"(reading OvershootStream {name} failed: {err})")
                views[name] = view = StreamView.from_object(obj)
                now = time.monotonic()
                # Every read until the goal; after it, transitions and a periodic line.
                state = (view.phase, view.delivery, view.stream_id, view.reason)
                if (
                    not done
                    or state != last_state.get(name)
                    or now - last_printed[name] >= QUIET_INTERVAL
                ):
                    out(format_row(now - started, name, view))
                    last_printed[name], last_state[name] = now, state
                if name not in reached and progress[name].update(view):
                    reached.add(name)
                    how = (
                        "pulled by Overshoot from the RTSP camera (no Pod)"
                        if view.delivery == "ServerPull"
                        else "sent by the publisher container through LiveKit"
                    )
                    out(
                        f"\nOvershootStream {NAMESPACE}/{name} is Publishing: the media "
                        f"gateway decoded frames {progress[name].first_frames} -> "
                        f"{progress[name].last_frames}, {how}.\n"
                    )
            if not done and len(reached) == len(names):
                done = True
                directory = snapshots or demo.workdir / "snapshots"
                written = await asyncio.to_thread(demo.snapshots, directory)
                out(f"Snapshots: {', '.join(str(p) for p in written)}")
                if deadline is not None:
                    return 0
                out(demo.usage())
            if not done and deadline is not None and time.monotonic() > deadline:
                late = ", ".join(
                    f"{n}: phase {v.phase}, frames {v.frames}, reason {v.reason}"
                    for n, v in views.items()
                    if n not in reached
                )
                raise DemoError(f"Not Publishing with growing frames in time ({late})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), READ_INTERVAL)
        return 0 if done or deadline is None else 130


def run(timeout: float | None, keep_logs: bool, snapshots: Path | None = None) -> int:
    interrupts = Interrupts()
    interrupts.install()

    def out(line: str) -> None:
        print(line, flush=True)

    if os.geteuid() != 0:
        print(
            "error: the demo needs root: its node runs containerd and a kubelet, and makes "
            "the Pod network; run it as root (or in a privileged container).",
            file=sys.stderr,
        )
        return 1
    try:
        out("Checking the Go-built binaries (the first run builds them; that takes a while) ...")
        paths = binaries.ensure(list(REQUIRED_BINARIES))
        out("Checking the node's Debian packages (containerd, runc, CNI plugins) ...")
        localnode.ensure_packages()
        out("Checking the image (make image: the first run builds it, a few minutes) ...")
        publisher_image = image.ensure_image()
    except KeyboardInterrupt:
        return 130
    except (binaries.BuildError, image.ImageError, localnode.NodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out(f"Image {publisher_image.name} ({publisher_image.image_id.removeprefix('sha256:')[:12]}).")
    # The deadline starts once the binaries and the image exist: a cold build is not part
    # of the demo.
    deadline = None if timeout is None else time.monotonic() + timeout
    workdir = Path(tempfile.mkdtemp(prefix="overshoot-demo-"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    # httpx logs every request at INFO: the harness' readiness polls would bury the story.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    demo = Demo(workdir, paths, out)
    code = 1
    failed = False
    try:
        demo.start(publisher_image)
        out(demo.usage())
        loop_stop: asyncio.Event | None = None

        async def main() -> int:
            nonlocal loop_stop
            loop_stop = asyncio.Event()
            interrupts.attach(asyncio.get_running_loop(), loop_stop)
            if interrupts.requested:
                return 130
            return await watch(demo, loop_stop, deadline=deadline, snapshots=snapshots)

        try:
            code = asyncio.run(main())
        finally:
            interrupts.detach()
        if interrupts.requested:
            code = 0 if timeout is None else 130
    except KeyboardInterrupt:
        code = 130
    except Exception as err:  # whatever failed, the user gets the message and the logs
        failed = True
        print(f"\nerror: {err}\n\n{demo.log_tails()}", file=sys.stderr, flush=True)
        code = 1
    finally:
        out(
            "Stopping: operator, node (publisher containers), control plane, emulator, "
            "camera, LiveKit ..."
        )
        demo.close()
        if failed or keep_logs:
            out(f"Logs kept in {demo.logs}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        out("Stopped.")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="overshoot-localstack demo",
        description="Run the whole stack locally and publish a test pattern with real video.",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="exit 0 once the stream is Publishing with growing frames, or non-zero after "
        "SECONDS (counted after the binaries are built); without it, run until Ctrl-C",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs directory")
    parser.add_argument(
        "--snapshots",
        type=Path,
        metavar="DIR",
        help="write the streams' JPEG snapshots here (default: the demo's temporary directory)",
    )
    args = parser.parse_args(argv)
    return run(args.timeout, args.keep_logs, args.snapshots)
