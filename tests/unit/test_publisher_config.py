"""The operator/publisher env contract: round trip, defaults, and no token anywhere."""

from __future__ import annotations

import json

import pytest

from overshoot_publisher.config import (
    ENV_VAR,
    PUBLISH_SECRET_DIR,
    SOURCE_CREDENTIALS_DIR,
    CredentialsSecretRef,
    FileSource,
    FileVolume,
    PersistentVolumeClaimVolume,
    PublisherConfig,
    PublisherConfigError,
    RtspSource,
    Source,
    TestPatternSource,
    Video,
)

pytestmark = pytest.mark.unit


def _rtsp_config() -> PublisherConfig:
    return PublisherConfig(
        namespace="cameras",
        name="lobby",
        source=Source(
            rtsp=RtspSource(
                url="rtsp://10.0.0.12:554/stream1",
                transport="UDP",
                credentials_secret_ref=CredentialsSecretRef(name="lobby-cam"),
            )
        ),
        video=Video(mode="Transcode", max_height=480, max_fps=10),
        credentials_dir=SOURCE_CREDENTIALS_DIR,
    )


def test_round_trip_through_env() -> None:
    config = _rtsp_config()
    env = config.to_env()
    assert list(env) == [ENV_VAR]
    assert PublisherConfig.from_env(env) == config


def test_round_trip_file_source() -> None:
    config = PublisherConfig(
        namespace="media",
        name="clip",
        source=Source(
            file=FileSource(
                path="/media/clip.mp4",
                loop=True,
                volume=FileVolume(
                    persistent_volume_claim=PersistentVolumeClaimVolume(claim_name="media")
                ),
            )
        ),
    )
    assert PublisherConfig.from_env(config.to_env()) == config
    assert config.source.file is not None
    assert config.source.file.effective_mount_path == "/media"


def test_env_json_is_camel_case() -> None:
    data = json.loads(_rtsp_config().to_env()[ENV_VAR])
    assert data["source"]["rtsp"]["credentialsSecretRef"] == {
        "name": "lobby-cam",
        "usernameKey": "username",
        "passwordKey": "password",
    }
    assert data["video"] == {"mode": "Transcode", "maxHeight": 480, "maxFps": 10}
    assert data["secretDir"] == PUBLISH_SECRET_DIR
    assert data["credentialsDir"] == SOURCE_CREDENTIALS_DIR


def test_defaults() -> None:
    config = PublisherConfig.from_env(
        {ENV_VAR: json.dumps({"namespace": "n", "name": "s", "source": {"testPattern": {}}})}
    )
    assert config.secret_dir == "/var/run/overshoot/publish"
    assert config.credentials_dir is None
    assert config.health_port == 8080
    assert config.video == Video(mode="Auto", max_height=720, max_fps=15)
    assert config.source.test_pattern == TestPatternSource(
        pattern="smpte", width=1280, height=720, fps=15
    )
    assert config.source.kind == "testPattern"


def test_no_token_field_anywhere() -> None:
    def keys(model: type) -> set[str]:
        return set(getattr(model, "model_fields", {}))

    assert not any("token" in k.lower() for k in keys(PublisherConfig))
    rendered = _rtsp_config().to_env()[ENV_VAR].lower()
    assert "token" not in rendered


def test_unknown_fields_are_ignored() -> None:
    raw = {"namespace": "n", "name": "s", "source": {"testPattern": {}}, "future": 1}
    config = PublisherConfig.from_env({ENV_VAR: json.dumps(raw)})
    assert config.name == "s"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({}, "is not set"),
        ({ENV_VAR: "{not json"}, "not valid JSON"),
        ({ENV_VAR: json.dumps({"namespace": "n", "name": "s", "source": {}})}, "exactly one"),
        (
            {
                ENV_VAR: json.dumps(
                    {
                        "namespace": "n",
                        "name": "s",
                        "source": {"testPattern": {}, "url": {"url": "https://x/y.m3u8"}},
                    }
                )
            },
            "exactly one",
        ),
    ],
)
def test_bad_env_is_refused_clearly(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(PublisherConfigError, match=fragment):
        PublisherConfig.from_env(environ)


def test_credentials_ref_by_source_kind() -> None:
    assert _rtsp_config().source.credentials_secret_ref == CredentialsSecretRef(name="lobby-cam")
    assert Source(test_pattern=TestPatternSource()).credentials_secret_ref is None
