"""A real Kubernetes node for the local stack: kubelet + containerd + runc + a CNI bridge.

Role: next to the kwok Nodes of `cluster.py`, one Node that runs Pods as real containers
(kubelet v1.36.3 built like the control plane, Debian's containerd 1.6 and runc, the CNI
bridge and host-local plugins), registered with a `ControlPlane` and started and stopped
like its other components. A test or the demo imports a locally built OCI archive into its
containerd (`RealNode.import_image`) and runs it with `imagePullPolicy: Never`.

Which Pods land on it: the Node carries the label `overshoot.ai/real-node=true` and the taint
`overshoot.ai/real-node=true:NoSchedule`. A Pod meant for it selects and tolerates both
(`RealNode.scheduling()` returns exactly that, to merge into a Pod spec):

    nodeSelector: {overshoot.ai/real-node: "true"}
    tolerations: [{key: overshoot.ai/real-node, operator: Equal, value: "true",
                   effect: NoSchedule}]

Everything else keeps landing on the untainted kwok Nodes.

The host is left exactly as found; how:
- Everything lives in one work directory `/tmp/overshoot-node-*` (containerd's root, state,
  socket and runc root; the kubelet's root, certificates, pod logs, volume plugin dir; the
  CNI config and IPAM state; the pause image).
- containerd, its shims, runc, the CNI plugins and the kubelet all run in one private mount
  namespace (held by an `unshare` process). Every mount they make (overlay root filesystems,
  Secret tmpfs volumes, /dev/shm, the Pods' network namespaces, which containerd pins under
  its state dir: `netns_mounts_under_state_dir`) exists only there and goes when it does.
  In that namespace /run, /var/lib and /var/log are overlays whose upper layer is in the
  work directory, so the paths nobody can configure (containerd 1.6's shim sockets in
  /run/containerd/s, libcni's cache in /var/lib/cni, the kubelet's /var/log/containers
  links) never reach the host either.
- The kubelet would set six kernel tunables (vm.overcommit_memory=1, kernel.panic=10,
  kernel.panic_on_oops=1, ...) on this shared host; in the namespace those /proc/sys files
  are covered by files that already hold the wanted values, so it has nothing to change.
  net.ipv4.ip_forward is covered the same way (with the host's value), so nothing the node
  runs can turn the host into a router.
- `makeIPTablesUtilChains: false`: the kubelet creates no iptables chains at all (no
  KUBE-FIREWALL, whose rule drops 127.0.0.0/8 traffic from non-loopback sources, no
  KUBE-IPTABLES-HINT/KUBE-KUBELET-CANARY); the bridge plugin runs with `ipMasq: false` and
  `isGateway: false` (no CNI-* chains, no forwarding), the harness gives the bridge its
  gateway address itself.
- Network: per instance N, a veth pair `ovkn<N>`/`ovkp<N>` with the node IP 10.216.N.1/32
  (the kubelet and containerd's stream server bind it, never 0.0.0.0), and the Pod bridge
  `ovkb<N>` 10.217.N.1/24 (Pods get 10.217.N.2-254 and a default route to the host through
  it; the host does not forward). Neither range overlaps kwok's 10.244.0.0/16, the Service
  range 10.0.0.0/24, netns.py's 10.213.0.0/16 or this host's own networks.
- cgroups: the kubelet's `cgroupRoot` is `/overshoot-node-<N>` (created in every hierarchy);
  the holder, containerd, its shims and the kubelet sit in `<root>/daemons` of the pids
  hierarchy, the Pods under `<root>/kubepods`. So every process the node ever started is
  found by its cgroup, or by its mount namespace, or (containerd's shims) by the socket path
  on its command line.
- Stopping (also at interpreter exit, on SIGTERM/SIGHUP, and for a work directory whose
  owner died, e.g. a SIGKILLed test process: `cleanup_orphans()`, which every start runs):
  kubelet, then containerd, then SIGKILL to everything in the cgroups and the namespace
  (which takes every mount with it), delete the interfaces, remove the cgroups, delete the
  Node object, remove the work directory. `HostState` records what the host looks like
  (interfaces, addresses, routes, iptables, mounts, /run/netns, well-known directories,
  cgroups, sysctls, node processes) so a test can prove before == after.

Boundary: processes, the `ip` command, cgroupfs and the work directory; the API server only
to wait for the Node and to delete it. Needs root. Binaries come from `binaries.ensure()`
(kubelet) and Debian (`ensure_packages()`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from overshoot_localstack import binaries
from overshoot_localstack.cluster import (
    Component,
    ControlPlane,
    install_stop_on_exit,
    tail,
    write_kubeconfig,
)

logger = logging.getLogger(__name__)

NODE_LABEL = ("overshoot.ai/real-node", "true")
NODE_TAINT: dict[str, str] = {
    "key": "overshoot.ai/real-node",
    "value": "true",
    "effect": "NoSchedule",
}

DEBIAN_PACKAGES = ["containerd", "runc", "containernetworking-plugins", "iptables"]
CNI_BIN_DIR = Path("/usr/lib/cni")  # where Debian's containernetworking-plugins installs
RUNC = "/usr/bin/runc"

WORKDIR_PREFIX = "overshoot-node-"
CGROUP_PREFIX = "overshoot-node-"
# Interfaces: ovkn<N>/ovkp<N> (node veth pair), ovkb<N> (Pod bridge). Never "ovs...":
# netns.py owns that prefix.
IF_PREFIX = "ovk"
NODE_NET = ipaddress.IPv4Network("10.216.0.0/16")  # node IP 10.216.N.1/32
POD_NET = ipaddress.IPv4Network("10.217.0.0/16")  # Pod subnet 10.217.N.0/24
MAX_INSTANCES = 250

PAUSE_VERSION = "3.10.2"  # TAG in k8s.io/kubernetes@v1.36.3/build/pause/Makefile
PAUSE_IMAGE = f"overshoot.local/pause:{PAUSE_VERSION}"
SNAPSHOTTER = "overlayfs"

# What the kubelet's container manager (setupKernelTunables) would set on the host; inside
# the node's mount namespace these files already read so.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# Covered with the host's own value: nothing in the node may enable forwarding.
PINNED_SYSCTLS = ("net/ipv4/ip_forward",)
# In the node's mount namespace these are overlays with their upper layer in the work dir.
OVERLAID_DIRS = ("/run", "/var/lib", "/var/log")

STOP_TIMEOUT = 10.0


class NodeError(RuntimeError):
    """The node could not be set up or started; the message says why (with a log's tail)."""


# --- Debian packages, the pause image, OCI archives ---------------------------------------


def ensure_packages() -> list[str]:
    """apt-get install whatever of containerd, runc, the CNI plugins and iptables is missing."""
    from overshoot_localstack.rtsp import RtspServerError, ensure_debian_packages

    try:
        return ensure_debian_packages(DEBIAN_PACKAGES)
    except RtspServerError as err:
        raise NodeError(str(err)) from err


def build_static(source: Path, output: Path, *, defines: Sequence[str] = ()) -> Path:
    """Compile one C file into a static binary (`gcc -Os -static`)."""
    gcc = shutil.which("gcc")
    if not gcc:
        raise NodeError("gcc is needed to build the pause image: `apt-get install gcc libc6-dev`.")
    args = [gcc, "-Os", "-static", "-Wall", *(f"-D{d}" for d in defines), "-o", str(output)]
    proc = subprocess.run([*args, str(source)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeError(f"`{' '.join(args)} {source}` failed: {proc.stderr[-2000:]}")
    return output


def _gomodcache() -> Path:
    env = os.environ.get("GOMODCACHE")
    if env:
        return Path(env)
    go = shutil.which("go")
    if go:
        out = subprocess.run(
            [go, "env", "GOMODCACHE"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out:
            return Path(out)
    return Path.home() / "go" / "pkg" / "mod"


def pause_source() -> Path:
    """kubernetes' build/pause/linux/pause.c from the Go module cache (the kubelet build fills it)."""
    path = (
        _gomodcache() / f"k8s.io/kubernetes@{binaries.KUBERNETES_VERSION}/build/pause/linux/pause.c"
    )
    if not path.is_file():
        raise NodeError(
            f"{path} is missing: build the kubelet first (`overshoot-localstack build "
            "kubernetes`), which downloads k8s.io/kubernetes into the module cache."
        )
    return path


def _tar_bytes(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """A deterministic tar (mtime 0, root-owned) of `path -> (content, mode)`, parents included."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in sorted(files):
            parts = name.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            content, mode = files[name]
            info = tarfile.TarInfo(name.strip("/"))
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def write_oci_archive(
    path: Path,
    *,
    reference: str,
    files: Mapping[str, tuple[bytes, int]],
    entrypoint: Sequence[str],
    user: str | None = None,
    env: Sequence[str] = ("PATH=/",),
) -> Path:
    """An OCI image layout as a tar archive (what `ctr images import` takes): one layer with
    `files` (`path -> (content, mode)`), an image config, a manifest and an index naming it
    `reference` (both as containerd's `io.containerd.image.name` and the OCI ref name)."""
    layer = _tar_bytes(files)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config_body: dict[str, Any] = {"Entrypoint": list(entrypoint), "Env": list(env)}
    if user:
        config_body["User"] = user
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config_body,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "overshoot_localstack.node.write_oci_archive"}],
        },
        sort_keys=True,
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    tag = reference.rsplit(":", 1)[1] if ":" in reference.rsplit("/", 1)[-1] else "latest"
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": reference,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    entries: dict[str, tuple[bytes, int]] = {
        "oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644),
        "index.json": (index, 0o644),
    }
    for digest, blob in (
        (layer_digest, layer),
        (config_digest, config),
        (manifest_digest, manifest),
    ):
        entries[f"blobs/sha256/{digest.split(':', 1)[1]}"] = (blob, 0o644)
    path.write_bytes(_tar_bytes(entries))
    return path


def pause_archive(directory: Path) -> Path:
    """The sandbox ("pause") image as an OCI archive, built from kubernetes' own pause.c."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = build_static(
        pause_source(), directory / "pause", defines=[f"VERSION=v{PAUSE_VERSION}-overshoot"]
    )
    return write_oci_archive(
        directory / "pause.oci.tar",
        reference=PAUSE_IMAGE,
        files={"pause": (binary.read_bytes(), 0o755)},
        entrypoint=["/pause"],
        user="65535:65535",
    )


# --- host state ---------------------------------------------------------------------------


def _run(args: Sequence[str], *, check: bool = True) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"`{shlex.join(args)}` failed (exit {proc.returncode}): {proc.stderr}")
    return proc.stdout


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) of every mount in this process's mount namespace."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        point = left.split()[4].replace("\\040", " ")
        fstype, source = [*right.split(), "", ""][:2]
        mounts.append((point, fstype, source))
    return mounts


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy, e.g. /sys/fs/cgroup/pids."""
    return sorted(
        {Path(point) for point, fstype, _ in _mountinfo() if fstype in ("cgroup", "cgroup2")}
    )


def _tracking_hierarchy() -> Path:
    """The hierarchy whose `<root>/daemons` holds the node's daemons (never cpuset: a new
    cpuset cgroup takes no process before its cpus and mems are set)."""
    hierarchies = cgroup_hierarchies()
    for name in ("pids", "freezer", "systemd", "unified"):
        for h in hierarchies:
            if h.name == name:
                return h
    if not hierarchies:
        raise NodeError("No cgroup hierarchy is mounted under /sys/fs/cgroup.")
    return hierarchies[0]


def _pids_in(directory: Path) -> set[int]:
    pids: set[int] = set()
    for procs in directory.rglob("cgroup.procs") if directory.is_dir() else []:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _live(pid: int) -> bool:
    """Running, not a zombie (a zombie's cgroup and namespaces are gone; its parent reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


_NODE_BINARIES = {"kubelet", "containerd", "containerd-shim", "containerd-shim-runc-v1"}
_NODE_BINARIES |= {"containerd-shim-runc-v2"}


def _node_process(pid: int) -> str | None:
    """'comm cmdline' of a process that belongs to any real node (this or another run), else
    None: a node binary, or anything under an overshoot-node cgroup or work directory."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    cmdline = _proc_cmdline(pid)
    if comm in _NODE_BINARIES or f"/{CGROUP_PREFIX}" in cgroups or WORKDIR_PREFIX in cmdline:
        return f"{comm} {cmdline}"
    return None


def _listing(path: Path, *, recursive: bool) -> list[str]:
    if not path.exists() and not path.is_symlink():
        return []
    out = [f"{path}{'/' if path.is_dir() else ''}"]
    if path.is_dir() and not path.is_symlink():
        try:
            children = sorted(path.iterdir())
        except OSError:
            return out
        for child in children:
            if recursive:
                out += _listing(child, recursive=True)
            else:
                out.append(f"{child}{'/' if child.is_dir() else ''}")
    return out


# Directories whose entries a node could plausibly create (top level), and the ones it would
# fill (recursively).
# (Not all of /etc: package installs by others on a shared host change it, and nothing of
# the node writes there.)
_TOP_LEVEL_DIRS = ("/run", "/var/lib", "/var/log", "/opt", "/usr/libexec")
_RECURSIVE_DIRS = (
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/log/pods",
    "/var/log/containers",
    "/run/containerd",
    "/run/netns",
    "/etc/cni",
    "/etc/containerd",
    "/etc/kubernetes",
    "/opt/cni",
    "/opt/containerd",
    "/usr/libexec/kubernetes",
)
_COUNTERS = re.compile(r" \[\d+:\d+\]$")  # an iptables-save chain's packet/byte counters
_TMP_PATTERN = re.compile(r"^(containerd|kubelet|cni|runc|overshoot-node-)")


@dataclasses.dataclass(frozen=True)
class HostState:
    """A snapshot of what a node could change on the host, each aspect a set of lines.

    `after.diff(before)` names what appeared and what vanished. Other harnesses on a shared
    machine change some of it meanwhile (netns.py's ovs<N> namespaces, a buildah build):
    `foreign()` tells their lines apart so a test can show them without failing on them.
    """

    aspects: dict[str, frozenset[str]]

    @classmethod
    def capture(cls) -> HostState:
        aspects: dict[str, frozenset[str]] = {}
        links = json.loads(_run(["ip", "-j", "-d", "link", "show"]) or "[]")
        aspects["links"] = frozenset(
            f"{link['ifname']} kind={link.get('linkinfo', {}).get('info_kind', '-')} "
            f"master={link.get('master', '-')}"
            for link in links
        )
        addrs = json.loads(_run(["ip", "-j", "addr", "show"]) or "[]")
        aspects["addresses"] = frozenset(
            f"{a['ifname']} {info['local']}/{info['prefixlen']}"
            for a in addrs
            for info in a.get("addr_info", [])
        )
        routes = _run(["ip", "-4", "route", "show", "table", "all"], check=False)
        routes += _run(["ip", "-6", "route", "show", "table", "all"], check=False)
        aspects["routes"] = frozenset(line.strip() for line in routes.splitlines() if line)
        rules: set[str] = set()
        for tool in ("iptables-save", "ip6tables-save", "iptables-legacy-save"):
            if shutil.which(tool):
                for line in _run([tool], check=False).splitlines():
                    if line and not line.startswith("#"):
                        rules.add(f"{tool}: {_COUNTERS.sub('', line)}")
        aspects["iptables"] = frozenset(rules)
        aspects["mounts"] = frozenset(" ".join(m) for m in _mountinfo())
        netns = Path("/run/netns")
        aspects["netns"] = frozenset(os.listdir(netns) if netns.is_dir() else [])
        paths: list[str] = []
        for d in _TOP_LEVEL_DIRS:
            paths += _listing(Path(d), recursive=False)
        for d in _RECURSIVE_DIRS:
            paths += _listing(Path(d), recursive=True)
        tmp = Path(tempfile.gettempdir())
        paths += [str(p) for p in tmp.iterdir() if _TMP_PATTERN.match(p.name)]
        aspects["paths"] = frozenset(paths)
        cgroups: list[str] = []
        for h in cgroup_hierarchies():
            with contextlib.suppress(OSError):
                for child in h.iterdir():
                    if child.is_dir():
                        cgroups.append(str(child))
                        if child.name.startswith(CGROUP_PREFIX):
                            cgroups += [str(p) for p in child.rglob("*") if p.is_dir()]
        aspects["cgroups"] = frozenset(cgroups)
        sysctls = []
        for key in [*KUBELET_SYSCTLS, *PINNED_SYSCTLS]:
            with contextlib.suppress(OSError):
                value = Path("/proc/sys", key).read_text().strip()
                sysctls.append(f"{key.replace('/', '.')}={value}")
        aspects["sysctls"] = frozenset(sysctls)
        procs = []
        # Zombies are left out: they hold nothing, and pid 1 reaps the orphaned ones (the
        # shims) within a second or two.
        for pid in _all_pids():
            if pid != os.getpid() and _live(pid) and (description := _node_process(pid)):
                procs.append(f"{pid} {description}")
        aspects["processes"] = frozenset(procs)
        return cls(aspects)

    def diff(self, before: HostState) -> dict[str, dict[str, list[str]]]:
        """{aspect: {"added": [...], "removed": [...]}} for every aspect that differs."""
        out: dict[str, dict[str, list[str]]] = {}
        for aspect in sorted(set(self.aspects) | set(before.aspects)):
            now, then = (
                self.aspects.get(aspect, frozenset()),
                before.aspects.get(aspect, frozenset()),
            )
            if now != then:
                out[aspect] = {"added": sorted(now - then), "removed": sorted(then - now)}
        return out


# Lines that belong to other harnesses of this project or to image builds on the same host.
_FOREIGN = re.compile(
    r"\bovs[hn]?\d+\b|10\.213\.|^/run/netns/$|/var/lib/containers|/run/containers|"
    r"/run/runc\b|podman|netavark|NETAVARK|buildah"
)


def foreign(line: str) -> bool:
    """Whether a `HostState` line belongs to something other than a real node: netns.py's
    namespaces and veths (ovs<N>, 10.213.0.0/16, the /run/netns directory `ip netns`
    creates), buildah/podman storage, cgroups and networks. (A node never writes to the
    host's /run: it sees an overlay of it.)"""
    return bool(_FOREIGN.search(line)) and IF_PREFIX not in line and CGROUP_PREFIX not in line


def split_foreign(
    diff: Mapping[str, Mapping[str, Sequence[str]]],
) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, list[str]]]]:
    """(ours, theirs): a `HostState.diff` split by `foreign()`; empty dicts stay out."""
    ours: dict[str, dict[str, list[str]]] = {}
    theirs: dict[str, dict[str, list[str]]] = {}
    for aspect, changes in diff.items():
        for kind, lines in changes.items():
            for line in lines:
                target = theirs if foreign(line) else ours
                target.setdefault(aspect, {}).setdefault(kind, []).append(line)
    return ours, theirs


# --- PKI ----------------------------------------------------------------------------------


def _issue(
    ca_cert_path: Path,
    ca_key_path: Path,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName] = (),
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a leaf signed by the control plane's CA."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def _name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


# --- the state a node leaves on the host, and tearing it down -----------------------------


@dataclasses.dataclass
class NodeState:
    """What one node created on the host: enough to remove all of it without its process.

    Written to `<workdir>/state.json` before each thing is made (or right after, where the
    name is only known to be ours once it exists, as for a claimed interface).
    """

    workdir: str
    owner_pid: int
    owner_start: str | None
    index: int | None = None
    name: str = ""
    interfaces: list[str] = dataclasses.field(default_factory=list)
    cgroup_root: str | None = None
    socket: str = ""
    holder_pid: int | None = None
    holder_start: str | None = None
    server: str = ""
    client_cert: str = ""
    client_key: str = ""
    ca_cert: str = ""

    @property
    def path(self) -> Path:
        return Path(self.workdir) / "state.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, workdir: Path) -> NodeState | None:
        try:
            data = json.loads((workdir / "state.json").read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def owner_alive(self) -> bool:
        return _start_time(self.owner_pid) == self.owner_start and self.owner_start is not None


def _kill_everything(state: NodeState) -> int:
    """SIGKILL every process of the node until none is left; returns how many were killed.

    Ours: whatever sits in the node's cgroups (holder, containerd, shims, kubelet, every
    container), whatever runs containerd's socket on its command line (the shims, which
    outlive containerd by design), and whatever shares the mount namespace of a process
    that is ours by one of those tests (asked only while such a process lives, so the
    namespace's inode cannot have been reused by someone else's).
    """
    killed: set[int] = set()
    me = os.getpid()
    found: set[int] = set()
    for _ in range(100):
        found = set()
        if state.cgroup_root:
            for h in cgroup_hierarchies():
                found |= _pids_in(h / state.cgroup_root.strip("/"))
        if state.socket:
            needle = f"-address {state.socket}"
            found |= {p for p in _all_pids() if needle in _proc_cmdline(p)}
        if state.holder_pid and _start_time(state.holder_pid) == state.holder_start:
            found.add(state.holder_pid)
        namespaces = set()
        for pid in found:
            with contextlib.suppress(OSError):
                namespaces.add(os.stat(f"/proc/{pid}/ns/mnt").st_ino)
        namespaces.discard(os.stat("/proc/self/ns/mnt").st_ino)
        if namespaces:
            for pid in _all_pids():
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{pid}/ns/mnt").st_ino in namespaces:
                        found.add(pid)
        found = {p for p in found if p != me and _live(p)}
        if not found:
            _wait_reaped(killed)
            return len(killed)
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= found
        time.sleep(0.05)
    raise NodeError(f"Processes of node {state.name} survive SIGKILL: {sorted(found)}")


def _wait_reaped(pids: Iterable[int], timeout: float = 15.0) -> None:
    """Wait until killed processes are gone from the process table, not just dead: orphans
    (the shims) are reaped by pid 1, which on this VM takes about 1.5 s."""
    deadline = time.monotonic() + timeout
    waiting = {(p, start) for p in pids if (start := _start_time(p)) is not None}
    while waiting and time.monotonic() < deadline:
        waiting = {(p, start) for p, start in waiting if _start_time(p) == start}
        if waiting:
            time.sleep(0.1)


def _unmount_under(directory: str) -> None:
    """Unmount anything mounted under `directory` in this (the host's) namespace, deepest
    first. Normally there is nothing: the node mounts only in its own namespace."""
    prefix = directory.rstrip("/") + "/"
    points = [p for p, _, _ in _mountinfo() if p == directory or p.startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        _run(["umount", "--lazy", point], check=False)


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _delete_interfaces(state: NodeState) -> None:
    for name in state.interfaces:
        if not _link_exists(name):
            continue
        # Pod veths still enslaved to our bridge (their namespaces are gone by now, so the
        # kernel is removing them anyway): delete them, they are ours by their master.
        if (Path(f"/sys/class/net/{name}") / "bridge").is_dir():
            for port in sorted(os.listdir(f"/sys/class/net/{name}/brif")):
                _run(["ip", "link", "del", port], check=False)
        _run(["ip", "link", "del", name], check=False)


def _remove_cgroups(root: str) -> None:
    for h in cgroup_hierarchies():
        top = h / root.strip("/")
        if not top.is_dir():
            continue
        deadline = time.monotonic() + 10
        while top.exists() and time.monotonic() < deadline:
            for dirpath, _dirnames, _files in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
            if top.exists():
                time.sleep(0.1)


def _delete_node_object(state: NodeState) -> None:
    if not (state.server and state.name and state.client_cert):
        return
    try:
        context = ssl.create_default_context(cafile=state.ca_cert)
        context.load_cert_chain(state.client_cert, state.client_key)
        with httpx.Client(verify=context, trust_env=False, timeout=3.0) as client:
            client.delete(f"{state.server}/api/v1/nodes/{state.name}")
    except (OSError, ssl.SSLError, httpx.HTTPError):
        pass  # the control plane is gone too: nothing to delete


def teardown(state: NodeState, *, delete_node: bool = True) -> None:
    """Remove everything `state` records, whatever is still running. Idempotent."""
    _kill_everything(state)
    _unmount_under(state.workdir)
    _delete_interfaces(state)
    if state.cgroup_root:
        _remove_cgroups(state.cgroup_root)
    if delete_node:
        _delete_node_object(state)
    shutil.rmtree(state.workdir, ignore_errors=True)


def cleanup_orphans() -> list[str]:
    """Tear down every node whose owning process is gone (e.g. SIGKILLed); returns their
    work directories."""
    cleaned = []
    for workdir in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        state = NodeState.load(workdir)
        if state is None:
            # Killed between creating the directory and its first state write: nothing else
            # was made yet. Left alone while fresh (its owner may be writing it now).
            with contextlib.suppress(OSError):
                if time.time() - workdir.stat().st_mtime > 3600:
                    shutil.rmtree(workdir, ignore_errors=True)
            continue
        if state.owner_alive():
            continue
        logger.info("Removing the leftovers of node %s (%s)", state.name, workdir)
        teardown(state)
        cleaned.append(str(workdir))
    return cleaned


# --- cleanup at exit ----------------------------------------------------------------------

_RUNNING: weakref.WeakSet[RealNode] = weakref.WeakSet()
_cleanup_installed = False


def _stop_all() -> None:
    for node in list(_RUNNING):
        with contextlib.suppress(Exception):
            node.stop()


def _install_cleanup() -> None:
    """Stop every node at interpreter exit and on SIGTERM/SIGHUP, before anything else that
    was registered earlier (the control plane's own handler runs after ours)."""
    global _cleanup_installed
    if _cleanup_installed:
        return
    _cleanup_installed = True
    install_stop_on_exit(_stop_all)


# --- the node -----------------------------------------------------------------------------


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _used_indexes() -> set[int]:
    used: set[int] = set()
    pattern = re.compile(rf"^{IF_PREFIX}[nbp](\d+)$")
    for name in os.listdir("/sys/class/net"):
        if m := pattern.match(name):
            used.add(int(m.group(1)))
    for h in cgroup_hierarchies():
        with contextlib.suppress(OSError):
            for child in h.iterdir():
                suffix = child.name.removeprefix(CGROUP_PREFIX)
                if child.name.startswith(CGROUP_PREFIX) and suffix.isdigit():
                    used.add(int(suffix))
    for workdir in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        state = NodeState.load(workdir)
        if state is not None and state.index is not None:
            used.add(state.index)
    return used


_HOLDER_SCRIPT = """\
set -e
{mounts}
touch {ready}
exec sleep infinity
"""


class RealNode:
    """A kubelet + containerd node registered with a control plane.

        with ControlPlane() as cp, RealNode.for_control_plane(cp) as node:
            node.import_image(Path("image.oci.tar"))
            pod["spec"].update(node.scheduling())

    `start()` takes about 2 s once the Debian packages and the kubelet are there (the
    packages install in ~5 s, the kubelet builds in ~40 s with a warm Go cache).
    """

    def __init__(
        self,
        *,
        server: str,
        ca_cert: Path,
        ca_key: Path,
        kubelet: Path | None = None,
        kubelet_config: Mapping[str, Any] | None = None,
        die_with_parent: bool = True,
        start_timeout: float = 120.0,
    ) -> None:
        self.server = server
        self.ca_cert = ca_cert
        self.ca_key = ca_key
        self._kubelet = kubelet
        self._extra_config = dict(kubelet_config or {})
        self._die_with_parent = die_with_parent
        self.start_timeout = start_timeout
        self.state: NodeState | None = None
        self.components: dict[str, Component] = {}
        self.started_seconds: float | None = None
        self.kubelet_port = 0
        self.healthz_port = 0

    @classmethod
    def for_control_plane(cls, plane: ControlPlane, **kwargs: Any) -> RealNode:
        assert plane.pki is not None, "control plane not started"
        return cls(
            server=plane.server, ca_cert=plane.pki.ca_cert, ca_key=plane.pki.ca_key, **kwargs
        )

    # Public surface -------------------------------------------------------------------

    @property
    def index(self) -> int:
        assert self.state is not None and self.state.index is not None, "node not started"
        return self.state.index

    @property
    def name(self) -> str:
        return f"overshoot-node-{self.index}"

    @property
    def workdir(self) -> Path:
        assert self.state is not None, "node not started"
        return Path(self.state.workdir)

    @property
    def node_ip(self) -> str:
        return str(NODE_NET.network_address + (self.index << 8) + 1)

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{POD_NET.network_address + (self.index << 8)}/24")

    @property
    def pod_gateway(self) -> str:
        return str(self.pod_cidr.network_address + 1)

    @property
    def bridge_mac(self) -> str:
        """The Pod bridge's own, fixed MAC address: locally administered (02:...), unique
        per node index."""
        return f"02:6f:76:6b:{self.index >> 8 & 0xFF:02x}:{self.index & 0xFF:02x}"

    @property
    def bridge(self) -> str:
        return f"{IF_PREFIX}b{self.index}"

    @property
    def cgroup_root(self) -> str:
        return f"/{CGROUP_PREFIX}{self.index}"

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @staticmethod
    def scheduling() -> dict[str, Any]:
        """The nodeSelector and toleration a Pod spec needs to land on a real node."""
        key, value = NODE_LABEL
        return {
            "nodeSelector": {key: value},
            "tolerations": [{**NODE_TAINT, "operator": "Equal"}],
        }

    def ctr(self, *args: str, check: bool = True) -> str:
        """Run `ctr` against this node's containerd, in the k8s.io namespace (the CRI's)."""
        return _run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
            check=check,
        )

    def import_image(self, archive: Path) -> list[str]:
        """Import an OCI (or docker-save) archive into the CRI's image store; returns the image
        names containerd now has from it, for `image:` with `imagePullPolicy: Never`."""
        before = set(self.images())
        self.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(archive))
        after = self.images()
        return sorted(set(after) - before) or after

    def images(self) -> list[str]:
        out = self.ctr("images", "list", "--quiet")
        return [line.strip() for line in out.splitlines() if line.strip()]

    def container_pid(self, container_id: str) -> int:
        """The host pid of a running container's init process (from a Pod's status
        `containerID`, with or without the `containerd://` prefix)."""
        container_id = container_id.removeprefix("containerd://")
        for line in self.ctr("tasks", "list").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1])
        raise NodeError(f"No running task {container_id} in {self.name}'s containerd")

    def pids(self) -> dict[str, int]:
        return {n: c.pid for n, c in self.components.items() if c.pid is not None}

    def __enter__(self) -> RealNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Set up the host side, start containerd and the kubelet, wait for the Node Ready."""
        started = time.monotonic()
        if os.geteuid() != 0:
            raise NodeError("A real node needs root (network interfaces, cgroups, mounts).")
        ensure_packages()
        kubelet = self._kubelet or binaries.ensure(["kubelet"])["kubelet"]
        cleanup_orphans()
        _install_cleanup()
        workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.state = NodeState(str(workdir), os.getpid(), _start_time(os.getpid()))
        self.state.save()
        _RUNNING.add(self)
        try:
            self._claim_index()
            self._setup_cgroups()
            self._write_files()
            self._start_holder()
            self._start_containerd()
            self.import_image(pause_archive(self.workdir / "pause"))
            self._start_kubelet(kubelet)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - started
        logger.info("Node %s Ready in %.1f s", self.name, self.started_seconds)

    def stop(self) -> None:
        """Stop the kubelet and containerd, kill what they left, undo every host change."""
        state = self.state
        if state is None:
            return
        for name in ("kubelet", "containerd", "holder"):
            component = self.components.pop(name, None)
            if component is not None:
                component.stop(STOP_TIMEOUT)
        teardown(state)
        self.components.clear()
        _RUNNING.discard(self)
        self.state = None

    # Start-up ---------------------------------------------------------------------------

    def _claim_index(self) -> None:
        assert self.state is not None
        used = _used_indexes()
        for index in range(MAX_INSTANCES):
            if index in used:
                continue
            node_if, peer_if = f"{IF_PREFIX}n{index}", f"{IF_PREFIX}p{index}"
            args = ["ip", "link", "add", node_if, "type", "veth", "peer", "name", peer_if]
            proc = subprocess.run(args, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                if "exists" in proc.stderr:
                    continue  # taken since we looked
                raise NodeError(f"`{shlex.join(args)}` failed: {proc.stderr.strip()}")
            self.state.index = index
            self.state.interfaces.append(node_if)
            self.state.name = self.name
            self.state.save()
            break
        else:
            raise NodeError(f"No free node index below {MAX_INSTANCES}.")
        self.state.interfaces.append(self.bridge)
        self.state.save()
        # A fixed address: a bridge without one takes the lowest of its ports' and changes
        # it when a port goes (a Pod deleted), while the other Pods' ARP caches still hold
        # the old one; their traffic to the node then vanishes for the ~20 s until the
        # entry is probed again (measured: a recreated stream's publisher waited 20-37 s
        # to reach LiveKit whenever another test's Pod was torn down just before).
        _run(["ip", "link", "add", self.bridge, "address", self.bridge_mac, "type", "bridge"])
        for cmd in (
            ["addr", "add", f"{self.node_ip}/32", "dev", node_if],
            ["link", "set", peer_if, "up"],
            ["link", "set", node_if, "up"],
            ["addr", "add", f"{self.pod_gateway}/{self.pod_cidr.prefixlen}", "dev", self.bridge],
            ["link", "set", self.bridge, "up"],
        ):
            _run(["ip", *cmd])

    def _setup_cgroups(self) -> None:
        assert self.state is not None
        self.state.cgroup_root = self.cgroup_root
        self.state.save()
        root = self.cgroup_root.strip("/")
        for h in cgroup_hierarchies():
            (h / root).mkdir(exist_ok=True)
            if h.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (h / root / f).write_text((h / f).read_text())
        (_tracking_hierarchy() / root / "daemons").mkdir(exist_ok=True)

    def _daemon_wrapper(self) -> list[str]:
        """Argv prefix: join `<root>/daemons`, then exec the rest (same pid throughout, so the
        parent-death signal the Component sets survives into the daemon)."""
        procs = _tracking_hierarchy() / self.cgroup_root.strip("/") / "daemons" / "cgroup.procs"
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs)]

    def _write_files(self) -> None:
        assert self.state is not None
        w = self.workdir
        for sub in ("logs", "tmp", "pki", "kubelet", "pod-logs", "cni/net.d", "cni/ipam"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        pki = w / "pki"
        name, ip = self.name, ipaddress.ip_address(self.node_ip)
        cert, key = _issue(
            self.ca_cert,
            self.ca_key,
            _name(
                (NameOID.ORGANIZATION_NAME, "system:nodes"),
                (NameOID.COMMON_NAME, f"system:node:{name}"),
            ),
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        _write(pki / "kubelet-client.crt", cert, 0o644)
        _write(pki / "kubelet-client.key", key)
        cert, key = _issue(
            self.ca_cert,
            self.ca_key,
            _name((NameOID.COMMON_NAME, name)),
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.DNSName(name), x509.IPAddress(ip)],
        )
        _write(pki / "kubelet-serving.crt", cert, 0o644)
        _write(pki / "kubelet-serving.key", key)
        # The harness's own identity, for waiting on the Node and deleting it (also after
        # its process died, from the state file).
        cert, key = _issue(
            self.ca_cert,
            self.ca_key,
            _name(
                (NameOID.ORGANIZATION_NAME, "system:masters"),
                (NameOID.COMMON_NAME, "overshoot-node-harness"),
            ),
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        self.state.server = self.server
        self.state.ca_cert = str(self.ca_cert)
        self.state.client_cert = str(_write(pki / "harness.crt", cert, 0o644))
        self.state.client_key = str(_write(pki / "harness.key", key))
        self.state.socket = str(self.containerd_socket)
        self.state.save()
        write_kubeconfig(
            w / "kubelet.kubeconfig",
            server=self.server,
            ca_file=self.ca_cert,
            user=f"system:node:{name}",
            credentials={
                "client-certificate": str(pki / "kubelet-client.crt"),
                "client-key": str(pki / "kubelet-client.key"),
            },
        )
        cni = {
            "cniVersion": "0.4.0",
            "name": f"{IF_PREFIX}{self.index}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    # The harness gave the bridge its address; the plugin neither sets one nor
                    # enables forwarding, and with ipMasq off it writes no iptables rule.
                    "isGateway": False,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [
                                {
                                    "subnet": str(self.pod_cidr),
                                    "gateway": self.pod_gateway,
                                }
                            ]
                        ],
                        "routes": [{"dst": "0.0.0.0/0", "gw": self.pod_gateway}],
                        "dataDir": str(w / "cni" / "ipam"),
                    },
                }
            ],
        }
        _write(w / "cni" / "net.d" / "10-overshoot.conflist", json.dumps(cni, indent=2), 0o644)
        self._write_containerd_config()

    def _write_containerd_config(self) -> None:
        w = self.workdir / "containerd"
        cri = 'plugins."io.containerd.grpc.v1.cri"'

        def q(value: str | Path) -> str:
            return json.dumps(str(value))

        config = f"""\
version = 2
root = {q(w / "root")}
state = {q(w / "state")}
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {q(self.containerd_socket)}

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = {q(w / "opt")}

[{cri}]
  sandbox_image = {q(PAUSE_IMAGE)}
  # This VM lacks CAP_SYS_RESOURCE: without it every sandbox fails with "can't get final
  # child's PID from pipe" (runc may not lower oom_score_adj below containerd's own).
  restrict_oom_score_adj = true
  # Pod network namespaces are pinned under the state dir, not in /run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = {q(self.node_ip)}
  stream_server_port = "0"
  enable_tls_streaming = false
  disable_apparmor = true

  [{cri}.containerd]
    snapshotter = {q(SNAPSHOTTER)}
    default_runtime_name = "runc"

    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [{cri}.containerd.runtimes.runc.options]
        BinaryName = {q(RUNC)}
        Root = {q(w / "runc")}
        SystemdCgroup = false

  [{cri}.cni]
    bin_dir = {q(CNI_BIN_DIR)}
    conf_dir = {q(self.workdir / "cni" / "net.d")}
    max_conf_num = 1
"""
        w.mkdir(parents=True, exist_ok=True)
        _write(w / "config.toml", config, 0o644)

    def _start_holder(self) -> None:
        """The process that holds the node's mount namespace and sets it up (overlays on
        /run, /var/lib, /var/log; the sysctl covers), then sleeps."""
        assert self.state is not None
        w = self.workdir
        mounts = []
        for d in OVERLAID_DIRS:
            base = w / "overlay" / d.strip("/").replace("/", "-")
            upper, work = base / "upper", base / "work"
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            options = f"lowerdir={d},upperdir={upper},workdir={work}"
            mounts.append(f"mount -t overlay overshoot-node -o {shlex.quote(options)} {d}")
        sysctls = w / "sysctl"
        sysctls.mkdir(exist_ok=True)
        values = dict(KUBELET_SYSCTLS)
        for key in PINNED_SYSCTLS:
            values[key] = Path("/proc/sys", key).read_text().strip()
        for key, value in values.items():
            cover = _write(sysctls / key.replace("/", "."), value + "\n", 0o644)
            mounts.append(f"mount --bind {shlex.quote(str(cover))} /proc/sys/{key}")
        ready = w / "holder.ready"
        script = _HOLDER_SCRIPT.format(mounts="\n".join(mounts), ready=shlex.quote(str(ready)))
        holder = Component(
            "holder",
            [
                *self._daemon_wrapper(),
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                script,
            ],
            self.logs / "holder.log",
        )
        self.components["holder"] = holder
        holder.start(die_with_parent=self._die_with_parent)
        assert holder.pid is not None
        self.state.holder_pid = holder.pid
        self.state.holder_start = _start_time(holder.pid)
        self.state.save()
        self._wait(ready.exists, "the mount namespace holder", "holder", timeout=10)

    def _in_namespace(self, argv: Sequence[str]) -> list[str]:
        assert self.state is not None and self.state.holder_pid is not None
        return [
            *self._daemon_wrapper(),
            "nsenter",
            f"--target={self.state.holder_pid}",
            "--mount",
            "--",
            *argv,
        ]

    def _env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TMPDIR": str(self.workdir / "tmp"),
            "HOME": str(self.workdir / "tmp"),
            "LANG": "C.UTF-8",
        }

    def _start_containerd(self) -> None:
        containerd = shutil.which("containerd") or "/usr/bin/containerd"
        config = self.workdir / "containerd" / "config.toml"
        component = Component(
            "containerd",
            self._in_namespace([containerd, "--config", str(config)]),
            self.logs / "containerd.log",
            self._env(),
        )
        self.components["containerd"] = component
        component.start(die_with_parent=self._die_with_parent)

        def serving() -> bool:
            return self.containerd_socket.exists() and "Server:" in self.ctr("version", check=False)

        self._wait(serving, "containerd's socket", "containerd", timeout=30)

    def _kubelet_config(self) -> dict[str, Any]:
        w = self.workdir
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Bound to the node IP only: never 0.0.0.0.
            "address": self.node_ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": self.node_ip,
            "healthzPort": self.healthz_port,
            "tlsCertFile": str(w / "pki" / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(w / "pki" / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            # This host has cgroup v1 (hybrid); v1.36 refuses it unless told otherwise.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failSwapOn": False,
            # Without CAP_SYS_RESOURCE the kubelet cannot lower its own score to -999.
            "oomScoreAdj": 0,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "podLogsDir": str(w / "pod-logs"),
            "volumePluginDir": str(w / "kubelet" / "volume-plugins"),
            # No KUBE-FIREWALL (its DROP of 127.0.0.0/8 from other sources breaks local
            # servers), no hint or canary chains: the kubelet leaves iptables alone.
            "makeIPTablesUtilChains": False,
            "registerWithTaints": [NODE_TAINT],
            "registerNode": True,
            "staticPodPath": "",
            "shutdownGracePeriod": "0s",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "maxPods": 50,
        }
        config.update(self._extra_config)
        return config

    def _start_kubelet(self, kubelet: Path) -> None:
        self.kubelet_port = _free_port(self.node_ip)
        self.healthz_port = _free_port(self.node_ip)
        w = self.workdir
        config = _write(w / "kubelet-config.json", json.dumps(self._kubelet_config(), indent=2))
        key, value = NODE_LABEL
        component = Component(
            "kubelet",
            self._in_namespace(
                [
                    str(kubelet),
                    f"--config={config}",
                    f"--kubeconfig={w / 'kubelet.kubeconfig'}",
                    f"--root-dir={w / 'kubelet'}",
                    f"--cert-dir={w / 'pki' / 'kubelet'}",
                    f"--hostname-override={self.name}",
                    f"--node-ip={self.node_ip}",
                    f"--node-labels={key}={value}",
                    "--v=2",
                ]
            ),
            self.logs / "kubelet.log",
            self._env(),
        )
        self.components["kubelet"] = component
        component.start(die_with_parent=self._die_with_parent)

    def _client(self) -> httpx.Client:
        assert self.state is not None
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(self.state.client_cert, self.state.client_key)
        return httpx.Client(verify=context, trust_env=False, timeout=5.0)

    def _wait_ready(self) -> None:
        url = f"{self.server}/api/v1/nodes/{self.name}"
        with self._client() as client:

            def ready() -> bool:
                response = client.get(url)
                if response.status_code != 200:
                    return False
                node = response.json()
                conditions = node.get("status", {}).get("conditions", [])
                taints = node.get("spec", {}).get("taints", [])
                return any(
                    c["type"] == "Ready" and c["status"] == "True" for c in conditions
                ) and not any(t["key"].startswith("node.kubernetes.io/") for t in taints)

            self._wait(ready, f"Node {self.name} Ready and schedulable", "kubelet")

    def _wait(
        self,
        predicate: Callable[[], bool],
        what: str,
        component: str,
        *,
        timeout: float | None = None,
    ) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        last = ""
        while time.monotonic() < deadline:
            for c in self.components.values():
                if not c.running():
                    raise self._error(what, c.name, f" ({c.name} exited)")
            try:
                if predicate():
                    return
            except (httpx.HTTPError, NodeError, OSError, ValueError) as err:
                last = f"; last error: {err!r}"
            time.sleep(0.2)
        raise self._error(what, component, f" after {timeout or self.start_timeout:.0f} s{last}")

    def _error(self, what: str, component: str, detail: str) -> NodeError:
        log = self.logs / f"{component}.log"
        return NodeError(f"Waiting for {what} failed{detail}. Last lines of {log}:\n{tail(log)}")


@contextlib.contextmanager
def real_node(plane: ControlPlane, **kwargs: Any) -> Iterator[RealNode]:
    """A started `RealNode` for the duration of a `with` block."""
    with RealNode.for_control_plane(plane, **kwargs) as node:
        yield node


def _iter_lines(diff: Mapping[str, Mapping[str, Iterable[str]]]) -> Iterator[str]:
    for aspect, changes in diff.items():
        for kind, lines in changes.items():
            for line in lines:
                yield f"{aspect} {kind}: {line}"


def format_diff(diff: Mapping[str, Mapping[str, Iterable[str]]]) -> str:
    """One line per difference, for messages."""
    return "\n".join(_iter_lines(diff)) or "(no differences)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m overshoot_localstack.node",
        description="Real kubelet nodes of the local stack: remove what dead ones left.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cleanup", help="tear down every node whose owning process is gone")
    args = parser.parse_args(argv)
    if args.command == "cleanup":
        for workdir in cleanup_orphans():
            print(f"Removed {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
