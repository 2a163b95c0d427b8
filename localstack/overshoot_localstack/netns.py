"""A network namespace joined to the host by a veth pair, for WebRTC on one machine.

Why: LiveKit's WebRTC stack ignores loopback interfaces, so a LiveKit server and its
clients on `lo` alone gather no ICE candidates. A namespace with a veth pair gives both
ends a real (virtual) interface without touching any other host.

Topology (decided here, used by the tests and the local stack):

    host                                 namespace ovs<N>
    ovsh<N>  10.213.<N>.1/30  <--veth-->  ovsn<N>  10.213.<N>.2/30   (+ lo up)
    publisher, emulator/gateway,          livekit-server --bind/--node-ip 10.213.<N>.2
    RTSP/HLS sources on 127.0.0.1

The LiveKit server runs inside the namespace, bound to the namespace-side address; media
clients stay on the host and reach it through the veth (the kernel routes 10.213.<N>.2 via
the /30). Clients advertise their host-side veth address as an ICE candidate and the
server answers it over the pair. The namespace has no default route and the host does not
forward, so nothing started inside it can address any other host.

Boundary: the `ip` command (iproute2). Needs root (CAP_NET_ADMIN). Nothing else here
touches networking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

# 10.213.0.0/16: one /30 per namespace, the third octet is the instance index.
_PREFIX = "10.213"
_MAX_INSTANCES = 256


class NetnsError(RuntimeError):
    """The namespace could not be created; the message says what to install or fix."""


def _ip_binary() -> str:
    ip = shutil.which("ip")
    if ip:
        return ip
    from overshoot_localstack.rtsp import ensure_debian_packages

    ensure_debian_packages(["iproute2"])
    ip = shutil.which("ip")
    if not ip:
        raise NetnsError("The `ip` command (iproute2) is missing and could not be installed.")
    return ip


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(
            f"`{' '.join(args)}` failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )
    return proc


def _used_indexes(ip: str) -> set[int]:
    used: set[int] = set()
    namespaces = _run([ip, "netns", "list"], check=False).stdout
    for line in namespaces.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("ovs") and name[3:].isdigit():
            used.add(int(name[3:]))
    addresses = _run([ip, "-o", "-4", "addr"], check=False).stdout
    for line in addresses.splitlines():
        for word in line.split():
            if word.startswith(_PREFIX + "."):
                with contextlib.suppress(ValueError, IndexError):
                    used.add(int(word.split(".")[2]))
    return used


@dataclasses.dataclass
class NetNamespace:
    """A live namespace and its veth pair. Create with `create()` or use as a context manager."""

    name: str
    index: int
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    _ip: str = dataclasses.field(repr=False, default="ip")
    _removed: bool = dataclasses.field(repr=False, default=False)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{_PREFIX}.{self.index}.0/30")

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside this namespace."""
        return [self._ip, "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace (same kwargs as `subprocess.Popen`)."""
        return subprocess.Popen(self.exec_argv(argv), **kwargs)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a process inside the namespace to completion (same kwargs as `subprocess.run`)."""
        kwargs.setdefault("check", False)
        return subprocess.run(self.exec_argv(argv), **kwargs)

    def remove(self) -> None:
        """Delete the namespace and the veth pair. Idempotent."""
        if self._removed:
            return
        self._removed = True
        # Deleting one end of a veth pair deletes both; deleting the namespace would too,
        # but only once every process inside it has exited.
        _run([self._ip, "link", "del", self.host_if], check=False)
        _run([self._ip, "netns", "del", self.name], check=False)
        logger.info("Deleted network namespace %s", self.name)

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


@dataclasses.dataclass(frozen=True)
class HostAddress:
    """One of the host's own addresses, for a server that a client outside every namespace
    must reach: a real node's Pods (`node.py`) route only to the host itself, which does
    not forward to the LiveKit namespace. The part of `NetNamespace` a server needs
    (`ns_ip`, `popen`), run in the host's network namespace."""

    ns_ip: str

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(list(argv), **kwargs)


def create() -> NetNamespace:
    """Create a fresh namespace `ovs<N>` with a veth pair on 10.213.<N>.0/30.

    The first free index wins; `ip netns add` failing on an existing name makes the choice
    safe against a concurrent caller. On any failure, everything made so far is removed.
    """
    if os.geteuid() != 0:
        raise NetnsError(
            "Creating a network namespace needs root (CAP_NET_ADMIN): run the e2e tests as "
            "root, or in a container started with --cap-add NET_ADMIN."
        )
    ip = _ip_binary()
    used = _used_indexes(ip)
    for index in range(_MAX_INSTANCES):
        if index in used:
            continue
        name = f"ovs{index}"
        if _run([ip, "netns", "add", name], check=False).returncode != 0:
            continue  # taken by a concurrent caller since we listed
        ns = NetNamespace(
            name=name,
            index=index,
            host_if=f"ovsh{index}",
            ns_if=f"ovsn{index}",
            host_ip=f"{_PREFIX}.{index}.1",
            ns_ip=f"{_PREFIX}.{index}.2",
            _ip=ip,
        )
        try:
            _setup(ns)
        except BaseException:
            ns.remove()
            raise
        logger.info(
            "Created network namespace %s (host %s, namespace %s)", name, ns.host_ip, ns.ns_ip
        )
        return ns
    raise NetnsError(f"No free namespace index: ovs0..ovs{_MAX_INSTANCES - 1} are all in use.")


def _setup(ns: NetNamespace) -> None:
    ip = ns._ip
    _run([ip, "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if])
    _run([ip, "link", "set", ns.ns_if, "netns", ns.name])
    _run([ip, "addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if])
    _run([ip, "link", "set", ns.host_if, "up"])
    _run([ip, "-n", ns.name, "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if])
    _run([ip, "-n", ns.name, "link", "set", ns.ns_if, "up"])
    _run([ip, "-n", ns.name, "link", "set", "lo", "up"])


@contextlib.contextmanager
def namespace() -> Iterator[NetNamespace]:
    """A namespace for the duration of a `with` block."""
    ns = create()
    try:
        yield ns
    finally:
        ns.remove()
