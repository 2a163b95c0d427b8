"""Delivery: which specs Overshoot pulls itself, and what a server pull sends (delivery.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from overshoot_operator import delivery as dlv
from overshoot_operator.resource import (
    SecretKeySelector,
    SpecDefaults,
    effective_spec,
    parse_spec,
)

pytestmark = pytest.mark.unit

DEFAULTS = SpecDefaults(
    api_key_secret=SecretKeySelector(namespace="ops", name="overshoot-api-key", key="apiKey"),
    publisher_image="overshoot-operator:test",
)
PUBLIC = [ipaddress.ip_address("203.0.114.7")]  # not a documentation range: is_global
PRIVATE = [ipaddress.ip_address("10.0.0.12")]
CAM = "rtsp://cam.example.com:554/stream1"
HLS = "https://cdn.example.com/live/cam.m3u8"


def spec(source: dict[str, Any], **fields: Any) -> Any:
    return effective_spec(parse_spec({"source": source, **fields}), DEFAULTS, namespace="cams")


def test_public_address_samples_are_what_the_table_assumes() -> None:
    assert all(a.is_global for a in PUBLIC) and not any(a.is_global for a in PRIVATE)


@pytest.mark.parametrize(
    ("source", "fields", "addresses", "delivery", "why"),
    [
        ({"rtsp": {"url": CAM}}, {}, PUBLIC, "Publisher", "spec.delivery is Publisher"),
        (
            {"rtsp": {"url": CAM}},
            {"delivery": "ServerPull"},
            PRIVATE,
            "ServerPull",
            "spec.delivery is ServerPull",
        ),
        ({"rtsp": {"url": CAM}}, {"delivery": "Auto"}, PUBLIC, "ServerPull", "reachable"),
        ({"url": {"url": HLS}}, {"delivery": "Auto"}, PUBLIC, "ServerPull", "reachable"),
        ({"rtsp": {"url": CAM}}, {"delivery": "Auto"}, PRIVATE, "Publisher", "cannot reach"),
        (
            {"rtsp": {"url": CAM}},
            {"delivery": "Auto"},
            PUBLIC + PRIVATE,
            "Publisher",
            "cannot reach",
        ),
        ({"rtsp": {"url": CAM}}, {"delivery": "Auto"}, None, "Publisher", "does not resolve"),
        (
            {"rtsp": {"url": CAM, "transport": "UDP"}},
            {"delivery": "Auto"},
            PUBLIC,
            "Publisher",
            "UDP",
        ),
        (
            {"url": {"url": "https://cdn.example.com/clip.mp4"}},
            {"delivery": "Auto"},
            PUBLIC,
            "Publisher",
            "not an HLS playlist",
        ),
        (
            {"rtsp": {"url": CAM}},
            {"delivery": "Auto", "video": {"maxHeight": 480}},
            PUBLIC,
            "Publisher",
            "spec.video is set",
        ),
        ({"testPattern": {}}, {"delivery": "Auto"}, PUBLIC, "Publisher", "testPattern"),
        ({"file": {"path": "/m/a.mp4"}}, {"delivery": "Auto"}, PUBLIC, "Publisher", "file"),
    ],
)
def test_decide(
    source: dict[str, Any],
    fields: dict[str, Any],
    addresses: list[Any] | None,
    delivery: str,
    why: str,
) -> None:
    decision = dlv.decide(spec(source, **fields), addresses=addresses)
    assert decision.delivery == delivery
    assert why in decision.why


def test_auto_pulls_from_networks_overshoot_is_known_to_reach() -> None:
    networks = dlv.parse_networks(["10.0.0.0/8", " "])
    decision = dlv.decide(
        spec({"rtsp": {"url": CAM}}, delivery="Auto"), addresses=PRIVATE, networks=networks
    )
    assert decision.delivery == "ServerPull"
    # Loopback and link-local stay out unless named.
    for address in ("127.0.0.1", "169.254.1.1", "::1", "fe80::1"):
        assert not dlv.reachable_by_overshoot([ipaddress.ip_address(address)], networks)


@pytest.mark.parametrize(
    ("source", "fields", "host"),
    [
        ({"rtsp": {"url": CAM}}, {"delivery": "Auto"}, "cam.example.com"),
        ({"rtsp": {"url": CAM}}, {"delivery": "ServerPull"}, None),  # explicit: no lookup
        ({"rtsp": {"url": CAM}}, {}, None),
        ({"testPattern": {}}, {"delivery": "Auto"}, None),  # decided without the network
        ({"rtsp": {"url": CAM}}, {"delivery": "Auto", "video": {}}, None),
    ],
)
def test_only_auto_with_a_pullable_camera_resolves_its_host(
    source: dict[str, Any], fields: dict[str, Any], host: str | None
) -> None:
    assert dlv.needs_resolving(spec(source, **fields)) == host


def test_the_camera_source_carries_the_credentials_percent_encoded() -> None:
    password = "p@ss:w/rd%?#"
    source = dlv.camera_source(spec({"rtsp": {"url": CAM}}), ("cam user", password))
    url = source.url.get_secret_value()
    parts = urlsplit(url)
    assert source.type == "rtsp"
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == (
        "rtsp",
        "cam.example.com",
        554,
        "/stream1",
    )
    assert unquote(parts.username or "") == "cam user"
    assert unquote(parts.password or "") == password
    assert password not in repr(source) and url not in str(source)


def test_an_hls_camera_without_credentials_is_its_url() -> None:
    source = dlv.camera_source(spec({"url": {"url": HLS}}), None)
    assert source.type == "hls" and source.url.get_secret_value() == HLS


def test_a_test_pattern_cannot_be_pulled() -> None:
    with pytest.raises(ValueError, match="cannot be pulled"):
        dlv.camera_source(spec({"testPattern": {}}), None)


def test_the_stream_revision_moves_with_what_a_live_stream_cannot_change() -> None:
    base = spec({"rtsp": {"url": CAM}}, delivery="ServerPull")
    revision = base.stream_revision("ServerPull", "17")
    assert revision == spec({"rtsp": {"url": CAM}}, delivery="ServerPull").stream_revision(
        "ServerPull", "17"
    )
    assert revision == spec(
        {"rtsp": {"url": CAM}}, delivery="ServerPull", suspend=True
    ).stream_revision("ServerPull", "17")
    assert revision != base.stream_revision("ServerPull", "18")
    assert revision != spec({"rtsp": {"url": CAM + "x"}}).stream_revision("ServerPull", "17")
    assert revision != spec({"rtsp": {"url": CAM}}, region="us-west1").stream_revision(
        "ServerPull", "17"
    )
    # A publisher's stream is bound to its region only: its source lives in the Pod.
    published = base.stream_revision("Publisher")
    assert published == spec({"testPattern": {}}).stream_revision("Publisher", "99")
    assert published != revision
    assert published != spec({"testPattern": {}}, region="us-west1").stream_revision("Publisher")


async def test_the_system_resolver_takes_literals_and_fails_softly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolve = dlv.system_resolver(timeout=0.2)
    assert await resolve("203.0.114.7") == PUBLIC
    assert await resolve("[::1]") == [ipaddress.ip_address("::1")]
    assert await resolve("localhost") is not None  # /etc/hosts: no DNS query leaves the host
    loop = asyncio.get_running_loop()

    async def unknown(*_: object, **__: object) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", unknown)
    assert await resolve("cam.example.com") is None

    async def hangs(*_: object, **__: object) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "getaddrinfo", hangs)
    assert await resolve("cam.example.com") is None  # after the timeout
