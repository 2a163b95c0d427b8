"""Contract tests: with LiveKit settings the emulator mints real LiveKit access tokens
(HS256, publish-only grants to the stream's room, subscribe-only hidden viewer grants);
checked with pyjwt and the secret."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest

from fixtures.emulator import EmulatorFactory

pytestmark = pytest.mark.contract

# Nothing listens here: these tests read tokens, they never dial LiveKit.
LIVEKIT_URL = "ws://127.0.0.1:9"
LIVEKIT_KEY = "APIemulatortest"
LIVEKIT_SECRET = "emulator-test-secret-that-is-long-enough-for-hs256"
AUTH = {"Authorization": "Bearer ovs-livekit-test"}


def decode(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        LIVEKIT_SECRET,
        algorithms=["HS256"],
        issuer=LIVEKIT_KEY,
        options={"require": ["iss", "sub", "nbf", "exp"]},
    )
    return claims


def test_tokens_are_livekit_jwts_for_the_streams_room(fresh_emulator: EmulatorFactory) -> None:
    emulator = fresh_emulator(
        livekit_url=LIVEKIT_URL,
        livekit_api_key=LIVEKIT_KEY,
        livekit_api_secret=LIVEKIT_SECRET,
    )
    with httpx.Client(base_url=emulator.api_url, timeout=10) as http:
        created = http.post("/streams", json={}, headers=AUTH).json()
        stream_id = created["id"]
        assert created["publish"]["type"] == "livekit"
        assert created["publish"]["url"] == LIVEKIT_URL

        claims = decode(created["publish"]["token"])
        assert claims["sub"] == f"publisher-{stream_id}"
        assert claims["video"] == {
            "roomJoin": True,
            "room": f"overshoot-{stream_id}",
            "canPublish": True,
            "canSubscribe": False,
        }
        now = time.time()
        assert claims["nbf"] <= now + 1
        assert claims["exp"] - claims["nbf"] == 600

        keepalive = http.post(f"/streams/{stream_id}/keepalive", headers=AUTH).json()
        assert keepalive["publish"]["url"] == LIVEKIT_URL
        assert keepalive["publish"]["token"] != created["publish"]["token"]
        assert decode(keepalive["publish"]["token"])["video"]["room"] == f"overshoot-{stream_id}"

    [listed] = emulator.admin.streams()
    assert listed["room"] == f"overshoot-{stream_id}"


def test_viewer_tokens_are_subscribe_only_livekit_jwts(fresh_emulator: EmulatorFactory) -> None:
    emulator = fresh_emulator(
        livekit_url=LIVEKIT_URL,
        livekit_api_key=LIVEKIT_KEY,
        livekit_api_secret=LIVEKIT_SECRET,
    )
    with httpx.Client(base_url=emulator.url + "/v1beta", timeout=10) as http:
        stream_id = http.post("/streams", json={}, headers=AUTH).json()["id"]
        identities = set()
        for _ in range(2):
            response = http.post(f"/streams/{stream_id}/viewer-token", headers=AUTH)
            assert response.status_code == 200
            view = response.json()["view"]
            assert view["url"] == LIVEKIT_URL
            assert view["expires_in_seconds"] == 300
            claims = decode(view["token"])
            assert claims["video"] == {
                "roomJoin": True,
                "room": f"overshoot-{stream_id}",
                "canPublish": False,
                "canPublishData": False,
                "canSubscribe": True,
                "hidden": True,
            }
            assert claims["exp"] - claims["nbf"] == 300
            assert claims["nbf"] <= time.time() + 1
            prefix, _, suffix = claims["sub"].partition("-")
            assert prefix == "viewer"
            int(suffix, 16)  # random hex
            identities.add(claims["sub"])
        # Two viewers never share an identity (LiveKit would kick the first one).
        assert len(identities) == 2
        other = {"Authorization": "Bearer ovs-someone-else"}
        assert http.post(f"/streams/{stream_id}/viewer-token", headers=other).status_code == 404


def test_a_wrong_secret_does_not_verify(fresh_emulator: EmulatorFactory) -> None:
    emulator = fresh_emulator(
        livekit_url=LIVEKIT_URL,
        livekit_api_key=LIVEKIT_KEY,
        livekit_api_secret=LIVEKIT_SECRET,
    )
    with httpx.Client(base_url=emulator.api_url, timeout=10) as http:
        token = http.post("/streams", json={}, headers=AUTH).json()["publish"]["token"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-that-is-long-enough-for-hs256!", algorithms=["HS256"])


def test_without_livekit_tokens_are_opaque(fresh_emulator: EmulatorFactory) -> None:
    emulator = fresh_emulator(livekit_url=LIVEKIT_URL)
    with httpx.Client(base_url=emulator.api_url, timeout=10) as http:
        publish = http.post("/streams", json={}, headers=AUTH).json()["publish"]
    assert publish["url"] == LIVEKIT_URL
    with pytest.raises(jwt.DecodeError):
        jwt.decode(publish["token"], options={"verify_signature": False})
