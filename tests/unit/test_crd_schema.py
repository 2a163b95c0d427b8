"""The CRD file, checked without a server: conventions, printer columns, models in step.

The real API server's verdict (structural schema, CEL cost, rules at admission) is in
tests/integration/test_crd_validation.py.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from overshoot_operator import resource

pytestmark = pytest.mark.unit

CRD_PATH = Path(__file__).parents[2] / "deploy" / "crds" / "overshoot.ai_overshootstreams.yaml"

Node = dict[str, Any]


@pytest.fixture(scope="module")
def crd() -> Node:
    docs = list(yaml.safe_load_all(CRD_PATH.read_text()))
    assert len(docs) == 1
    doc: Node = docs[0]
    return doc


@pytest.fixture(scope="module")
def version(crd: Node) -> Node:
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == [resource.VERSION]
    v: Node = versions[0]
    return v


@pytest.fixture(scope="module")
def schema(version: Node) -> Node:
    s: Node = version["schema"]["openAPIV3Schema"]
    return s


def _schemas(node: Node, path: str = "") -> Iterator[tuple[str, Node]]:
    """Every schema node with its path (properties, items, additionalProperties, junctors)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _schemas(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _schemas(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schemas(node["additionalProperties"], f"{path}{{}}")
    for junctor in ("anyOf", "allOf", "oneOf"):
        for i, child in enumerate(node.get(junctor, [])):
            yield from _schemas(child, f"{path}<{junctor}{i}>")


def _keys(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every mapping key in the document, except property names (which are data)."""
    if isinstance(value, dict):
        for key, child in value.items():
            if not path.endswith(".properties"):
                yield path, key
            yield from _keys(child, f"{path}.{key}")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _keys(child, f"{path}[{i}]")


def test_identity(crd: Node, version: Node) -> None:
    assert crd["metadata"]["name"] == resource.CRD_NAME
    spec = crd["spec"]
    assert spec["group"] == resource.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == resource.KIND
    assert spec["names"]["plural"] == resource.PLURAL
    assert spec["names"]["singular"] == resource.SINGULAR
    assert spec["names"]["shortNames"] == [resource.SHORT_NAME]
    assert spec["names"]["categories"] == ["overshoot"]
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_no_default_anywhere(crd: Node) -> None:
    assert [p for p, key in _keys(crd) if key == "default"] == []


def test_every_string_has_max_length(schema: Node) -> None:
    missing = [
        path
        for path, node in _schemas(schema)
        if (node.get("type") == "string" or node.get("x-kubernetes-int-or-string"))
        and "maxLength" not in node
        # The int-or-string branches `anyOf: [{type: integer}, {type: string}]` are bounded
        # by the maxLength of the node that holds them.
        and not path.endswith(">")
    ]
    assert missing == []


def test_every_list_has_max_items_and_every_map_max_properties(schema: Node) -> None:
    arrays = [p for p, n in _schemas(schema) if n.get("type") == "array" and "maxItems" not in n]
    maps = [
        p
        for p, n in _schemas(schema)
        if isinstance(n.get("additionalProperties"), dict) and "maxProperties" not in n
    ]
    assert arrays == []
    assert maps == []


def test_preserve_unknown_fields_only_for_affinity(schema: Node) -> None:
    preserved = [p for p, n in _schemas(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == [".spec.publisher.affinity"]


def test_every_rule_has_a_message_naming_a_field(schema: Node) -> None:
    for path, node in _schemas(schema):
        for rule in node.get("x-kubernetes-validations", []):
            message = rule.get("message", "")
            assert re.search(r"\b(spec|metadata)\.[a-zA-Z.]+", message), (path, rule)
            if "fieldPath" in rule:
                target = rule["fieldPath"].lstrip(".")
                assert target in node["properties"], (path, rule)


def test_printer_columns(version: Node, schema: Node) -> None:
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Ready", "Phase", "Stream ID", "FPS", "Age"} <= set(columns)
    assert columns["FPS"]["type"] == "number"
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert 'type=="Ready"' in columns["Ready"]["jsonPath"]
    paths = {p for p, _ in _schemas(schema)}
    for column in columns.values():
        json_path = column["jsonPath"].split("[", 1)[0]
        if json_path.startswith(".status"):
            assert json_path in paths, column


def test_status_enums_match_the_models(schema: Node) -> None:
    status = schema["properties"]["status"]["properties"]
    assert tuple(status["phase"]["enum"]) == resource.PHASES
    assert typing.get_args(resource.Phase) == resource.PHASES
    condition = status["conditions"]["items"]["properties"]
    assert condition["status"]["enum"] == list(typing.get_args(resource.ConditionStatus))
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like `X | None`, `list[X]`, `tuple[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple, dict):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _assert_same_fields(model: type[BaseModel], node: Node, path: str) -> None:
    if node.get("x-kubernetes-preserve-unknown-fields") or "properties" not in node:
        return
    aliases = {(f.alias or name): f for name, f in model.model_fields.items()}
    assert set(aliases) == set(node["properties"]), path
    for alias, field in aliases.items():
        child = node["properties"][alias]
        if child.get("type") == "array":
            child = child["items"]
        nested = _model_of(field.annotation)
        if nested is not None:
            _assert_same_fields(nested, child, f"{path}.{alias}")


def test_models_match_the_schema(schema: Node) -> None:
    _assert_same_fields(resource.OvershootStreamSpec, schema["properties"]["spec"], "spec")
    _assert_same_fields(resource.OvershootStreamStatus, schema["properties"]["status"], "status")


def _rules(schema: Node, path: str) -> list[str]:
    node = dict(_schemas(schema))[path]
    return [r["rule"] for r in node["x-kubernetes-validations"]]


def _re2_to_python(pattern: str) -> str:
    return pattern.replace("[[:space:]]", r"\s")


def _regexes(rules: list[str]) -> list[str]:
    return [_re2_to_python(m) for r in rules for m in re.findall(r"matches\('([^']*)'\)", r)]


@pytest.mark.parametrize(
    ("url", "has_credentials"),
    [
        ("rtsp://10.0.0.12:554/stream1", False),
        ("rtsp://user:pass@10.0.0.12/stream1", True),
        ("rtsp://user@cam", True),
        ("rtsps://cam.local/live?token=a@b", False),  # an @ in the query is not userinfo
        ("https://cdn.example.com/path/@handle/live.m3u8", False),
        ("https://a:b@cdn.example.com/live.m3u8", True),
    ],
)
def test_credentials_regex(schema: Node, url: str, has_credentials: bool) -> None:
    credentials = [r for r in _regexes(_rules(schema, ".spec.source.rtsp")) if r.endswith("@")]
    assert len(credentials) == 1
    assert bool(re.search(credentials[0], url)) is has_credentials


@pytest.mark.parametrize(
    ("source", "url", "accepted"),
    [
        ("rtsp", "rtsp://cam/1", True),
        ("rtsp", "rtsps://cam/1", True),
        ("rtsp", "http://cam/1", False),
        ("rtsp", "rtsp://", False),
        ("url", "https://x/live.m3u8", True),
        ("url", "http://x/clip.mp4", True),
        ("url", "rtsp://x/1", False),
        ("url", "ftp://x/1", False),
    ],
)
def test_scheme_regexes(schema: Node, source: str, url: str, accepted: bool) -> None:
    scheme = _regexes(_rules(schema, f".spec.source.{source}"))[0]
    assert bool(re.search(scheme, url)) is accepted


@pytest.mark.parametrize(
    ("path", "refused"),
    [("/media/clip.mp4", False), ("/media/../etc/x", True), ("/a/./b", True), ("/a/.b", False)],
)
def test_file_dot_segments_regex(schema: Node, path: str, refused: bool) -> None:
    dots = _regexes(_rules(schema, ".spec.source.file"))[0]
    assert bool(re.search(dots, path)) is refused


def _undocumented(node: Any, path: str) -> list[str]:
    """Every schema node under `path` without a description (kubectl explain shows
    those as blank)."""
    if not isinstance(node, dict):
        return []
    found = [path] if path and "description" not in node else []
    for key, child in (node.get("properties") or {}).items():
        found += _undocumented(child, f"{path}.{key}" if path else key)
    if "items" in node:
        found += _undocumented(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _undocumented(node["additionalProperties"], f"{path}{{}}")
    return found


def test_every_field_of_the_crd_has_a_description() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    for version in crd["spec"]["versions"]:
        # The API server refuses anything but name and generateName under metadata, a
        # description included; kubectl explain documents ObjectMeta itself.
        undocumented = _undocumented(version["schema"]["openAPIV3Schema"], "")
        assert undocumented == ["metadata"], version["name"]


def test_host_path_says_pod_security_forbids_it() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    volume = schema["properties"]["spec"]["properties"]["source"]["properties"]["file"][
        "properties"
    ]["volume"]["properties"]
    text = " ".join(volume["hostPath"]["description"].split())
    assert "baseline and restricted Pod Security levels forbid" in text
