"""The schema converters of kubeschemas.py on small hand-written inputs (no cluster, no
kubeconform); test_kubeconform.py runs kubeconform on what they make of the real API."""

from __future__ import annotations

from typing import Any

import kubeschemas as ks
import pytest

pytestmark = pytest.mark.unit

_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_PROPS = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}"}


def _document(definitions: dict[str, Any]) -> dict[str, Any]:
    return {"swagger": "2.0", "definitions": definitions}


@pytest.mark.parametrize(
    ("api_version", "suffix"),
    [
        ("v1", "-v1"),
        ("apps/v1", "-apps-v1"),
        ("networking.k8s.io/v1", "-networking-v1"),
        ("rbac.authorization.k8s.io/v1", "-rbac-v1"),
        ("overshoot.ai/v1alpha1", "-overshoot-v1alpha1"),
    ],
)
def test_kind_suffix_is_kubeconforms(api_version: str, suffix: str) -> None:
    # kubeconform v0.8.0, pkg/registry/registry.go, schemaPath.
    assert ks.kind_suffix(api_version) == suffix


def test_file_names() -> None:
    assert (
        ks.builtin_path("v1.36.3", "apps", "v1", "Deployment")
        == "v1.36.3-standalone-strict/deployment-apps-v1.json"
    )
    assert ks.builtin_path("1.36.3", "", "v1", "Service") == (
        "v1.36.3-standalone-strict/service-v1.json"
    )
    assert (
        ks.crd_path("overshoot.ai", "v1alpha1", "OvershootStream")
        == "crds-strict/overshoot.ai/overshootstream_v1alpha1.json"
    )


def test_refs_are_inlined_and_objects_closed() -> None:
    document = _document(
        {
            "x.Thing": {
                "type": "object",
                "x-kubernetes-group-version-kind": [
                    {"group": "g.io", "version": "v1", "kind": "Thing"}
                ],
                "properties": {
                    "metadata": {**_ref(_META), "description": "Standard metadata."},
                    "spec": _ref("x.Spec"),
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "raw": {"description": "anything"},
                },
            },
            "x.Spec": {"type": "object", "properties": {"port": _ref(ks.INT_OR_STRING)}},
            _META: {"type": "object", "properties": {"name": {"type": "string"}}},
            ks.INT_OR_STRING: {"type": "string", "format": "int-or-string"},
        }
    )
    schemas = ks.from_openapi_v2(document, "v1.36.3")
    assert list(schemas) == ["v1.36.3-standalone-strict/thing-g-v1.json"]
    thing = schemas["v1.36.3-standalone-strict/thing-g-v1.json"]
    assert thing["$schema"] == ks.DRAFT_4
    assert thing["additionalProperties"] is False
    props = thing["properties"]
    # Inlined, the sibling description kept, and closed like any object with properties.
    assert props["metadata"] == {
        "type": "object",
        "description": "Standard metadata.",
        "properties": {"name": {"type": "string"}},
        "additionalProperties": False,
    }
    assert props["spec"]["additionalProperties"] is False
    assert props["spec"]["properties"]["port"]["anyOf"] == [
        {"type": "integer"},
        {"type": "string"},
    ]
    # A map stays a map; a schema with no properties stays open.
    assert props["labels"]["additionalProperties"] == {"type": "string"}
    assert props["raw"] == {"description": "anything"}
    assert "definitions" not in thing


def test_a_cycle_becomes_a_local_definition() -> None:
    document = _document(
        {
            "x.Outer": {
                "type": "object",
                "x-kubernetes-group-version-kind": [
                    {"group": "", "version": "v1", "kind": "Outer"}
                ],
                "properties": {"schema": _ref(_PROPS)},
            },
            _PROPS: {
                "type": "object",
                "properties": {
                    # JSONSchemaProps has a property *named* $ref: a name, not a reference.
                    "$ref": {"type": "string"},
                    "properties": {"type": "object", "additionalProperties": _ref(_PROPS)},
                },
            },
        }
    )
    outer = ks.from_openapi_v2(document, "v1.36.3")["v1.36.3-standalone-strict/outer-v1.json"]
    inline = outer["properties"]["schema"]
    assert inline["properties"]["$ref"] == {"type": "string"}
    assert inline["properties"]["properties"]["additionalProperties"] == _ref(_PROPS)
    local = outer["definitions"][_PROPS]
    assert local["additionalProperties"] is False
    assert local["properties"]["properties"]["additionalProperties"] == _ref(_PROPS)


def test_two_definitions_for_one_file_are_refused() -> None:
    gvk = [{"group": "", "version": "v1", "kind": "Same"}]
    document = _document(
        {
            "a.Same": {"type": "object", "x-kubernetes-group-version-kind": gvk},
            "b.Same": {"type": "object", "x-kubernetes-group-version-kind": gvk},
        }
    )
    with pytest.raises(ValueError, match=r"both a\.Same and b\.Same"):
        ks.from_openapi_v2(document, "v1.36.3")


def _crd(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "versions": [
                {"name": "v1", "served": True, "schema": {"openAPIV3Schema": schema}},
                {"name": "v0", "served": False, "schema": {"openAPIV3Schema": schema}},
            ],
        },
    }


def test_crd_structural_schema_to_draft4() -> None:
    schema = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "properties": {
                    "size": {"x-kubernetes-int-or-string": True},
                    "note": {"type": "string", "nullable": True},
                    "free": {
                        "type": "object",
                        "properties": {"a": {"type": "string"}},
                        "x-kubernetes-preserve-unknown-fields": True,
                    },
                    "template": {"type": "object", "x-kubernetes-embedded-resource": True},
                },
            },
        },
    }
    meta = {"type": "object", "properties": {"name": {"type": "string"}}}
    schemas = ks.from_crd(_crd(schema), meta)
    assert list(schemas) == ["crds-strict/example.com/widget_v1.json"]  # v0 is not served
    widget = schemas["crds-strict/example.com/widget_v1.json"]
    assert widget["additionalProperties"] is False
    assert widget["properties"]["metadata"]["properties"] == meta["properties"]
    spec = widget["properties"]["spec"]
    assert spec["additionalProperties"] is False
    assert spec["properties"]["size"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert spec["properties"]["note"]["type"] == ["string", "null"]
    assert "additionalProperties" not in spec["properties"]["free"]
    template = spec["properties"]["template"]
    assert set(template["properties"]) == {"apiVersion", "kind", "metadata"}
    assert template["additionalProperties"] is False


def test_only_v1_crds() -> None:
    with pytest.raises(ValueError, match=r"apiextensions\.k8s\.io/v1 "):
        ks.from_crd({**_crd({}), "apiVersion": "apiextensions.k8s.io/v1beta1"})
