"""kubeconform and kube-score as the tests run them, and the chart's accepted kube-score
findings (deploy/helm/kube-score.yaml).

Boundary: running the two binaries and reading their JSON output. The binaries come from the
local stack's cache (overshoot_localstack.binaries, built from the Go module proxy); the
schemas kubeconform reads are written by kubeschemas.py (see conftest.py).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from chartkit import ROOT
from kubeschemas import schema_locations

KUBE_SCORE_CONFIG = ROOT / "deploy" / "helm" / "kube-score.yaml"
# kube-score's grades (scorecard.Grade): anything below AllOK that is not skipped is a finding.
GRADE_ALL_OK = 10
GRADE_NAMES = {1: "CRITICAL", 5: "WARNING", 7: "ALMOST OK"}


def _run(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


# --- kubeconform ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Checked:
    """One resource as kubeconform reports it (`-output json -verbose`)."""

    filename: str
    api_version: str
    kind: str
    name: str
    status: str  # statusValid, statusInvalid, statusError, statusSkipped
    msg: str

    def __str__(self) -> str:
        where = f"{self.filename}: {self.api_version} {self.kind} {self.name}"
        return f"{where}: {self.status}" + (f": {self.msg}" if self.msg else "")


@dataclasses.dataclass(frozen=True)
class KubeconformRun:
    args: list[str]
    returncode: int
    resources: list[Checked]
    summary: dict[str, int]
    stderr: str

    def with_status(self, status: str) -> list[Checked]:
        return [r for r in self.resources if r.status == status]

    def report(self) -> str:
        """What a failing test prints: the command, each resource that is not valid, the
        summary."""
        bad = [str(r) for r in self.resources if r.status not in ("statusValid", "statusSkipped")]
        return "\n".join(
            [f"$ {' '.join(self.args)}", *bad, f"summary: {self.summary}", self.stderr.strip()]
        )


@dataclasses.dataclass(frozen=True)
class Kubeconform:
    """kubeconform -strict against the schemas written under `schema_root`."""

    binary: Path
    schema_root: Path
    # As kubeconform's -kubernetes-version takes it: 1.36.3 (it writes v1.36.3 in paths).
    kube_version: str

    def check(
        self,
        paths: Sequence[Path],
        *,
        skip: Sequence[str] = (),
        ignore_filename_patterns: Sequence[str] = (),
    ) -> KubeconformRun:
        """Validate files and directories; `skip` lists kinds by GVK (group/version/Kind)."""
        args = [str(self.binary), "-strict", "-summary", "-output", "json", "-verbose"]
        args += ["-kubernetes-version", self.kube_version]
        for location in schema_locations(self.schema_root):
            args += ["-schema-location", location]
        if skip:
            args += ["-skip", ",".join(skip)]
        for pattern in ignore_filename_patterns:
            args += ["-ignore-filename-pattern", pattern]
        args += [str(p) for p in paths]
        result = _run(args)
        try:
            output = json.loads(result.stdout)
        except json.JSONDecodeError as err:
            raise AssertionError(
                f"kubeconform printed no JSON (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            ) from err
        resources = [
            Checked(r["filename"], r["version"], r["kind"], r["name"], r["status"], r["msg"])
            for r in output["resources"]
        ]
        return KubeconformRun(args, result.returncode, resources, output["summary"], result.stderr)


def manifest_ids(text: str) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every object in a multi-document YAML text."""
    return sorted(
        (doc["apiVersion"], doc["kind"], doc["metadata"]["name"])
        for doc in yaml.safe_load_all(text)
        if doc
    )


# --- kube-score ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Finding:
    """One kube-score check an object does not pass."""

    object_name: str  # kube-score's: Kind/apiVersion/namespace/name
    test: str  # the check id, as --ignore-test takes it
    grade: int
    comments: tuple[str, ...]

    def __str__(self) -> str:
        grade = GRADE_NAMES.get(self.grade, str(self.grade))
        return f"[{grade}] {self.test} on {self.object_name}: {'; '.join(self.comments)}"


@dataclasses.dataclass(frozen=True)
class KubeScore:
    """`kube-score score` with its default checks, for one Kubernetes minor version."""

    binary: Path
    # As --kubernetes-version takes it: v1.36.
    kube_version: str

    def findings(self, manifests: Path, *, ignore: Sequence[str] = ()) -> list[Finding]:
        args = [str(self.binary), "score", "--output-format", "json"]
        args += ["--kubernetes-version", self.kube_version]
        for test in ignore:
            args += ["--ignore-test", test]
        result = _run([*args, str(manifests)])
        # Exit 1 means "a critical finding", which the findings say; anything else is broken.
        if result.returncode not in (0, 1):
            raise AssertionError(f"kube-score exited {result.returncode}:\n{result.stderr}")
        return sorted(_findings(json.loads(result.stdout)), key=lambda f: (f.object_name, f.test))


def _findings(objects: list[dict[str, Any]]) -> list[Finding]:
    found: list[Finding] = []
    for obj in objects:
        for scored in obj["checks"]:
            if scored["skipped"] or scored["grade"] >= GRADE_ALL_OK:
                continue
            comments = tuple(
                f"{c.get('path') or ''} {c['summary']}".strip() for c in scored["comments"] or []
            )
            found.append(
                Finding(obj["object_name"], scored["check"]["id"], scored["grade"], comments)
            )
    return found


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A kube-score check the chart does not pass, on purpose, for some values sets."""

    test: str
    values: tuple[str, ...]
    reason: str


def accepted_findings(path: Path = KUBE_SCORE_CONFIG) -> list[Accepted]:
    """The entries of deploy/helm/kube-score.yaml (the file's header says what they mean)."""
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of {{test, values, reason}} entries")
    accepted: list[Accepted] = []
    for entry in entries:
        if set(entry) != {"test", "values", "reason"} or not str(entry["reason"]).strip():
            raise ValueError(f"{path}: each entry needs test, values and a reason: {entry}")
        accepted.append(Accepted(entry["test"], tuple(entry["values"]), entry["reason"]))
    return accepted
