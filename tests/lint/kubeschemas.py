"""JSON Schema files for kubeconform, made offline from what the API server itself publishes.

Two sources, two converters, one output layout:

- `from_openapi_v2(document)`: the API server's `GET /openapi/v2` (Swagger 2.0). Every
  definition with an `x-kubernetes-group-version-kind` becomes one standalone file per
  group/version/kind: each `$ref` is inlined, so a file needs no other file; a definition that
  refers back to itself (apiextensions' JSONSchemaProps) is kept once under the file's own
  `definitions` and referred to as `#/definitions/<name>`.
- `from_crd(crd, object_meta)`: a CustomResourceDefinition's `openAPIV3Schema` (a structural
  schema, OpenAPI 3.0) of each served version; the root `metadata` becomes the API server's
  ObjectMeta, which is how the server validates a custom resource's metadata.

Both give draft-4 JSON Schema (kubeconform compiles schemas as draft 4 unless told otherwise,
and OpenAPI's boolean `exclusiveMinimum` is draft 4's) and both are *strict*: kubeconform's
`-strict` flag only refuses duplicate YAML keys and picks the `-strict` file names
(`{{ .StrictSuffix }}`); refusing unknown fields is the schema's job, so every object schema
that lists its properties gets `additionalProperties: false`. That is what the API server
does with strict field validation, and it leaves alone what the server leaves open: maps
(`additionalProperties` given), objects with no properties listed, and
`x-kubernetes-preserve-unknown-fields`.

The OpenAPI cannot say what some Go types accept when they unmarshal JSON (IntOrString takes
an integer or a string, Quantity a string or a number, apiextensions' JSONSchemaPropsOr*
a schema or a bool/list); `UNMARSHAL_OVERRIDES` says it for them. Formats are what the
OpenAPI gives (kubeconform's schema library checks `date-time`; int32, int64 and byte are
not checked). A YAML `null` is refused wherever the OpenAPI names a type: the API server would
read it as absent, but in a rendered manifest it is nearly always a template that rendered
nothing. CEL rules (`x-kubernetes-validations`) are not evaluated: tests/examples does that
with a dry-run on the real API server.

File names are kubeconform's own (registry.schemaPath in kubeconform v0.8.0):
    <root>/v1.36.3-standalone-strict/deployment-apps-v1.json     BUILTIN_LOCATION
    <root>/crds-strict/overshoot.ai/overshootstream_v1alpha1.json CRD_LOCATION
(the CRD one is the layout of Datree's CRDs-catalog that kubeconform's README points at).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

DRAFT_4 = "http://json-schema.org/draft-04/schema#"
# kubeconform's -schema-location templates for the two trees below a root directory, with
# the variables of kubeconform's registry.schemaPath. {{ .StrictSuffix }} is "-strict" under
# kubeconform -strict; only strict files are written, so a run without -strict finds none
# and fails loudly instead of validating less than it seems to.
BUILTIN_LOCATION = (
    "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/"
    "{{ .ResourceKind }}{{ .KindSuffix }}.json"
)
CRD_LOCATION = (
    "crds{{ .StrictSuffix }}/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
)

_DEFINITIONS_REF = "#/definitions/"
_APIEXT = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1."
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
# The grammar of resource.Quantity (k8s.io/apimachinery/pkg/api/resource), as controller-gen
# writes it into CRDs (deploy/crds/ uses the same): number, then a binary-SI, decimal-SI or
# exponent suffix.
QUANTITY_PATTERN = r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$"


def _ref(name: str) -> Schema:
    return {"$ref": _DEFINITIONS_REF + name}


# Definitions whose Go type has its own UnmarshalJSON: what that accepts, in place of the
# OpenAPI's single `type` (Swagger 2.0 has no anyOf). The `$ref`s are inlined like any other.
UNMARSHAL_OVERRIDES: dict[str, Schema] = {
    # intstr.IntOrString: a JSON integer (int32) or a string ("8080", "http", "25%").
    INT_OR_STRING: {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    },
    # resource.Quantity: a string in the quantity grammar, or a bare JSON number (cpu: 1).
    QUANTITY: {
        "anyOf": [{"type": "string", "pattern": QUANTITY_PATTERN}, {"type": "number"}],
    },
    # A CRD schema's `items`: one schema, or a list of them.
    _APIEXT + "JSONSchemaPropsOrArray": {
        "anyOf": [
            _ref(_APIEXT + "JSONSchemaProps"),
            {"type": "array", "items": _ref(_APIEXT + "JSONSchemaProps")},
        ],
    },
    # A CRD schema's `additionalProperties` (and `additionalItems`): a bool or a schema.
    _APIEXT + "JSONSchemaPropsOrBool": {
        "anyOf": [{"type": "boolean"}, _ref(_APIEXT + "JSONSchemaProps")],
    },
    # A CRD schema's `dependencies` values: a schema or a list of property names.
    _APIEXT + "JSONSchemaPropsOrStringArray": {
        "anyOf": [
            _ref(_APIEXT + "JSONSchemaProps"),
            {"type": "array", "items": {"type": "string"}},
        ],
    },
}


# --- kubeconform's file names ----------------------------------------------------------------


def kind_suffix(api_version: str) -> str:
    """kubeconform's {{ .KindSuffix }}: "-" + the group's first label + "-" + the version.

    "v1" -> "-v1", "apps/v1" -> "-apps-v1", "networking.k8s.io/v1" -> "-networking-v1".
    """
    group_parts = api_version.split("/")
    suffix = "-" + group_parts[0].split(".")[0].lower()
    if len(group_parts) > 1:
        suffix += "-" + group_parts[1].lower()
    return suffix


def api_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


def builtin_path(kube_version: str, group: str, version: str, kind: str) -> str:
    """Where BUILTIN_LOCATION points for one kind, under kubeconform -strict."""
    return (
        f"{_normalized(kube_version)}-standalone-strict/"
        f"{kind.lower()}{kind_suffix(api_version(group, version))}.json"
    )


def crd_path(group: str, version: str, kind: str) -> str:
    """Where CRD_LOCATION points for one custom kind, under kubeconform -strict."""
    return f"crds-strict/{group}/{kind.lower()}_{version}.json"


def _normalized(kube_version: str) -> str:
    """{{ .NormalizedKubernetesVersion }} of `kubeconform -kubernetes-version 1.36.3`."""
    return "v" + kube_version.removeprefix("v")


# --- walking a schema ----------------------------------------------------------------------

# The keywords whose values are schemas, by shape. Only these are walked: a property *named*
# "$ref" (JSONSchemaProps has one) is a name, not a reference.
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_ONE = ("not", "additionalProperties", "additionalItems", "items")


def map_subschemas(schema: Schema, fn: Callable[[Schema], Schema]) -> Schema:
    """A shallow copy of `schema` with `fn` applied to each of its direct subschemas."""
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: fn(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [fn(sub) for sub in out[key]]
    for key in _SCHEMA_ONE:
        value = out.get(key)
        if isinstance(value, dict):
            out[key] = fn(value)
        elif isinstance(value, list):  # items as a tuple of schemas
            out[key] = [fn(sub) for sub in value]
    return out


def strict(schema: Schema) -> Schema:
    """`additionalProperties: false` on every object schema that lists properties, unless it
    says otherwise (a map, or x-kubernetes-preserve-unknown-fields)."""
    out = map_subschemas(schema, strict)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# --- the API server's OpenAPI v2 ------------------------------------------------------------


class _Inliner:
    """Standalone schemas from a table of definitions that refer to each other by `$ref`.

    Each `$ref` is replaced by the definition it names (its sibling keywords, descriptions,
    kept on top). A `$ref` to a definition already being expanded on the current path is a
    cycle: it stays a `$ref`, now to the file's own `definitions`, where that definition is
    written once (expanded the same way).
    """

    def __init__(self, definitions: Mapping[str, Schema]) -> None:
        self._definitions = definitions

    def standalone(self, name: str) -> Schema:
        needed: set[str] = set()
        root = self._expand(self._definitions[name], (name,), needed)
        local: dict[str, Schema] = {}
        while pending := sorted(needed - local.keys()):
            for cyclic in pending:
                local[cyclic] = self._expand(self._definitions[cyclic], (cyclic,), needed)
        if local:
            root["definitions"] = local
        return root

    def _expand(self, schema: Schema, path: tuple[str, ...], needed: set[str]) -> Schema:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(_DEFINITIONS_REF):
                raise ValueError(f"unsupported $ref {ref!r} (only {_DEFINITIONS_REF}...)")
            name = ref.removeprefix(_DEFINITIONS_REF)
            if name not in self._definitions:
                raise ValueError(f"$ref to a missing definition {name!r}")
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            if name in path:
                needed.add(name)
                return {**siblings, "$ref": ref}
            target = self._expand(self._definitions[name], (*path, name), needed)
            return {**target, **siblings}
        return map_subschemas(schema, lambda sub: self._expand(sub, path, needed))


def _definitions_with_overrides(document: Mapping[str, Any]) -> dict[str, Schema]:
    definitions: dict[str, Schema] = dict(document["definitions"])
    for name, override in UNMARSHAL_OVERRIDES.items():
        if name in definitions:
            description = definitions[name].get("description")
            definitions[name] = copy.deepcopy(override)
            if description:
                definitions[name]["description"] = description
    return definitions


def group_version_kinds(definition: Schema) -> list[tuple[str, str, str]]:
    return [
        (gvk["group"], gvk["version"], gvk["kind"])
        for gvk in definition.get("x-kubernetes-group-version-kind", [])
    ]


def from_openapi_v2(document: Mapping[str, Any], kube_version: str) -> dict[str, Schema]:
    """Strict standalone schemas of every kind in an API server's /openapi/v2, by file path
    relative to the schema root (see BUILTIN_LOCATION)."""
    if document.get("swagger") != "2.0":
        raise ValueError("not a Swagger 2.0 document (GET /openapi/v2)")
    definitions = _definitions_with_overrides(document)
    inliner = _Inliner(definitions)
    schemas: dict[str, Schema] = {}
    made_from: dict[str, str] = {}
    for name, definition in sorted(definitions.items()):
        for group, version, kind in group_version_kinds(definition):
            path = builtin_path(kube_version, group, version, kind)
            if path in made_from:
                # DeleteOptions and WatchEvent name many group versions; two *different*
                # definitions for one file would make kubeconform validate against either.
                if made_from[path] != name:
                    raise ValueError(f"{path}: both {made_from[path]} and {name}")
                continue
            made_from[path] = name
            schemas[path] = {"$schema": DRAFT_4, **strict(inliner.standalone(name))}
    return schemas


def object_meta(document: Mapping[str, Any]) -> Schema:
    """The API server's ObjectMeta, standalone and strict (for custom resources' metadata)."""
    return strict(_Inliner(_definitions_with_overrides(document)).standalone(OBJECT_META))


# --- a CRD's openAPIV3Schema ---------------------------------------------------------------


def _structural_to_draft4(schema: Schema) -> Schema:
    """One structural-schema node (and its subschemas) in draft-4 terms.

    - `nullable: true` (OpenAPI 3.0) adds "null" to the type;
    - `x-kubernetes-int-or-string` without its own anyOf becomes integer-or-string;
    - `x-kubernetes-embedded-resource` objects also take apiVersion, kind and metadata,
      which the API server allows on them whether listed or not.
    """
    out = map_subschemas(schema, _structural_to_draft4)
    if out.get("x-kubernetes-int-or-string") and not ("anyOf" in out or "oneOf" in out):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("x-kubernetes-embedded-resource"):
        out["properties"] = {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            **out.get("properties", {}),
        }
    if out.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


def crd_version_schema(openapi_v3: Schema, metadata: Schema | None) -> Schema:
    """A strict draft-4 schema of one CRD version's objects.

    `metadata`, when given, replaces a root `metadata` that lists no properties of its own
    (the usual `type: object`); the API server validates it as ObjectMeta anyway.
    """
    root = _structural_to_draft4(openapi_v3)
    declared = root.get("properties", {}).get("metadata")
    if metadata is not None and isinstance(declared, dict) and "properties" not in declared:
        root["properties"] = {**root["properties"], "metadata": {**metadata, **declared}}
    return {"$schema": DRAFT_4, **strict(root)}


def from_crd(crd: Mapping[str, Any], metadata: Schema | None = None) -> dict[str, Schema]:
    """Strict schemas of each served version of an apiextensions.k8s.io/v1 CRD, by file path
    relative to the schema root (see CRD_LOCATION)."""
    if crd.get("apiVersion") != "apiextensions.k8s.io/v1" or crd.get("kind") != (
        "CustomResourceDefinition"
    ):
        raise ValueError("not an apiextensions.k8s.io/v1 CustomResourceDefinition")
    spec = crd["spec"]
    schemas: dict[str, Schema] = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        openapi_v3 = version.get("schema", {}).get("openAPIV3Schema")
        if openapi_v3 is None:
            raise ValueError(f"{crd['metadata']['name']} {version['name']}: no openAPIV3Schema")
        path = crd_path(spec["group"], version["name"], spec["names"]["kind"])
        schemas[path] = crd_version_schema(openapi_v3, metadata)
    return schemas


# --- on disk -------------------------------------------------------------------------------


def write(root: Path, schemas: Mapping[str, Schema]) -> list[Path]:
    """Write each schema at root/<its path>; returns the files written."""
    written: list[Path] = []
    for relative, schema in schemas.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written


def schema_locations(root: Path) -> list[str]:
    """kubeconform's -schema-location values for a root written by `write`."""
    return [f"{root}/{BUILTIN_LOCATION}", f"{root}/{CRD_LOCATION}"]
