"""Runs deploy/argocd/ in Argo CD's own engine: the `argocd` CLI (built from the Go module
proxy by `overshoot_localstack.binaries`, like the control plane) and its offline commands
`argocd admin settings resource-overrides health | list-actions | run-action`, which read
the generated argocd-cm patch and one object file, then evaluate the Lua exactly as Argo CD's
controller and API server do: gopher-lua with Argo CD's sandbox, Argo CD's handling of
deleted objects, its decoding of the returned table.

There is no second Lua here. A look-alike sandbox (lupa) once passed a refresh action that
failed on every object in Argo CD, because it had a global `os` that Argo CD does not give;
a copy of Argo CD's sandbox can only drift from it again, and the real engine costs about
0.3 s a command.

Offline: `--argocd-cm-path` makes the CLI build its settings from that file and a fake
clientset instead of a cluster (never `--load-cluster-settings`); the environment holds only
PATH, a temporary HOME and TMPDIR and the diff stand-in below: no kubeconfig, no Argo CD
config, no ARGOCD_* variable to reach a server or cluster through.

Fixtures are in conftest.py (`argocd`, an `ArgoCD` on the cached binary).

    def test_x(argocd):
        argocd.health(obj)                 # Health(status="Healthy", message="...")
        argocd.list_actions(obj)           # {"refresh": False, "resume": True, ...}: disabled
        action = argocd.run_action(obj, "suspend")
        action.obj                         # the object the action returned
        action.patch                       # the merge patch Argo CD sends: {"spec": {...}}
        action.diff                        # the diff the CLI prints
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ARGOCD = Path(__file__).parents[2] / "deploy" / "argocd"
ARGOCD_CM = ARGOCD / "argocd-cm-patch.yaml"
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
CHANGED = "Following fields have been changed:\n\n"
# `run-action` prints a diff of the object before and after, through $KUBECTL_EXTERNAL_DIFF
# (default `diff`) with the two YAML files as arguments. This stand-in keeps copies of both
# and prints what the default would.
_DIFF = 'cp -- "$1" "$OVERSHOOT_DIFF_OUT/live.yaml" && cp -- "$2" "$OVERSHOOT_DIFF_OUT/result.yaml" && exec diff -- "$1" "$2"'


class ArgoCDError(AssertionError):
    """The CLI failed; `message` is the error Argo CD logged (what a user would see)."""

    def __init__(self, args: list[str], returncode: int, message: str, output: str) -> None:
        super().__init__(f"argocd {' '.join(args)} exited {returncode}: {message}\n{output}")
        self.message = message


@dataclasses.dataclass(frozen=True)
class Health:
    status: str
    message: str


@dataclasses.dataclass(frozen=True)
class Action:
    obj: dict[str, Any]
    patch: dict[str, Any]
    diff: str


def merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) from `before` to `after`: what Argo CD's API server
    sends for an action (`jsonpatch.CreateMergePatch(live, new)`, then a merge PATCH)."""
    patch: dict[str, Any] = {key: None for key in before.keys() - after.keys()}
    for key, new in after.items():
        old = before.get(key)
        if isinstance(new, dict) and isinstance(old, dict):
            nested = merge_patch(old, new)
            if nested:
                patch[key] = nested
        elif key not in before or not _same(old, new):
            patch[key] = new
    return patch


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 2 and 2.0 are, True and 1 are not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


class ArgoCD:
    """`argocd admin settings resource-overrides` on objects given as dicts."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home

    def _run(self, command: str, obj: dict[str, Any], *extra: str, cm: Path) -> tuple[str, Path]:
        work = Path(tempfile.mkdtemp(dir=self.home, prefix=f"{command}-"))
        objfile = work / "obj.yaml"
        objfile.write_text(yaml.safe_dump(obj, sort_keys=False))
        args = [
            *("admin", "settings", "resource-overrides", command, str(objfile), *extra),
            *("--argocd-cm-path", str(cm), "--loglevel", "warn", "--logformat", "json"),
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            # The CLI writes its diff files under $TMPDIR and never removes them.
            "TMPDIR": str(work),
            "KUBECTL_EXTERNAL_DIFF": shlex.join(["sh", "-c", _DIFF, "argocd-diff"]),
            "OVERSHOOT_DIFF_OUT": str(work),
        }
        result = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise ArgoCDError(args, result.returncode, _fatal(result.stderr), result.stdout)
        return result.stdout, work

    def health(self, obj: dict[str, Any], *, cm: Path = ARGOCD_CM) -> Health:
        out, _ = self._run("health", obj, cm=cm)
        match = re.fullmatch(r"STATUS: (\w*)\nMESSAGE: (.*)\n", out, re.S)
        assert match, f"unexpected output of argocd ... health: {out!r}"
        health = Health(status=match.group(1), message=match.group(2))
        assert health.status in HEALTH_STATUSES, health
        return health

    def list_actions(self, obj: dict[str, Any], *, cm: Path = ARGOCD_CM) -> dict[str, bool]:
        """The actions Argo CD offers for `obj`, each with whether it is disabled."""
        out, _ = self._run("list-actions", obj, cm=cm)
        header, *rows = out.splitlines()
        assert header.split() == ["NAME", "DISABLED"], out
        actions: dict[str, bool] = {}
        for row in rows:
            name, disabled = row.split()
            assert disabled in ("true", "false"), out
            actions[name] = disabled == "true"
        return actions

    def run_action(self, obj: dict[str, Any], action: str, *, cm: Path = ARGOCD_CM) -> Action:
        out, work = self._run("run-action", obj, action, cm=cm)
        assert out.startswith(CHANGED), f"unexpected output of argocd ... run-action: {out!r}"
        live = yaml.safe_load((work / "live.yaml").read_text())
        result = yaml.safe_load((work / "result.yaml").read_text())
        assert isinstance(live, dict) and isinstance(result, dict), (live, result)
        return Action(obj=result, patch=merge_patch(live, result), diff=out.removeprefix(CHANGED))


def _fatal(stderr: str) -> str:
    """The message of Argo CD's fatal log line, or all of stderr if there is none."""
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") == "fatal":
            return str(entry.get("msg", ""))
    return stderr.strip()
