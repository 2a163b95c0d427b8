"""Builds the project's Dockerfile into a local OCI image with no Docker engine and no registry.

Role: `ensure_image()` (and `overshoot-localstack image`, `make image`) gives the image
`localhost/overshoot-operator:dev` and an OCI archive of it that `ctr images import` takes.
buildah builds it daemonless into its own storage (containers-storage), with runc as the
runtime: Debian's buildah would use crun when installed, and crun refuses this kind of
host's hybrid cgroup layout. The official base (`python:3.11.13-slim-bookworm`, the
Dockerfile's default `BASE`) cannot be pulled without a registry, so the build is given a
base made here: a debootstrap `minbase` of bookworm with Debian's python3 (3.11, like the
official tag), imported with `buildah from scratch` under a local name, never the official
one.

pip inside the build reaches the package index the way the host does: the host's CA
directory is bind-mounted over the build's (`-v /etc/ssl/certs:/etc/ssl/certs:ro`, for a
TLS-intercepting proxy), a pip config written here names that bundle (Debian's pip reads
/etc/ssl/certs by itself, the official image's pip only its own certifi bundle) and the
host's index settings, if any, and buildah passes the host's proxy variables through
(`--http-proxy`). All three exist only while a RUN step runs: nothing of them is in the
image (tests/packaging/test_image.py checks).

Boundary: buildah, debootstrap and, for the packages they come in, apt-get (through
`rtsp.ensure_debian_packages`). Needs root (debootstrap, `buildah mount`).

Cache, rebuilt only when needed:
    containers-storage (buildah's, /var/lib/containers/storage):
        localhost/overshoot-base:bookworm-py3.11   the base; made when missing (or its
                                                   recipe label differs from BASE_RECIPE)
        localhost/overshoot-operator:dev           the image; rebuilt when its label
                                                   ai.overshoot.build-context (a hash of
                                                   the build context, see context_hash())
                                                   differs
    <cache>/image/ (default ~/.cache/overshoot-operator/image, see binaries.cache_dir()):
        overshoot-operator-dev.oci.tar             `buildah push ... oci-archive:`, rewritten
                                                   when the image changed
        overshoot-operator-dev.json                the image id and digest the archive holds
        build.log, debootstrap.log                 the last build's output
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from overshoot_localstack import binaries, rtsp

ROOT = Path(__file__).resolve().parents[2]

IMAGE = "localhost/overshoot-operator:dev"
BASE_IMAGE = "localhost/overshoot-base:bookworm-py3.11"
# What the base is made of; a label on the base image, so a changed recipe remakes it.
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_RECIPE = f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {SUITE}"
# The same PATH and LANG as the official python image's config (minus its /usr/local/bin,
# which the Debian base leaves empty).
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

DEBIAN_PACKAGES = ["buildah", "runc", "debootstrap", "debian-archive-keyring"]
RUNTIME = "/usr/bin/runc"

CONTEXT_LABEL = "ai.overshoot.build-context"
RECIPE_LABEL = "ai.overshoot.base-recipe"
HOST_CERTS = Path("/etc/ssl/certs")
CA_BUNDLE = HOST_CERTS / "ca-certificates.crt"
# pip's site-wide config files and the per-user ones, in the order pip reads them.
PIP_CONFIGS = (
    Path("/etc/xdg/pip/pip.conf"),
    Path("/etc/pip.conf"),
    Path.home() / ".pip" / "pip.conf",
    Path.home() / ".config" / "pip" / "pip.conf",
)
PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host")


class ImageError(RuntimeError):
    """The image could not be built; the message says what failed or what to install."""


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """A built image: its reference in containers-storage and the OCI archive of it."""

    name: str
    archive: Path
    # The config digest: buildah's image id, and containerd's after `ctr images import`.
    image_id: str
    # The manifest digest in the archive.
    digest: str
    # Unpacked, as buildah reports it (three significant digits).
    size_bytes: int
    # Seconds spent by this call, per step ("base", "build", "archive", or "reused").
    timings: dict[str, float] = dataclasses.field(default_factory=dict, compare=False)


def image_dir() -> Path:
    return binaries.cache_dir() / "image"


def _archive_stem(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name.removeprefix("localhost/"))


# --- The build context ----------------------------------------------------------------------


def _glob_regex(glob: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go's filepath.Match plus `**`) as a regex."""
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif glob.startswith("**", i):
            out += ".*"
            i += 2
        elif glob[i] == "*":
            out += "[^/]*"
            i += 1
        elif glob[i] == "?":
            out += "[^/]"
            i += 1
        elif glob[i] == "[" and "]" in glob[i:]:
            end = glob.index("]", i)
            out += "[" + glob[i + 1 : end].replace("!", "^", 1) + "]"
            i = end + 1
        else:
            out += re.escape(glob[i])
            i += 1
    return re.compile(out)


def _ignore_rules(root: Path) -> list[tuple[bool, str, re.Pattern[str]]]:
    path = root / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = os.path.normpath(line.lstrip("!").strip()).strip("/")
        rules.append((negate, glob, _glob_regex(glob)))
    return rules


def _ignored(rel: str, rules: list[tuple[bool, str, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negate, _glob, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def context_files(root: Path = ROOT) -> list[str]:
    """The files (relative, sorted) that the .dockerignore lets into the build context."""
    rules = _ignore_rules(root)
    negations = [glob for negate, glob, _ in rules if negate]
    sent: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else f"{rel_dir}/"

        def prunable(rel: str) -> bool:
            # An ignored folder is not entered unless a `!` pattern could re-admit something
            # inside it (.venv, .git and caches are never walked).
            return _ignored(rel, rules) and not any(
                g.startswith(rel + "/") or re.search(r"[*?\[]", g) for g in negations
            )

        dirnames[:] = sorted(d for d in dirnames if not prunable(prefix + d))
        sent += [prefix + f for f in filenames if not _ignored(prefix + f, rules)]
    return sorted(sent)


def context_hash(root: Path = ROOT, *, base_id: str = "", base: str = BASE_IMAGE) -> str:
    """sha256 over what the build reads: the Dockerfile, the .dockerignore, every file it
    admits (path, executable bit, content), and the base it is built on."""
    digest = hashlib.sha256()
    for item in (f"base={base}", f"base-id={base_id}"):
        digest.update(item.encode() + b"\0")
    names = sorted({"Dockerfile", ".dockerignore", *context_files(root)})
    for rel in names:
        path = root / rel
        if not path.is_file():
            continue
        executable = os.access(path, os.X_OK)
        digest.update(f"{rel}\0{int(executable)}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return f"sha256:{digest.hexdigest()}"


# --- Host configuration -------------------------------------------------------------------


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here for the suite (one-line or deb822 sources)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    key, sep, value = line.partition(":")
                    if sep and not line.startswith(("#", " ", "\t")):
                        fields[key.strip().lower()] = value.strip()
                if (
                    "deb" in fields.get("types", "").split()
                    and SUITE in fields.get("suites", "").split()
                ):
                    return fields.get("uris", "").split()[0].rstrip("/")
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1].rstrip("/")
    return DEFAULT_MIRROR


def build_pip_config(environ: dict[str, str] | None = None) -> str:
    """A pip config for RUN steps: the mounted CA bundle and the host's index settings."""
    environ = dict(os.environ if environ is None else environ)
    host = configparser.ConfigParser(interpolation=None)
    config_file = environ.get("PIP_CONFIG_FILE")
    host.read([*PIP_CONFIGS, *([Path(config_file)] if config_file else [])])
    settings: dict[str, str] = {}
    for section in ("global", "install"):
        if host.has_section(section):
            for key in PIP_SETTINGS:
                if host.has_option(section, key):
                    settings[key] = host.get(section, key)
    for key in PIP_SETTINGS:
        value = environ.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            settings[key] = value
    lines = ["[global]"]
    if CA_BUNDLE.is_file():
        lines.append(f"cert = {CA_BUNDLE}")
    lines += [f"{key} = {' '.join(value.split())}" for key, value in sorted(settings.items())]
    return "\n".join(lines) + "\n"


# --- buildah ------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "BUILDAH_RUNTIME": RUNTIME, "BUILDAH_ISOLATION": "oci"}


def _run(args: Sequence[str], *, log: bool, output: Path | None = None) -> str:
    if log:
        print(f"+ {' '.join(args)}", file=sys.stderr, flush=True)
    if output is not None:
        with output.open("w") as handle:
            proc = subprocess.run(
                args, stdout=handle, stderr=subprocess.STDOUT, env=_env(), check=False
            )
        if proc.returncode != 0:
            tail = output.read_text(errors="replace")[-4000:]
            raise ImageError(
                f"`{' '.join(args)}` failed (exit {proc.returncode}); log {output}:\n{tail}"
            )
        return ""
    proc2 = subprocess.run(args, capture_output=True, text=True, env=_env(), check=False)
    if proc2.returncode != 0:
        raise ImageError(
            f"`{' '.join(args)}` failed (exit {proc2.returncode}):\n{proc2.stderr[-4000:]}"
        )
    return proc2.stdout


def _inspect(name: str) -> dict[str, Any] | None:
    """buildah's description of a stored image, or None when there is none by that name."""
    proc = subprocess.run(
        ["buildah", "inspect", "--type", "image", name],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    if proc.returncode != 0:
        return None
    info: dict[str, Any] = json.loads(proc.stdout)
    return info


def _labels(info: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = info.get("OCIv1", {}).get("config", {}).get("Labels") or {}
    return labels


def _image_id(info: dict[str, Any]) -> str:
    return f"sha256:{info['FromImageID']}"


_UNITS = {"B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def _size(name: str) -> int:
    """The image's unpacked size in bytes, to buildah's precision: it prints "582 MB"."""
    entries = json.loads(_run(["buildah", "images", "--json", name], log=False))
    number, _, unit = str(entries[0]["size"]).partition(" ")
    return round(float(number) * _UNITS.get(unit, 1))


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise ImageError(
            "Building the image needs root (debootstrap and `buildah mount`): run "
            "`sudo make image` or `sudo .venv/bin/overshoot-localstack image`."
        )
    try:
        rtsp.ensure_debian_packages(DEBIAN_PACKAGES)
    except rtsp.RtspServerError as err:
        raise ImageError(str(err)) from err


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One build at a time (two test sessions, `make image` beside a test run)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- The base -----------------------------------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if mountpoint.startswith(prefix):
            found.append(mountpoint)
    return found


def _remove_tree(path: Path) -> None:
    """Remove a rootfs, first undoing any mount a failed debootstrap left inside it
    (its /proc and /sys): rmtree must never walk into the host's."""
    if not path.exists():
        return
    for mountpoint in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False)
    if _mounts_under(path):
        raise ImageError(f"{path} still has mounts inside; unmount them and remove it by hand")
    shutil.rmtree(path)


def ensure_base(*, log: bool = True, force: bool = False) -> str:
    """The local base image's id, made with debootstrap and imported when missing."""
    info = _inspect(BASE_IMAGE)
    if info and not force and _labels(info).get(RECIPE_LABEL) == BASE_RECIPE:
        return _image_id(info)
    rootfs = image_dir() / "rootfs.partial"
    _remove_tree(rootfs)
    rootfs.mkdir(parents=True)
    started = time.monotonic()
    try:
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(rootfs),
                debian_mirror(),
            ],
            log=log,
            output=image_dir() / "debootstrap.log",
        )
        # What the host lent the install, and apt's downloads: none of it is the image's.
        for rel in ("etc/resolv.conf", "etc/hostname"):
            (rootfs / rel).unlink(missing_ok=True)
        for rel in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            for child in (rootfs / rel).glob("*"):
                if child.is_file() or child.is_symlink():
                    child.unlink()
        if log:
            print(f"Made the {SUITE} rootfs in {time.monotonic() - started:.0f} s", file=sys.stderr)
        started = time.monotonic()
        container = _run(["buildah", "from", "scratch"], log=log).strip()
        try:
            mountpoint = _run(["buildah", "mount", container], log=log).strip()
            try:
                _run(["cp", "-a", f"{rootfs}/.", f"{mountpoint}/"], log=log)
            finally:
                _run(["buildah", "umount", container], log=log)
            config = ["buildah", "config"]
            for item in BASE_ENV:
                config += ["--env", item]
            config += ["--label", f"{RECIPE_LABEL}={BASE_RECIPE}", "--cmd", '["python3"]']
            _run([*config, container], log=log)
            _run(["buildah", "commit", "--rm", container, BASE_IMAGE], log=log)
        except BaseException:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
            raise
    finally:
        _remove_tree(rootfs)
    if log:
        print(f"Imported {BASE_IMAGE} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if info:
        # The previous base, now untagged (kept if an image still uses it).
        subprocess.run(["buildah", "rmi", _image_id(info)], capture_output=True, check=False)
    new = _inspect(BASE_IMAGE)
    assert new is not None
    return _image_id(new)


# --- The image ----------------------------------------------------------------------------


def _build(root: Path, label: str, *, log: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="overshoot-image-") as tmp:
        pip_conf = Path(tmp) / "pip.conf"
        pip_conf.write_text(build_pip_config())
        iidfile = Path(tmp) / "iid"
        args = [
            "buildah",
            "bud",
            "--runtime",
            RUNTIME,
            "--pull=never",
            "--network=host",
            "--http-proxy=true",
            "--build-arg",
            f"BASE={BASE_IMAGE}",
            "--label",
            f"{CONTEXT_LABEL}={label}",
            "--volume",
            f"{HOST_CERTS}:{HOST_CERTS}:ro",
            "--volume",
            f"{pip_conf}:/etc/pip.conf:ro",
            "--iidfile",
            str(iidfile),
            "--file",
            str(root / "Dockerfile"),
            "--tag",
            IMAGE,
            str(root),
        ]
        _run(args, log=log, output=image_dir() / "build.log")


def _archive(name: str, image_id: str, *, log: bool) -> tuple[Path, str]:
    """An OCI archive of the image (rewritten only when it holds another image id)."""
    stem = _archive_stem(name)
    archive = image_dir() / f"{stem}.oci.tar"
    meta_path = image_dir() / f"{stem}.json"
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        meta = json.loads(meta_path.read_text())
        if meta["image_id"] == image_id and archive.is_file():
            return archive, str(meta["digest"])
    partial = archive.with_name(archive.name + ".partial")
    digestfile = archive.with_name(archive.name + ".digest")
    partial.unlink(missing_ok=True)
    _run(
        [
            "buildah",
            "push",
            "--quiet",
            "--digestfile",
            str(digestfile),
            name,
            f"oci-archive:{partial}:{name}",
        ],
        log=log,
    )
    digest = digestfile.read_text().strip()
    digestfile.unlink()
    partial.replace(archive)
    meta_path.write_text(
        json.dumps({"name": name, "image_id": image_id, "digest": digest}, indent=2) + "\n"
    )
    return archive, digest


def ensure_image(*, root: Path = ROOT, log: bool = True, force: bool = False) -> ImageRef:
    """The project's image, built from `root`'s Dockerfile when its context changed, and
    an OCI archive of it (see the module docstring for what is cached where)."""
    if not (root / "Dockerfile").is_file():
        raise ImageError(
            f"No Dockerfile in {root}: the image is built from a checkout of the project."
        )
    _require_tools()
    timings: dict[str, float] = {}
    with _locked(image_dir()):
        started = time.monotonic()
        base_id = ensure_base(log=log)
        if time.monotonic() - started > 1:
            timings["base"] = time.monotonic() - started
        label = context_hash(root, base_id=base_id)
        info = _inspect(IMAGE)
        if force or info is None or _labels(info).get(CONTEXT_LABEL) != label:
            started = time.monotonic()
            _build(root, label, log=log)
            timings["build"] = time.monotonic() - started
            if info is not None:
                # The image it replaces, now untagged.
                subprocess.run(
                    ["buildah", "rmi", _image_id(info)], capture_output=True, check=False
                )
            info = _inspect(IMAGE)
            if info is None or _labels(info).get(CONTEXT_LABEL) != label:
                raise ImageError(f"buildah built {IMAGE} but storage does not show it")
            if log:
                print(f"Built {IMAGE} in {timings['build']:.0f} s", file=sys.stderr)
        else:
            timings["reused"] = 0.0
        image_id = _image_id(info)
        started = time.monotonic()
        archive, digest = _archive(IMAGE, image_id, log=log)
        if time.monotonic() - started > 1:
            timings["archive"] = time.monotonic() - started
        return ImageRef(
            name=IMAGE,
            archive=archive,
            image_id=image_id,
            digest=digest,
            size_bytes=_size(IMAGE),
            timings=timings,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="overshoot-localstack image",
        description=f"Build (or reuse) {IMAGE} from the Dockerfile with buildah, on a local "
        "debootstrap base, and write an OCI archive of it for `ctr images import`.",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when unchanged")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        ref = ensure_image(force=args.force)
    except ImageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    what = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in ref.timings.items())
    print(
        f"image:   {ref.name}\n"
        f"id:      {ref.image_id}\n"
        f"digest:  {ref.digest}\n"
        f"size:    {ref.size_bytes / 1e6:.0f} MB\n"
        f"archive: {ref.archive}\n"
        f"({what}; {time.monotonic() - started:.0f} s in all)\n"
        f"containerd: ctr -n k8s.io images import {ref.archive}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
