"""A real Kubernetes control plane on 127.0.0.1, for tests and for local runs.

Role: start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a kwok
controller as child processes in one working directory, give them a fresh PKI and free
ports, create fake kwok Nodes so Pods are scheduled and go Running, write an admin
kubeconfig, and stop everything again without leaving processes, ports or files behind.

Boundary: processes, files and the cluster's HTTP endpoints on 127.0.0.1. Binaries come from
`binaries.find()`/`binaries.ensure()`; nothing here builds anything. The only client is a
small httpx one for readiness and bootstrap objects; tests use the kubernetes client through
the admin kubeconfig (see `kube.py` and tests/fixtures/cluster.py).

`python -m overshoot_localstack cluster up|down` runs one such control plane detached for
manual use (`main()` below), with its state under `<cache>/run/cluster/`.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import types
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from overshoot_localstack import binaries

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

SERVICE_CIDR = "10.0.0.0/24"
# The first address of SERVICE_CIDR: the `kubernetes` Service's ClusterIP, which the serving
# certificate must name for in-cluster clients.
SERVICE_IP = "10.0.0.1"
# Fake Pod IPs handed out by kwok; kept apart from SERVICE_CIDR so addresses never collide.
POD_CIDR = "10.244.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# kwok manages only Nodes carrying this annotation, so a Node created by hand for another
# purpose is never taken over.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
KWOK_NODE_LABEL = ("type", "kwok")

# kwok's default stages (`kustomize/stage/fast` in sigs.k8s.io/kwok): a standalone kwok has
# none built in, and naming any stage replaces all defaults, so all of them are passed.
KWOK_STAGE_FILES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)

# Controllers that need a cloud provider or a real network, none of which exists here.
# Everything else kube-controller-manager enables by default stays on (garbage collector,
# namespace, serviceaccount, serviceaccount-token, node lifecycle, ReplicaSet, Job, ...).
DISABLED_CONTROLLERS = (
    "cloud-node-lifecycle-controller",
    "node-ipam-controller",
    "node-route-controller",
    "service-lb-controller",
)

STOP_TIMEOUT = 10.0
WORKDIR_PREFIX = "overshoot-cp-"


def _remove_orphaned_workdirs() -> None:
    """Remove temporary working directories whose owning process is gone.

    A test process killed with SIGKILL takes its components with it (PR_SET_PDEATHSIG) but
    cannot remove its directory; the next harness on the machine does.
    """
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(path, ignore_errors=True)


# What each kwok Node reports. ephemeral-storage too, as every kubelet does: without it the
# scheduler refuses any Pod that requests some ("Insufficient ephemeral-storage").
NODE_RESOURCES = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message carries the failing log's tail."""


def port_is_free(port: int) -> bool:
    """Whether a server could listen on `port` now (as Go's servers do, with SO_REUSEADDR,
    so connections in TIME_WAIT from a stopped predecessor do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def kwok_stage_dir() -> Path:
    """Where kwok's default stage files are: next to a prebuilt kwok, or in Go's module cache.

    A `stages/` directory beside the kwok binary (same layout as kwok's kustomize/stage)
    wins, so a prebuilt KUBEBUILDER_ASSETS-style directory can carry its own.
    """
    kwok = binaries.find("kwok")
    if kwok is not None and (kwok.parent / "stages").is_dir():
        return kwok.parent / "stages"
    modcache = os.environ.get("GOMODCACHE")
    if not modcache:
        go = shutil.which("go")
        if go:
            modcache = subprocess.run(
                [go, "env", "GOMODCACHE"], capture_output=True, text=True, check=False
            ).stdout.strip()
    if not modcache:
        modcache = str(Path.home() / "go" / "pkg" / "mod")
    path = Path(modcache) / f"sigs.k8s.io/kwok@{binaries.KWOK_VERSION}/kustomize/stage"
    if not path.is_dir():
        raise ControlPlaneError(
            f"kwok's default stage files were not found at {path}. Build kwok with "
            "`overshoot-localstack build kwok` (it downloads the module), or put a copy of "
            "kwok's kustomize/stage directory in a `stages/` directory next to the kwok binary."
        )
    return path


# --- PKI ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of the certificates and keys one control plane uses."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    front_proxy_cert: Path
    front_proxy_key: Path
    sa_key: Path
    sa_pub: Path
    # The API server's client identity towards kubelets (logs, exec, port-forward), which a
    # real kubelet (node.py) verifies against the CA; kwok's Nodes do not need it.
    kubelet_client_cert: Path
    kubelet_client_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def generate_pki(directory: Path) -> Pki:
    """A CA, a serving certificate, an admin client certificate and a ServiceAccount key.

    ECDSA P-256 throughout: every component accepts it and it is generated in milliseconds,
    where RSA would add a noticeable share of the harness' start time.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    # Back-dated so a clock a little behind still accepts the certificates.
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "overshoot-localstack-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        name: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(ca=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    serving_cert, serving_key = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address(SERVICE_IP)),
        ],
    )
    admin_cert, admin_key = leaf(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin"),
            ]
        ),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    # The identity the API server presents to aggregated API servers; with the matching
    # requestheader flags it also completes the extension-apiserver-authentication
    # ConfigMap that the controller-manager and scheduler read for their own authn.
    front_proxy_cert, front_proxy_key = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-proxy-client")]),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    # system:masters, as kubeadm's apiserver-kubelet-client was: the kubelet's webhook
    # authorizer asks the API server, which allows that group everything.
    kubelet_client_cert, kubelet_client_key = leaf(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-kubelet-client"),
            ]
        ),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())

    pem = serialization.Encoding.PEM
    return Pki(
        ca_cert=_write(directory / "ca.crt", ca_cert.public_bytes(pem), 0o644),
        ca_key=_write(directory / "ca.key", _key_pem(ca_key)),
        serving_cert=_write(directory / "apiserver.crt", serving_cert.public_bytes(pem), 0o644),
        serving_key=_write(directory / "apiserver.key", _key_pem(serving_key)),
        admin_cert=_write(directory / "admin.crt", admin_cert.public_bytes(pem), 0o644),
        admin_key=_write(directory / "admin.key", _key_pem(admin_key)),
        front_proxy_cert=_write(
            directory / "front-proxy-client.crt", front_proxy_cert.public_bytes(pem), 0o644
        ),
        front_proxy_key=_write(directory / "front-proxy-client.key", _key_pem(front_proxy_key)),
        sa_key=_write(directory / "sa.key", _key_pem(sa_key)),
        sa_pub=_write(
            directory / "sa.pub",
            sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
            0o644,
        ),
        kubelet_client_cert=_write(
            directory / "apiserver-kubelet-client.crt",
            kubelet_client_cert.public_bytes(pem),
            0o644,
        ),
        kubelet_client_key=_write(
            directory / "apiserver-kubelet-client.key", _key_pem(kubelet_client_key)
        ),
    )


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user: str,
    credentials: dict[str, str],
    namespace: str | None = None,
) -> Path:
    """A single-context kubeconfig that stands alone (the CA is embedded)."""
    context: dict[str, str] = {"cluster": "overshoot-local", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "overshoot-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(ca_file),
                },
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "overshoot-local", "context": context}],
        "current-context": "overshoot-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --- processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    # Linux prctl(PR_SET_PDEATHSIG, SIGKILL): the child is killed when the process that
    # started it dies, even by SIGKILL, when no Python cleanup can run.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


@dataclasses.dataclass
class Component:
    """One running child process of the control plane and how to start it again."""

    name: str
    args: list[str]
    log: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, die_with_parent: bool) -> None:
        # PR_SET_PDEATHSIG fires when the *thread* that started the child ends; from any
        # thread but the main one that would kill the component long before the process ends.
        die_with_parent = die_with_parent and threading.current_thread() is threading.main_thread()
        with self.log.open("ab") as log:
            # Each component leads its own process group so a stop reaches anything it forks,
            # and a Ctrl-C in the terminal (sent to the foreground group) does not kill the
            # control plane before the harness has a chance to stop it in order.
            self.process = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        # The leader may be gone while something it forked is not.
        _signal_group(proc.pid, signal.SIGKILL)
        self.process = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# Control planes that are running in this process, for atexit and signal cleanup.
_RUNNING: weakref.WeakSet[ControlPlane] = weakref.WeakSet()
_cleanup_installed = False


def _stop_all() -> None:
    for plane in list(_RUNNING):
        with contextlib.suppress(Exception):
            plane.stop()


def install_stop_on_exit(stop_all: Callable[[], None]) -> None:
    """Call `stop_all` at interpreter exit and on SIGTERM/SIGHUP (for this harness and
    node.py, each with its own `stop_all`).

    pytest turns Ctrl-C into KeyboardInterrupt and runs fixture teardown itself; SIGTERM and
    SIGHUP (a CI timeout, a closed terminal) would otherwise end Python without `atexit`.
    The handler stops the children, then lets the signal do what it did before (so one
    installed later runs first).
    """
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        if previous in (signal.SIG_IGN, None):
            continue

        def handler(
            signum: int,
            frame: types.FrameType | None,
            previous: Callable[[int, types.FrameType | None], Any] | int = previous,
        ) -> None:
            stop_all()
            if callable(previous):
                previous(signum, frame)
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

        signal.signal(sig, handler)


def _install_cleanup() -> None:
    """Stop every control plane on interpreter exit and on SIGTERM/SIGHUP."""
    global _cleanup_installed
    if _cleanup_installed:
        return
    _cleanup_installed = True
    install_stop_on_exit(_stop_all)


# --- the control plane -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> Ports:
        # Held open together so the six ports are distinct; released just before use. Another
        # process could take one in between, which start() detects and retries.
        socks = []
        try:
            for _ in range(6):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", 0))
            return cls(*(int(s.getsockname()[1]) for s in socks))
        finally:
            for sock in socks:
                sock.close()

    def all(self) -> list[int]:
        return list(dataclasses.astuple(self))


class ControlPlane:
    """A complete Kubernetes control plane on 127.0.0.1 with kwok Nodes.

        with ControlPlane() as cp:
            subprocess.run(["kubectl", "--kubeconfig", cp.kubeconfig, "get", "nodes"])

    `workdir=None` uses a fresh temporary directory, removed on stop.
    """

    def __init__(
        self,
        *,
        nodes: int = 2,
        workdir: Path | None = None,
        keep_workdir: bool = False,
        binary_paths: dict[str, Path] | None = None,
        die_with_parent: bool = True,
        start_timeout: float = 120.0,
    ) -> None:
        if nodes < 0:
            raise ValueError("the number of kwok Nodes cannot be negative")
        # nodes=0: no kwok at all, for a cluster whose only Node is a real one (node.py).
        self.node_names = [f"kwok-node-{i}" for i in range(nodes)]
        self._workdir_arg = workdir
        self._keep_workdir = keep_workdir
        self._binary_paths = binary_paths
        self._die_with_parent = die_with_parent
        self.start_timeout = start_timeout
        self.workdir: Path = Path()
        self.ports: Ports | None = None
        self.pki: Pki | None = None
        self.components: dict[str, Component] = {}
        self.started_seconds: float | None = None

    # Public surface -------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin (system:masters) kubeconfig."""
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        assert self.ports is not None, "control plane not started"
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def ca_file(self) -> Path:
        assert self.pki is not None, "control plane not started"
        return self.pki.ca_cert

    def pids(self) -> dict[str, int]:
        return {name: c.pid for name, c in self.components.items() if c.pid is not None}

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component and wait until Pods can be scheduled onto kwok Nodes."""
        started = time.monotonic()
        paths = self._binary_paths or binaries.ensure(list(BINARIES))
        stage_dir = kwok_stage_dir()
        _install_cleanup()
        _RUNNING.add(self)
        try:
            for attempt in range(3):
                self._prepare_workdir()
                try:
                    self._start_components(paths, stage_dir)
                    break
                except ControlPlaneError as err:
                    # A port picked free was taken by someone else before we bound it.
                    if attempt == 2 or "address already in use" not in str(err):
                        raise
                    self._stop_components()
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop all components (reverse order, SIGTERM then SIGKILL) and remove the workdir."""
        self._stop_components()
        _RUNNING.discard(self)
        if self.workdir != Path() and not self._keep_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port with the same flags."""
        self.stop_apiserver()
        self.start_apiserver()

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver (an outage: clients get connection refused) until
        `start_apiserver()`; etcd and the other components keep running."""
        self.components["kube-apiserver"].stop()
        assert self.ports is not None
        deadline = time.monotonic() + STOP_TIMEOUT
        while not port_is_free(self.ports.apiserver) and time.monotonic() < deadline:
            time.sleep(0.1)

    def start_apiserver(self) -> None:
        """Start a stopped kube-apiserver again, on the same port with the same flags."""
        component = self.components["kube-apiserver"]
        component.start(die_with_parent=self._die_with_parent)
        with self._client() as client:
            self._wait_http(component, client, f"{self.server}/readyz")

    # Start-up ---------------------------------------------------------------------------

    def _prepare_workdir(self) -> None:
        if self._workdir_arg is None:
            if self.workdir == Path():
                _remove_orphaned_workdirs()
                self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
                (self.workdir / "owner.pid").write_text(str(os.getpid()))
        else:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("etcd", "logs", "kwok-home"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
            # 0700: etcd warns about anything wider on its data directory.
            (self.workdir / sub).mkdir(parents=True, mode=0o700)
        self.ports = Ports.pick()
        self.pki = generate_pki(self.workdir / "pki")
        write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca_file=self.pki.ca_cert,
            user="admin",
            credentials={
                "client-certificate-data": _b64(self.pki.admin_cert),
                "client-key-data": _b64(self.pki.admin_key),
            },
        )

    def _component(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        component = Component(name, args, self.workdir / "logs" / f"{name}.log", env)
        self.components[name] = component
        component.start(die_with_parent=self._die_with_parent)

    def _start_components(self, paths: dict[str, Path], stage_dir: Path) -> None:
        ports, pki, work = self.ports, self.pki, self.workdir
        assert ports is not None and pki is not None
        kubeconfig = str(self.kubeconfig)
        etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"

        with self._client() as client:
            self._component(
                "etcd",
                [
                    str(paths["etcd"]),
                    "--name=node0",
                    f"--data-dir={work / 'etcd'}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=node0={peer_url}",
                    "--auto-compaction-retention=1",
                    # Test data is thrown away with the directory: durability buys nothing.
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
            )
            self._wait_http(self.components["etcd"], client, f"{etcd_url}/health")

            self._component(
                "kube-apiserver",
                [
                    str(paths["kube-apiserver"]),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={ports.apiserver}",
                    f"--cert-dir={work / 'pki' / 'generated'}",
                    f"--tls-cert-file={pki.serving_cert}",
                    f"--tls-private-key-file={pki.serving_key}",
                    f"--client-ca-file={pki.ca_cert}",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                    "--authorization-mode=Node,RBAC",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    # On top of the default set (NamespaceLifecycle, ServiceAccount,
                    # PodSecurity, ResourceQuota, webhooks, ...), as every real cluster has.
                    "--enable-admission-plugins=NodeRestriction",
                    "--allow-privileged=true",
                    "--profiling=false",
                    # The `kubernetes` Service would point at 127.0.0.1, which Endpoints
                    # validation refuses; nothing runs inside the cluster to use it anyway.
                    "--endpoint-reconciler-type=none",
                    # Without a bound on draining watches, SIGTERM left the API server
                    # waiting on its clients' open watches until the harness' SIGKILL (10 s);
                    # with it, clients see the watch end and re-list at once after a restart.
                    "--shutdown-watch-termination-grace-period=1s",
                    f"--requestheader-client-ca-file={pki.ca_cert}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={pki.front_proxy_cert}",
                    f"--proxy-client-key-file={pki.front_proxy_key}",
                    # For a real kubelet (node.py): `kubectl logs/exec` reach it at the Node's
                    # InternalIP (a node has no resolvable hostname here; kwok's InternalIP is
                    # 127.0.0.1), authenticated with a client certificate it verifies.
                    "--kubelet-preferred-address-types=InternalIP",
                    f"--kubelet-client-certificate={pki.kubelet_client_cert}",
                    f"--kubelet-client-key={pki.kubelet_client_key}",
                ],
            )
            self._wait_http(self.components["kube-apiserver"], client, f"{self.server}/readyz")

            # Both serve health over HTTPS; they reuse the apiserver's serving certificate
            # (it names 127.0.0.1) so the harness can verify them against the one CA.
            serving = [
                "--bind-address=127.0.0.1",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                "--leader-elect=false",
                # Tests create and delete objects in bursts; client-side throttling would
                # only slow garbage collection and namespace deletion down.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ]
            self._component(
                "kube-controller-manager",
                [
                    str(paths["kube-controller-manager"]),
                    *serving,
                    f"--secure-port={ports.controller_manager}",
                    "--controllers=*," + ",".join(f"-{c}" for c in DISABLED_CONTROLLERS),
                    f"--root-ca-file={pki.ca_cert}",
                    f"--service-account-private-key-file={pki.sa_key}",
                    # Each controller acts as its own ServiceAccount, as in a real cluster,
                    # so RBAC mistakes in the default bootstrap roles would show here too.
                    "--use-service-account-credentials=true",
                    f"--cluster-signing-cert-file={pki.ca_cert}",
                    f"--cluster-signing-key-file={pki.ca_key}",
                ],
            )
            self._component(
                "kube-scheduler",
                [
                    str(paths["kube-scheduler"]),
                    *serving,
                    f"--secure-port={ports.scheduler}",
                ],
            )
            # nodes=0: no kwok at all (a cluster whose only Node is a real one).
            if self.node_names:
                stages = work / "kwok-stages.yaml"
                stages.write_text(
                    "\n---\n".join((stage_dir / f).read_text() for f in KWOK_STAGE_FILES)
                )
                key, value = KWOK_NODE_ANNOTATION
                self._component(
                    "kwok",
                    [
                        str(paths["kwok"]),
                        f"--kubeconfig={kubeconfig}",
                        f"--config={stages}",
                        "--manage-all-nodes=false",
                        f"--manage-nodes-with-annotation-selector={key}={value}",
                        f"--cidr={POD_CIDR}",
                        "--node-ip=127.0.0.1",
                        f"--node-port={ports.kwok}",
                        f"--server-address=127.0.0.1:{ports.kwok}",
                        "--node-lease-duration-seconds=40",
                    ],
                    # kwok also reads ~/.kwok/kwok.yaml when it exists; a private HOME keeps a
                    # developer's own kwok configuration out of the tests.
                    env={**os.environ, "HOME": str(work / "kwok-home")},
                )
            for name, port in (
                ("kube-controller-manager", ports.controller_manager),
                ("kube-scheduler", ports.scheduler),
            ):
                self._wait_http(self.components[name], client, f"https://127.0.0.1:{port}/healthz")

    def _bootstrap(self) -> None:
        """Create the kwok Nodes and wait until a Pod could be scheduled and admitted."""
        key, value = KWOK_NODE_ANNOTATION
        label_key, label_value = KWOK_NODE_LABEL
        with self._client() as client:
            for name in self.node_names:
                node = {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {
                            label_key: label_value,
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "kubernetes.io/role": "agent",
                        },
                    },
                    "spec": {},
                    # A Node may carry status on create (a kubelet registers this way); kwok
                    # keeps allocatable and fills in conditions, addresses and nodeInfo.
                    "status": {
                        "allocatable": NODE_RESOURCES,
                        "capacity": NODE_RESOURCES,
                    },
                }
                response = client.post(f"{self.server}/api/v1/nodes", json=node)
                if response.status_code not in (201, 409):
                    raise ControlPlaneError(
                        f"Creating Node {name} failed: {response.status_code} {response.text}"
                    )

            def nodes_schedulable() -> bool:
                items = client.get(f"{self.server}/api/v1/nodes").json().get("items", [])
                ready = {
                    n["metadata"]["name"]
                    for n in items
                    if any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in n.get("status", {}).get("conditions", [])
                    )
                    # The node lifecycle controller removes the not-ready taint once it has
                    # seen the Node Ready; until then the scheduler would refuse it.
                    and not any(
                        t["key"].startswith("node.kubernetes.io/")
                        for t in n.get("spec", {}).get("taints", [])
                    )
                }
                return set(self.node_names) <= ready

            def default_service_account() -> bool:
                url = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
                return client.get(url).status_code == 200

            self._wait(nodes_schedulable, "kwok Nodes Ready and untainted", "kwok")
            self._wait(
                default_service_account,
                "ServiceAccount default/default",
                "kube-controller-manager",
            )

    # Waiting ----------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        # trust_env=False: a proxy from the environment must never see 127.0.0.1 traffic.
        return httpx.Client(verify=context, trust_env=False, timeout=5.0)

    def _deadline_error(self, what: str, component: str, detail: str = "") -> ControlPlaneError:
        c = self.components.get(component)
        state = ""
        if c is not None and c.process is not None and c.process.poll() is not None:
            state = f" ({component} exited with code {c.process.returncode})"
        log = self.workdir / "logs" / f"{component}.log"
        return ControlPlaneError(
            f"Waiting for {what} failed{state}{detail}. Last lines of {log}:\n{tail(log)}"
        )

    def _wait(self, predicate: Callable[[], bool], what: str, component: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error = ""
        while time.monotonic() < deadline:
            for c in self.components.values():
                if not c.running():
                    raise self._deadline_error(what, c.name)
            try:
                if predicate():
                    return
            except (httpx.HTTPError, ValueError, KeyError) as err:
                last_error = f"; last error: {err!r}"
            time.sleep(0.2)
        raise self._deadline_error(
            what, component, f" after {self.start_timeout:.0f} s{last_error}"
        )

    def _wait_http(self, component: Component, client: httpx.Client, url: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            if not component.running():
                raise self._deadline_error(url, component.name)
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError as err:
                last = f"; last error: {err!r}"
            time.sleep(0.1)
        raise self._deadline_error(url, component.name, f" after {self.start_timeout:.0f} s{last}")

    # Stopping ---------------------------------------------------------------------------

    def _stop_components(self) -> None:
        for component in reversed(list(self.components.values())):
            component.stop()
        self.components.clear()


# --- `overshoot-localstack cluster up|down` ----------------------------------------------


def run_dir() -> Path:
    return binaries.cache_dir() / "run" / "cluster"


def _state_file() -> Path:
    return run_dir() / "state.json"


def _read_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(nodes: int) -> int:
    """The detached supervisor: owns one control plane until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    plane = ControlPlane(nodes=nodes, workdir=run_dir() / "work", die_with_parent=True)
    state: dict[str, Any] = {"supervisor": os.getpid(), "status": "starting"}
    _state_file().write_text(json.dumps(state))
    try:
        plane.start()
    except Exception as err:
        _state_file().write_text(json.dumps({**state, "status": "failed", "error": str(err)}))
        return 1
    state.update(
        status="running",
        dir=str(plane.workdir),
        kubeconfig=str(plane.kubeconfig),
        server=plane.server,
        pids=plane.pids(),
        binaries={name: c.args[0] for name, c in plane.components.items()},
        started_seconds=round(plane.started_seconds or 0.0, 1),
    )
    _state_file().write_text(json.dumps(state, indent=2))
    try:
        while not stop.wait(1.0):
            dead = [c.name for c in plane.components.values() if not c.running()]
            if dead:
                print(f"Component {', '.join(dead)} exited; stopping.", file=sys.stderr)
                break
    finally:
        plane.stop()
        _state_file().unlink(missing_ok=True)
    return 0


def _print_exports(state: dict[str, Any]) -> None:
    print(f"export KUBECONFIG={state['kubeconfig']}")
    kubectl = binaries.find("kubectl")
    if kubectl:
        print(f"export PATH={kubectl.parent}:$PATH  # kubectl {binaries.KUBERNETES_VERSION}")


def up(nodes: int, timeout: float) -> int:
    state = _read_state()
    if state and _alive(int(state["supervisor"])):
        print(f"A control plane is already running (supervisor pid {state['supervisor']}).")
        if state.get("kubeconfig"):
            _print_exports(state)
        return 0
    # Fail before detaching, where the message reaches the terminal (e.g. no Go installed).
    binaries.ensure(list(BINARIES))
    kwok_stage_dir()
    run_dir().mkdir(parents=True, exist_ok=True)
    _state_file().unlink(missing_ok=True)
    log = run_dir() / "supervisor.log"
    with log.open("wb") as out:
        subprocess.Popen(
            [sys.executable, "-m", "overshoot_localstack", "cluster", "_serve", f"--nodes={nodes}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _read_state()
        if state and state.get("status") == "running":
            print(f"Control plane up in {state['started_seconds']} s at {state['server']}.")
            _print_exports(state)
            print("Stop it with `make cluster-down` (overshoot-localstack cluster down).")
            return 0
        if state and state.get("status") == "failed":
            print(f"error: {state.get('error')}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(f"error: not ready after {timeout:.0f} s; see {log}", file=sys.stderr)
    down()
    return 1


def down() -> int:
    state = _read_state()
    if state is None:
        print("No control plane is running.")
        return 0
    supervisor = int(state["supervisor"])
    if _alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + 3 * STOP_TIMEOUT
        while _alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
    # A supervisor killed hard leaves its components; each leads its own process group.
    # Only processes still running one of our cached binaries: a stale state file's pids
    # may belong to something else by now.
    for name, pid in state.get("pids", {}).items():
        try:
            argv0 = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.decode(errors="replace") == state.get("binaries", {}).get(name):
            _signal_group(int(pid), signal.SIGKILL)
    shutil.rmtree(run_dir() / "work", ignore_errors=True)
    _state_file().unlink(missing_ok=True)
    print("Control plane stopped.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="overshoot-localstack cluster",
        description="Run a local Kubernetes control plane (etcd, kube-apiserver, "
        "controller-manager, scheduler, kwok Nodes) on 127.0.0.1.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{up,down}")
    p_up = sub.add_parser("up", help="start it detached and print the KUBECONFIG to use")
    p_up.add_argument("--nodes", type=int, default=2, help="kwok Nodes to create (default 2)")
    p_up.add_argument("--timeout", type=float, default=180.0)
    sub.add_parser("down", help="stop it and remove its files")
    p_serve = sub.add_parser("_serve")  # internal: the detached supervisor
    p_serve.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up(args.nodes, args.timeout)
        if args.command == "down":
            return down()
        return serve(args.nodes)
    except (binaries.BuildError, ControlPlaneError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
