"""How sources become PyAV arguments, and that credentials never reach a message."""

from __future__ import annotations

import pytest

from overshoot_publisher.config import Source
from overshoot_publisher.errors import redact_url, scrub
from overshoot_publisher.mounted import Credentials
from overshoot_publisher.sources import build_open_spec

pytestmark = pytest.mark.unit

CREDS = Credentials("admin", "p@ss:w/rd")


def test_rtsp_credentials_go_into_the_url_in_memory_only() -> None:
    source = Source.model_validate(
        {"rtsp": {"url": "rtsp://10.0.0.12:554/stream1", "transport": "UDP"}}
    )
    spec = build_open_spec(source, CREDS)
    assert spec.url == "rtsp://admin:p%40ss%3Aw%2Frd@10.0.0.12:554/stream1"
    assert spec.label == "rtsp://10.0.0.12:554/stream1"
    assert spec.options == {"rtsp_transport": "udp"}
    assert spec.live
    assert "p@ss:w/rd" in spec.secrets


def test_http_credentials_travel_as_a_header_not_in_the_url() -> None:
    source = Source.model_validate({"url": {"url": "https://cdn.example/live.m3u8"}})
    spec = build_open_spec(source, CREDS)
    assert spec.url == "https://cdn.example/live.m3u8"
    assert spec.options["headers"].startswith("Authorization: Basic ")
    assert "admin" not in spec.url


def test_userinfo_in_a_configured_url_never_shows_in_the_label() -> None:
    source = Source.model_validate({"rtsp": {"url": "rtsp://u:secret@cam/stream"}})
    assert "secret" not in build_open_spec(source, None).label


def test_test_pattern_uses_lavfi_at_the_configured_size_and_rate() -> None:
    source = Source.model_validate(
        {"testPattern": {"pattern": "smpte", "width": 640, "height": 480, "fps": 12}}
    )
    spec = build_open_spec(source, None)
    assert spec.format == "lavfi"
    assert spec.url == "smptebars=size=640x480:rate=12"
    assert spec.generated


def test_file_loop() -> None:
    spec = build_open_spec(
        Source.model_validate({"file": {"path": "/m/a.mp4", "loop": True}}), None
    )
    assert spec.loop
    assert not spec.live


def test_redact_url_keeps_host_port_and_path() -> None:
    assert redact_url("rtsp://a:b@host:554/x?y=1") == "rtsp://host:554/x?y=1"
    assert redact_url("rtsp://host/x") == "rtsp://host/x"


def test_scrub_replaces_raw_and_url_quoted_secrets() -> None:
    text = "failed rtsp://admin:p%40ss%3Aw%2Frd@cam and p@ss:w/rd"
    assert "p@ss" not in scrub(text, ["p@ss:w/rd"])
    assert "p%40ss" not in scrub(text, ["p@ss:w/rd"])
