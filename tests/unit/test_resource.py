"""The resource models: parsing the wire format, conditions, defaulting, names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from overshoot_operator.resource import (
    API_VERSION,
    REFRESH_ANNOTATION,
    STREAM_ID_ANNOTATION,
    Condition,
    ConditionType,
    OvershootStreamSpec,
    OvershootStreamStatus,
    ResourceRequirements,
    SecretKeySelector,
    SpecDefaults,
    StreamStatus,
    effective_spec,
    get_condition,
    is_condition_true,
    parse_quantity,
    parse_spec,
    parse_status,
    parse_stream_id,
    publish_secret_name,
    publisher_pod_name,
    set_condition,
    to_json,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)

DEFAULTS = SpecDefaults(
    api_key_secret=SecretKeySelector(
        namespace="overshoot-system", name="overshoot-api-key", key="apiKey"
    ),
    keepalive_interval_seconds=120.0,
    publisher_image="ghcr.io/overshoot-ai/overshoot-operator:0.1.0",
    publisher_resources=ResourceRequirements(
        requests={"cpu": "100m", "memory": "128Mi"},
        limits={"cpu": "1", "memory": "384Mi"},
    ),
)

FULL_SPEC: dict[str, Any] = {
    "source": {
        "rtsp": {
            "url": "rtsp://10.0.0.12:554/stream1",
            "transport": "UDP",
            "credentialsSecretRef": {"name": "lobby-cam", "passwordKey": "pw"},
        }
    },
    "video": {"mode": "Transcode", "maxHeight": 480, "maxFps": 10},
    "apiKeySecretRef": {"name": "overshoot", "key": "token"},
    "keepaliveIntervalSeconds": 90,
    "onRemoteEnd": "Fail",
    "suspend": True,
    "publisher": {
        "image": "example.com/publisher:dev",
        "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/arch": "arm64"},
        "tolerations": [{"key": "camera", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
        "priorityClassName": "video",
        "imagePullSecrets": [{"name": "registry"}],
    },
}


def test_constants() -> None:
    assert API_VERSION == "overshoot.ai/v1alpha1"
    assert STREAM_ID_ANNOTATION.startswith("overshoot.ai/")
    assert REFRESH_ANNOTATION.startswith("overshoot.ai/")
    assert publish_secret_name("lobby") == "lobby-publish"
    assert publisher_pod_name("lobby") == "lobby-publisher"


def test_parse_full_spec_and_dump_round_trip() -> None:
    spec = parse_spec(FULL_SPEC)
    assert spec.source.kind == "rtsp"
    assert spec.source.rtsp is not None
    assert spec.source.rtsp.credentials_secret_ref is not None
    assert spec.source.rtsp.credentials_secret_ref.password_key == "pw"
    assert spec.source.rtsp.credentials_secret_ref.username_key == "username"
    assert spec.publisher.tolerations is not None
    assert spec.publisher.tolerations[0].effect == "NoSchedule"
    dumped = to_json(spec)
    assert dumped["apiKeySecretRef"] == {"name": "overshoot", "key": "token"}
    assert dumped["publisher"]["affinity"] == FULL_SPEC["publisher"]["affinity"]
    assert parse_spec(dumped) == spec


def test_minimal_spec_gets_constant_defaults() -> None:
    spec = parse_spec({"source": {"testPattern": {}}})
    # spec.video stays unset (Auto delivery reads a written one); the effective spec
    # has its defaults.
    assert spec.video is None
    assert spec.delivery is None and spec.region is None
    effective = effective_spec(spec, DEFAULTS, namespace="cams")
    assert effective.video.mode == "Auto"
    assert effective.video.max_height == 720
    assert effective.video.max_fps == 15
    assert effective.video_set is False
    assert effective.delivery == "Publisher"
    assert spec.on_remote_end == "Recreate"
    assert spec.suspend is False
    assert spec.api_key_secret_ref is None
    assert spec.keepalive_interval_seconds is None


def test_unknown_fields_are_ignored_on_read() -> None:
    spec = parse_spec({"source": {"url": {"url": "https://x/y.m3u8", "new": 1}}, "later": {}})
    assert spec.source.kind == "url"
    status = parse_status({"phase": "Publishing", "somethingNew": True})
    assert status.phase == "Publishing"


def test_spec_without_exactly_one_source_is_refused() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        parse_spec({"source": {}})


def test_effective_spec_applies_operator_defaults() -> None:
    effective = effective_spec(
        parse_spec({"source": {"testPattern": {}}}), DEFAULTS, namespace="cameras"
    )
    assert effective.api_key_secret == DEFAULTS.api_key_secret
    assert effective.keepalive_interval_seconds == 120.0
    assert effective.publisher.image == DEFAULTS.publisher_image
    assert effective.publisher.resources == DEFAULTS.publisher_resources
    assert effective.publisher.node_selector == {}
    assert effective.publisher.tolerations == ()
    assert effective.on_remote_end == "Recreate"


def test_effective_spec_keeps_user_values() -> None:
    effective = effective_spec(parse_spec(FULL_SPEC), DEFAULTS, namespace="cameras")
    # A resource's own API key Secret is in its own namespace.
    assert effective.api_key_secret == SecretKeySelector(
        namespace="cameras", name="overshoot", key="token"
    )
    assert effective.keepalive_interval_seconds == 90.0
    assert effective.on_remote_end == "Fail"
    assert effective.suspend is True
    assert effective.video.max_height == 480
    assert effective.publisher.image == "example.com/publisher:dev"
    assert effective.publisher.priority_class_name == "video"
    assert [s.name for s in effective.publisher.image_pull_secrets] == ["registry"]


def test_api_key_secret_key_defaults_to_the_operators_key() -> None:
    spec = parse_spec({"source": {"testPattern": {}}, "apiKeySecretRef": {"name": "mine"}})
    effective = effective_spec(spec, DEFAULTS, namespace="cameras")
    assert effective.api_key_secret == SecretKeySelector(
        namespace="cameras", name="mine", key="apiKey"
    )


def test_resource_defaults_fill_in_around_the_user() -> None:
    # FULL_SPEC sets a cpu request (250m, under the default limit 1) and a memory limit
    # (1Gi, over the default request 128Mi): every default still fits and stays.
    effective = effective_spec(parse_spec(FULL_SPEC), DEFAULTS, namespace="cameras")
    assert effective.publisher.resources == ResourceRequirements(
        requests={"cpu": "250m", "memory": "128Mi"},
        limits={"cpu": "1", "memory": "1Gi"},
    )


def test_resource_defaults_never_contradict_the_user() -> None:
    # A cpu request above the default cpu limit, a memory limit below the default request.
    spec = parse_spec(
        {
            "source": {"testPattern": {}},
            "publisher": {"resources": {"requests": {"cpu": 2}, "limits": {"memory": "64Mi"}}},
        }
    )
    merged = effective_spec(spec, DEFAULTS, namespace="n").publisher.resources
    assert merged == ResourceRequirements(requests={"cpu": 2}, limits={"memory": "64Mi"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("250m", Decimal("0.25")),
        (2, Decimal(2)),
        ("1Gi", Decimal(1024**3)),
        ("128M", Decimal(128_000_000)),
        ("1e3", Decimal(1000)),
        (".5", Decimal("0.5")),
        ("lots", None),
    ],
)
def test_parse_quantity(value: str | int, expected: Decimal | None) -> None:
    assert parse_quantity(value) == expected


def test_status_round_trip_wire_format() -> None:
    status = OvershootStreamStatus(
        observed_generation=3,
        phase="Publishing",
        stream_id="2ea5a604-d225-4cd2-82ac-b907cb0b4f63",
        secret_name="lobby-publish",
        publisher_pod="lobby-publisher",
        expires_at=datetime(2026, 11, 28, 10, 5, tzinfo=UTC),
        recreations=1,
        stream=StreamStatus(recent_fps=15.0, last_frame_index=4521),
    )
    data = to_json(status)
    assert data["expiresAt"] == "2026-11-28T10:05:00Z"
    assert data["streamId"] == "2ea5a604-d225-4cd2-82ac-b907cb0b4f63"
    assert data["stream"] == {"recentFps": 15.0, "lastFrameIndex": 4521}
    assert "lastKeepaliveTime" not in data  # nulls are left out of patches
    assert parse_status(data) == status


def test_parse_status_of_nothing() -> None:
    assert parse_status(None) == OvershootStreamStatus()
    assert parse_status({}).recreations == 0


def test_set_condition_adds_and_stamps() -> None:
    conditions = set_condition(
        [], ConditionType.READY, "False", "Provisioning", "Creating the stream", now=NOW
    )
    assert conditions == [
        Condition(
            type="Ready",
            status="False",
            reason="Provisioning",
            message="Creating the stream",
            last_transition_time=NOW.replace(microsecond=0),
        )
    ]
    assert to_json(conditions[0])["lastTransitionTime"] == "2026-11-28T10:00:00Z"


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    first = set_condition([], "Ready", "False", "A", "a", now=NOW, observed_generation=1)
    later = NOW + timedelta(minutes=5)
    second = set_condition(first, "Ready", "False", "B", "b", now=later, observed_generation=2)
    assert second[0].last_transition_time == NOW.replace(microsecond=0)
    assert (second[0].reason, second[0].message, second[0].observed_generation) == ("B", "b", 2)
    third = set_condition(second, "Ready", "True", "Publishing", "ok", now=later)
    assert third[0].last_transition_time == later.replace(microsecond=0)
    # The input lists are never changed.
    assert first[0].reason == "A"


def test_set_condition_keeps_order_and_other_conditions() -> None:
    conditions = set_condition([], "Ready", "False", "A", "", now=NOW)
    conditions = set_condition(conditions, "StreamActive", "True", "Created", "", now=NOW)
    conditions = set_condition(conditions, "Ready", "True", "Publishing", "", now=NOW)
    assert [c.type for c in conditions] == ["Ready", "StreamActive"]
    assert is_condition_true(conditions, "Ready")
    assert is_condition_true(conditions, "StreamActive")
    assert not is_condition_true(conditions, "Publishing")
    assert get_condition(conditions, "Publishing") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2ea5a604-d225-4cd2-82ac-b907cb0b4f63", "2ea5a604-d225-4cd2-82ac-b907cb0b4f63"),
        (" abc_123 ", "abc_123"),
        (None, None),
        ("", None),
        ("../admin", None),
        ("a/b", None),
        ("x" * 65, None),
    ],
)
def test_parse_stream_id(value: str | None, expected: str | None) -> None:
    assert parse_stream_id(value) == expected


def test_spec_model_construction_by_field_name() -> None:
    spec = OvershootStreamSpec.model_validate(
        {"source": {"test_pattern": {"width": 640, "height": 360}}, "on_remote_end": "Fail"}
    )
    assert spec.source.test_pattern is not None
    assert spec.source.test_pattern.width == 640
    assert spec.on_remote_end == "Fail"
