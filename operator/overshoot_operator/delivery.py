"""Delivery: who moves a resource's video into Overshoot, a publisher Pod or Overshoot itself.

Role: decide, for an effective spec, whether its stream is client-published (`Publisher`:
a publisher Pod in the cluster pulls the source and publishes it into the stream's room) or
server-pulled (`ServerPull`: Overshoot opens the camera itself, v1beta camera sources), and
build what a server pull sends.

- `Publisher` carries every source kind, from any network the cluster reaches, with
  spec.video's limits applied by the publisher.
- `ServerPull` needs a camera Overshoot can open itself: RTSP (over TCP) or an HLS URL,
  reachable from the public internet. No Pod, no Secret; the camera's credentials travel
  to Overshoot in the create request's body (only there).
- `Auto` chooses ServerPull when all of these hold, and Publisher otherwise:
  the source is RTSP over TCP or an `.m3u8` URL; spec.video is not set (its limits are a
  publisher's work); the camera's host resolves, from the operator, only to addresses
  Overshoot can reach: public ones, or those in `server_pull_networks` (a private link or
  VPN the platform team knows Overshoot uses). If Overshoot then cannot open the camera
  (422), the controller falls back to Publisher for that generation of the spec.

Boundary: pure, except `resolve_host`, the one DNS lookup (the controller injects it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import SecretStr

from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host -> its addresses, or None when it cannot be resolved (in time).
Resolver = Callable[[str], Awaitable[list[IPAddress] | None]]


@dataclass(frozen=True)
class Decision:
    delivery: res.Delivery
    # Why, in words for an Event or a log line ("spec.delivery is ServerPull").
    why: str


def camera_type(source: res.Source) -> Literal["rtsp", "hls"] | None:
    """What Overshoot would pull this source as, or None if it cannot pull it at all."""
    if source.rtsp is not None:
        return "rtsp"
    if source.url is not None:
        return "hls"
    return None


def host_of(source: res.Source) -> str | None:
    url = source.rtsp.url if source.rtsp else source.url.url if source.url else None
    if url is None:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _hls_playlist(source: res.Source) -> bool:
    if source.url is None:
        return False
    try:
        path = urlsplit(source.url.url).path
    except ValueError:
        return False
    return path.lower().endswith(".m3u8")


def reachable_by_overshoot(
    addresses: Sequence[IPAddress], networks: Sequence[IPNetwork] = ()
) -> bool:
    """Whether Overshoot can open a camera at these addresses: every one public (Overshoot
    refuses private, loopback and link-local ones), or inside a network it is known to
    reach. A host with any address it cannot reach is not pullable: which address a
    resolver hands Overshoot is not ours to know."""
    if not addresses:
        return False
    return all(address.is_global or any(address in n for n in networks) for address in addresses)


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())


def needs_resolving(spec: res.EffectiveSpec) -> str | None:
    """The host Auto must resolve to decide, or None when the spec decides alone."""
    if spec.delivery != "Auto" or _auto_blocker(spec) is not None:
        return None
    return host_of(spec.source)


def _auto_blocker(spec: res.EffectiveSpec) -> str | None:
    """Why Auto keeps this spec on a publisher without looking at the network."""
    source = spec.source
    if camera_type(source) is None:
        return f"Overshoot cannot pull a {source.kind} source"
    if source.rtsp is not None and source.rtsp.transport == "UDP":
        return "spec.source.rtsp.transport is UDP and Overshoot pulls RTSP over TCP only"
    if source.url is not None and not _hls_playlist(source):
        return "spec.source.url is not an HLS playlist (.m3u8)"
    if spec.video_set:
        return "spec.video is set and only a publisher applies its limits"
    return None


def decide(
    spec: res.EffectiveSpec,
    *,
    addresses: Sequence[IPAddress] | None = None,
    networks: Sequence[IPNetwork] = (),
) -> Decision:
    """The delivery for `spec`; for Auto, `addresses` are what the camera's host resolved
    to from the operator (None: it did not resolve)."""
    if spec.delivery == "Publisher":
        return Decision("Publisher", "spec.delivery is Publisher")
    if spec.delivery == "ServerPull":
        return Decision("ServerPull", "spec.delivery is ServerPull")
    blocker = _auto_blocker(spec)
    if blocker is not None:
        return Decision("Publisher", f"Auto: {blocker}")
    host = host_of(spec.source) or "?"
    if addresses is None:
        return Decision("Publisher", f"Auto: {host} does not resolve from the operator")
    if not reachable_by_overshoot(addresses, networks):
        return Decision("Publisher", f"Auto: {host} is on a network Overshoot cannot reach")
    return Decision("ServerPull", f"Auto: {host} is reachable from the public internet")


def camera_source(spec: res.EffectiveSpec, credentials: tuple[str, str] | None) -> ov.CameraSource:
    """What the create asks Overshoot to pull: the URL, with the credentials put into it
    (percent-encoded) only here, for the request body."""
    kind = camera_type(spec.source)
    url = (
        spec.source.rtsp.url
        if spec.source.rtsp
        else spec.source.url.url
        if spec.source.url
        else None
    )
    if kind is None or url is None:
        raise ValueError(f"a {spec.source.kind} source cannot be pulled by Overshoot")
    if credentials is not None:
        url = _with_userinfo(url, *credentials)
    return ov.CameraSource(type=kind, url=SecretStr(url))


def _with_userinfo(url: str, username: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return urlunsplit(
        (parts.scheme, f"{userinfo}@{netloc}", parts.path, parts.query, parts.fragment)
    )


def system_resolver(timeout: float) -> Resolver:
    """Resolve through the operator's own resolver (the cluster's DNS), with a timeout."""

    async def resolve(host: str) -> list[IPAddress] | None:
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass
        else:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout
            )
        except (OSError, TimeoutError, UnicodeError):
            return None
        found: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in found:
                found.append(address)
        return found or None

    return resolve
