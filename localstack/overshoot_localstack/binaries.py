"""Builds and caches the real binaries the local stack runs: the Kubernetes control plane,
etcd, kwok, helm, the LiveKit server, toxiproxy (the TCP fault proxy of `faultproxy.py`), the
Argo CD CLI (its Lua engine checks deploy/argocd/ in tests/argocd), and the manifest linters
kubeconform and kube-score (tests/lint checks deploy/ and examples/ with them).

Boundary: the Go toolchain and the cache directory. Nothing here starts a process other
than `go`; the harnesses in `cluster.py`, `livekit.py` and `faultproxy.py` only ask
`ensure()` for paths.

Every binary comes from the Go module proxy and is built in a wrapper module of its own,
because several of these modules carry `replace` directives to local paths (Kubernetes'
staging modules, etcd's sibling modules) that `go install pkg@version` refuses. The wrapper
re-points each local replace at the published module of the same release.

Layout of the cache (default `~/.cache/overshoot-operator`, or `$OVERSHOOT_CACHE_DIR`):
    bin/<component>-<version>/<binary>       what the harnesses run
    src/<component>-<version>/go.mod         the wrapper module, kept for rebuilds
A directory of prebuilt binaries replaces the build: `$KUBEBUILDER_ASSETS` (envtest's
convention: kube-apiserver, etcd, ...) is searched first for each binary.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.14"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.19.5"
LIVEKIT_VERSION = "v1.13.5"
# The newest release the Go module proxy serves. Its version list stops at v2.5.0, but later
# tags are served when asked for by name; v2.12.1 and v2.13.0 are refused.
TOXIPROXY_VERSION = "v2.12.0"
# The newest Argo CD the proxy can build: v3.3 and later need a nested ./gitops-engine module
# the proxy does not serve, and v3.2.12 does not compile.
ARGOCD_VERSION = "v3.2.11"
# The manifest linters of tests/lint; both listed by `go list -m -versions`. kubeconform
# v0.8.0's go.mod asks for Go 1.26.
KUBECONFORM_VERSION = "v0.8.0"
KUBE_SCORE_VERSION = "v1.20.0"


class BuildError(RuntimeError):
    """A binary could not be found or built; the message says what to install or fix."""


@dataclasses.dataclass(frozen=True)
class Component:
    """One Go module release and the commands built from it."""

    name: str
    module: str
    version: str
    # binary name -> package path inside the module graph
    binaries: dict[str, str]
    ldflags: str = ""
    # Start the wrapper from the release's own go.sum: its checksums, not a fresh lookup of
    # each of a large module graph's sums.
    copy_go_sum: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


def _kubernetes_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    return " ".join(
        [
            "-s -w",
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    )


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in [
        Component(
            "kubernetes",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            {
                "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
                "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
                # Not needed by the tests; for `make cluster-up` and the README.
                "kubectl": "k8s.io/kubernetes/cmd/kubectl",
                # The real node of `node.py` (tests/node); the kwok Nodes need none.
                "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            },
            _kubernetes_ldflags(KUBERNETES_VERSION),
        ),
        Component(
            "etcd",
            "go.etcd.io/etcd/server/v3",
            ETCD_VERSION,
            {"etcd": "go.etcd.io/etcd/server/v3"},
            "-s -w",
        ),
        Component(
            "kwok",
            "sigs.k8s.io/kwok",
            KWOK_VERSION,
            {"kwok": "sigs.k8s.io/kwok/cmd/kwok", "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl"},
            "-s -w",
        ),
        Component(
            "helm",
            "helm.sh/helm/v3",
            HELM_VERSION,
            {"helm": "helm.sh/helm/v3/cmd/helm"},
            f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
        ),
        Component(
            "livekit",
            "github.com/livekit/livekit-server",
            LIVEKIT_VERSION,
            {"livekit-server": "github.com/livekit/livekit-server/cmd/server"},
            "-s -w",
        ),
        Component(
            "toxiproxy",
            "github.com/Shopify/toxiproxy/v2",
            TOXIPROXY_VERSION,
            {"toxiproxy-server": "github.com/Shopify/toxiproxy/v2/cmd/server"},
            # Without it, `toxiproxy-server -version` and GET /version say "git".
            f"-s -w -X github.com/Shopify/toxiproxy/v2.Version={TOXIPROXY_VERSION}",
        ),
        Component(
            "argocd",
            "github.com/argoproj/argo-cd/v3",
            ARGOCD_VERSION,
            # One binary for every Argo CD command; named `argocd`, it is the CLI.
            {"argocd": "github.com/argoproj/argo-cd/v3/cmd"},
            # `argocd version --client` says v3.2.11+unknown, not v99.99.99+unknown.
            "-s -w -X github.com/argoproj/argo-cd/v3/common.version=" + ARGOCD_VERSION.lstrip("v"),
            copy_go_sum=True,
        ),
        Component(
            "kubeconform",
            "github.com/yannh/kubeconform",
            KUBECONFORM_VERSION,
            {"kubeconform": "github.com/yannh/kubeconform/cmd/kubeconform"},
            # `kubeconform -v` says v0.8.0, not "development".
            f"-s -w -X main.version={KUBECONFORM_VERSION}",
        ),
        Component(
            "kube-score",
            "github.com/zegl/kube-score",
            KUBE_SCORE_VERSION,
            {"kube-score": "github.com/zegl/kube-score/cmd/kube-score"},
            # `kube-score version` says 1.20.0, not "development".
            f"-s -w -X main.version={KUBE_SCORE_VERSION.lstrip('v')}",
        ),
    ]
}

# Which component provides each binary, for callers that ask by binary name.
BINARY_COMPONENT = {b: c.name for c in COMPONENTS.values() for b in c.binaries}


def cache_dir() -> Path:
    env = os.environ.get("OVERSHOOT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "overshoot-operator"


def _prebuilt(binary: str) -> Path | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        candidate = Path(assets) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def cached_path(binary: str) -> Path:
    component = COMPONENTS[BINARY_COMPONENT[binary]]
    return cache_dir() / "bin" / component.key / binary


def find(binary: str) -> Path | None:
    """The path of a usable binary, prebuilt or cached, without building anything."""
    prebuilt = _prebuilt(binary)
    if prebuilt:
        return prebuilt
    path = cached_path(binary)
    return path if path.is_file() else None


def ensure(binaries: Sequence[str], *, log: bool = True) -> dict[str, Path]:
    """Paths of the named binaries, building the components that are missing."""
    found: dict[str, Path] = {}
    missing_components: dict[str, list[str]] = {}
    for binary in binaries:
        path = find(binary)
        if path:
            found[binary] = path
        else:
            missing_components.setdefault(BINARY_COMPONENT[binary], []).append(binary)
    for name in missing_components:
        build(COMPONENTS[name], only=missing_components[name], log=log)
        for binary in missing_components[name]:
            found[binary] = cached_path(binary)
    return found


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError(
            "The local stack builds Kubernetes, etcd, kwok, helm and LiveKit from the Go "
            "module proxy, and no `go` command was found. Install Go 1.26 or newer "
            "(https://go.dev/doc/install, or `apt-get install golang-1.26`), or point "
            "KUBEBUILDER_ASSETS at a directory of prebuilt binaries."
        )
    return go


def _run(args: Sequence[str], cwd: Path, env: dict[str, str], log: bool) -> str:
    if log:
        print(f"+ {' '.join(args)}", file=sys.stderr, flush=True)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(
            f"`{' '.join(args)}` failed in {cwd} (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


_LOCAL_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\.\.?/\S*)\s*$")


def local_replaces(gomod_text: str) -> list[str]:
    """Module paths that a go.mod replaces with a local directory (`=> ./x` or `=> ../x`)."""
    modules: list[str] = []
    in_block = False
    for raw in gomod_text.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        stripped = line.strip()
        if stripped.startswith("replace ("):
            in_block = True
            continue
        if in_block and stripped == ")":
            in_block = False
            continue
        if in_block or stripped.startswith("replace "):
            match = _LOCAL_REPLACE.match(stripped)
            if match:
                modules.append(match.group(1))
    return modules


def required_modules(gomod_text: str) -> set[str]:
    """Module paths named in a go.mod's require directives."""
    required: set[str] = set()
    in_block = False
    for raw in gomod_text.splitlines():
        stripped = raw.split("//", 1)[0].strip()
        if stripped.startswith("require ("):
            in_block = True
            continue
        if in_block and stripped == ")":
            in_block = False
            continue
        if in_block and stripped:
            required.add(stripped.split()[0])
        elif stripped.startswith("require "):
            required.add(stripped.split()[1])
    return required


def remote_replaces(gomod_text: str) -> list[str]:
    """`old=new@version` pairs for replaces that point at other published modules."""
    pairs: list[str] = []
    in_block = False
    for raw in gomod_text.splitlines():
        stripped = raw.split("//", 1)[0].strip()
        if stripped.startswith("replace ("):
            in_block = True
            continue
        if in_block and stripped == ")":
            in_block = False
            continue
        if not (in_block or stripped.startswith("replace ")):
            continue
        body = stripped.removeprefix("replace ").strip()
        if "=>" not in body:
            continue
        left, right = (part.split() for part in body.split("=>", 1))
        if not right or right[0].startswith("."):
            continue
        old = left[0] if len(left) == 1 else f"{left[0]}@{left[1]}"
        new = right[0] if len(right) == 1 else f"{right[0]}@{right[1]}"
        pairs.append(f"{old}={new}")
    return pairs


def replaced_version(component: Component, module: str) -> str:
    """The published version to use for a module the component's go.mod takes locally.

    Kubernetes publishes its staging modules as v0.<minor>.<patch> of the same release;
    etcd and others tag their sibling modules with the release's own version.
    """
    if component.module == "k8s.io/kubernetes":
        _major, minor, patch = component.version.lstrip("v").split(".")
        return f"v0.{minor}.{patch}"
    return component.version


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on a component's wrapper directory.

    Two builds of one component (two test sessions, `make test` beside `make binaries`)
    would rewrite the same go.mod under each other; the second waits for the first instead.
    """
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(component: Component, *, only: Sequence[str] | None = None, log: bool = True) -> Path:
    """Build the component's binaries (or just `only`, skipping those already cached)."""
    go = _go()
    src = cache_dir() / "src" / component.key
    out = cache_dir() / "bin" / component.key
    src.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(src):
        wanted = list(component.binaries) if only is None else list(only)
        if only is not None:
            # Whoever held the lock before us may have built them already.
            wanted = [b for b in wanted if not (out / b).is_file()]
            if not wanted:
                return out
        _build_locked(go, component, src, out, wanted, log)
    return out


def _build_locked(
    go: str, component: Component, src: Path, out: Path, wanted: list[str], log: bool
) -> None:
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOWORK": "off",
        "GOFLAGS": "-mod=mod -buildvcs=false",
    }
    started = time.monotonic()
    # The wrapper is cheap to write and a half-edited one from an interrupted build is not
    # worth repairing: start it afresh every time (the module cache keeps downloads).
    for stale in ("go.mod", "go.sum"):
        (src / stale).unlink(missing_ok=True)
    _run([go, "mod", "init", f"overshoot.local/wrapper/{component.name}"], src, env, log)
    info = json.loads(
        _run(
            [go, "mod", "download", "-json", f"{component.module}@{component.version}"],
            src,
            env,
            log,
        )
    )
    gomod_text = Path(info["GoMod"]).read_text()
    if component.copy_go_sum:
        shutil.copyfile(Path(info["Dir"]) / "go.sum", src / "go.sum")
    edits = [f"-require={component.module}@{component.version}"]
    # Only modules the release requires: a replace of an unrequired module (etcd's own
    # root module, its test module) names a version that may not even be valid.
    required = required_modules(gomod_text)
    for module in local_replaces(gomod_text):
        if module != component.module and module in required:
            edits.append(f"-replace={module}={module}@{replaced_version(component, module)}")
    edits += [f"-replace={pair}" for pair in remote_replaces(gomod_text)]
    _run([go, "mod", "edit", *edits], src, env, log)
    pkgs = [f"{pkg}@{component.version}" for pkg in component.binaries.values()]
    _run([go, "get", *pkgs], src, env, log)
    for binary in wanted:
        # Built under a temporary name and renamed: an interrupted build must not leave a
        # truncated file that find() would take for a cached binary.
        partial = out / f".{binary}.partial"
        _run(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                component.ldflags,
                "-o",
                str(partial),
                component.binaries[binary],
            ],
            src,
            env,
            log,
        )
        partial.replace(out / binary)
    if log:
        print(
            f"Built {', '.join(wanted)} ({component.key}) in "
            f"{time.monotonic() - started:.0f} s -> {out}",
            file=sys.stderr,
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="overshoot-localstack-build",
        description="Build and cache the binaries of the local stack (Go module proxy).",
    )
    parser.add_argument(
        "components",
        nargs="*",
        default=list(COMPONENTS),
        help=f"components to build (default: all of {', '.join(COMPONENTS)})",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    try:
        for name in args.components:
            if name not in COMPONENTS:
                parser.error(f"unknown component {name!r}; choose from {', '.join(COMPONENTS)}")
            component = COMPONENTS[name]
            missing = [b for b in component.binaries if not find(b)]
            if args.force or missing:
                build(component, only=None if args.force else missing)
            else:
                print(f"Cached {component.key}", file=sys.stderr)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
