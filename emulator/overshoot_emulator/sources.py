"""Camera sources as a create body names them (v1beta), and the address policy for them.

Role: validate the `source` object of `POST /v1beta/streams` into a `SourceSpec`, answer
validation errors in FastAPI's shape without echoing the URL, say which host a URL points
at (the only part of it an admin document or a log line may show), and decide whether a
resolved address is one Overshoot would pull from (public only).

A source URL carries credentials (`rtsp://user:pass@...`, or a signed query): it lives in
`SourceSpec.url` only, is never in a repr, a log line, an error message or an answer.

Boundary: DNS (`resolve_public`, through the event loop's resolver); nothing here opens a
connection to the source.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

SourceType = Literal["rtsp", "hls"]

# Documented: rtsp:// or rtsps:// for RTSP cameras, https:// for HLS.
# Guess: plain http:// HLS is accepted too (the docs only show https).
SCHEMES: dict[str, frozenset[str]] = {
    "rtsp": frozenset({"rtsp", "rtsps"}),
    "hls": frozenset({"http", "https"}),
}
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
MAX_URL_LENGTH = 4096


class Source(BaseModel):
    """The `source` object of a create body. Unknown fields are ignored (as FastAPI does)."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    type: SourceType
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, repr=False)

    @field_validator("url")
    @classmethod
    def _url_fits_type(cls, url: str, info: ValidationInfo) -> str:
        # Messages name the rule, never the value: the URL carries credentials.
        source_type = info.data.get("type")
        if source_type not in SCHEMES:
            return url  # the type is already wrong; one error is enough
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError("url is not a valid URL") from None
        if parts.scheme.lower() not in SCHEMES[source_type]:
            allowed = " or ".join(f"{s}://" for s in sorted(SCHEMES[source_type]))
            raise ValueError(f"url of a {source_type} source must start with {allowed}")
        if not parts.hostname:
            raise ValueError("url has no host")
        return url


class CreateBody(BaseModel):
    """A create body as v1beta reads it: only `source` means anything."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    source: Source | None = None


class SourceInvalid(Exception):
    """The create body's `source` is malformed; `errors` is FastAPI's `detail` list."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid source")
        self.errors = errors


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A source to pull. `url` holds credentials: only `host` may be shown anywhere."""

    type: SourceType
    url: str = field(repr=False)

    @property
    def host(self) -> str:
        return redacted_host(self.url)


def parse_source(body: dict[str, Any]) -> SourceSpec | None:
    """The source a v1beta create body names, None for a client-published stream.

    Raises SourceInvalid with FastAPI-shaped errors (`loc` starts with "body").
    """
    try:
        parsed = CreateBody.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        raise SourceInvalid(
            [
                {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
                for error in errors
            ]
        ) from None
    if parsed.source is None:
        return None
    return SourceSpec(parsed.source.type, parsed.source.url)


def redacted_host(url: str) -> str:
    """`host:port` of a URL, without userinfo, path or query (which may all carry secrets)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def is_public_address(address: str) -> bool:
    """Whether Overshoot would connect to this resolved address (a public unicast one)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
        or ip.is_multicast
    ):
        return False
    # What remains but is still not reachable from the internet (e.g. carrier-grade NAT,
    # 100.64.0.0/10, which is not "private" to the ipaddress module).
    return ip.is_global


class AddressClass(Enum):
    PUBLIC = "public"
    NOT_PUBLIC = "not_public"
    UNRESOLVED = "unresolved"


def classify(addresses: list[str]) -> AddressClass:
    """Documented: URLs that resolve to private, loopback or link-local addresses are
    refused. One such address among several is enough (a client cannot pick which one a
    connection uses)."""
    if not addresses:
        return AddressClass.UNRESOLVED
    if all(is_public_address(address) for address in addresses):
        return AddressClass.PUBLIC
    return AddressClass.NOT_PUBLIC


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to; empty when it does not resolve."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


async def classify_url(url: str) -> AddressClass:
    """Resolve a URL's host and classify its addresses (an IP literal resolves to itself)."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return AddressClass.UNRESOLVED
    if not parts.hostname:
        return AddressClass.UNRESOLVED
    return classify(await resolve(parts.hostname, port))


async def url_allowed(url: str) -> bool:
    """Whether a URL may be fetched: it does not resolve to a non-public address (one that
    does not resolve at all fails on its own when fetched)."""
    return await classify_url(url) is not AddressClass.NOT_PUBLIC
