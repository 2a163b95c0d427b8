"""The image itself, as `make image` builds it (localstack/overshoot_localstack/image.py):
buildah on the local debootstrap base, with no Docker engine and no registry.

The image's checks run its own rootfs (a buildah working container, mounted) under runc
directly, the way a kubelet's runtime would run the publisher Pod: uid/gid 65532, a
read-only root, no capabilities, no_new_privileges, a private tmpfs /tmp (the Pod's
emptyDir) and the image's own environment. Not `buildah run`: it has no read-only root,
and its working container is writable, so a write that should fail would pass unseen.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_dockerfile import build_context, dockerignore_rules

from overshoot_localstack import image
from overshoot_operator import manifests
from overshoot_publisher.app import EXIT_CONFIGURATION

UID, GID = manifests.PUBLISHER_UID, manifests.PUBLISHER_GID


# --- Pure parts (no buildah) --------------------------------------------------------------


@pytest.mark.unit
def test_context_is_what_the_dockerignore_admits() -> None:
    """image.py's own reading of the .dockerignore agrees with test_dockerfile's."""
    assert image.context_files() == build_context(dockerignore_rules())


@pytest.mark.unit
def test_context_hash_follows_only_the_build_context(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "operator" / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / ".dockerignore").write_text(image.ROOT.joinpath(".dockerignore").read_text())
    (root / "pyproject.toml").write_text("[project]\n")
    module = root / "operator" / "pkg" / "mod.py"
    module.write_text("x = 1\n")
    (root / "tests" / "test_x.py").write_text("")
    first = image.context_hash(root, base_id="a")

    (root / "tests" / "test_x.py").write_text("changed")
    (root / "operator" / "pkg" / "__pycache__").mkdir()
    (root / "operator" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (root / ".venv").mkdir()
    (root / ".venv" / "junk").write_text("")
    assert image.context_hash(root, base_id="a") == first, "files outside the context count"

    assert image.context_hash(root, base_id="b") != first, "a new base must rebuild"
    module.write_text("x = 2\n")
    second = image.context_hash(root, base_id="a")
    assert second != first
    module.chmod(0o755)
    assert image.context_hash(root, base_id="a") != second
    (root / "Dockerfile").write_text("FROM scratch\nUSER 1\n")
    assert image.context_hash(root, base_id="a") not in {first, second}


@pytest.mark.unit
def test_debian_mirror_is_read_from_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert image.debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "deb [signed-by=/k.gpg] http://one-line.example/debian bookworm main\n"
    )
    assert image.debian_mirror(tmp_path) == "http://one-line.example/debian"
    assert image.debian_mirror(tmp_path / "absent") == image.DEFAULT_MIRROR
    assert image.debian_mirror().startswith(("http://", "https://"))


@pytest.mark.unit
def test_pip_config_for_the_build_names_only_the_ca_and_the_index() -> None:
    config = image.build_pip_config(
        {
            "PIP_INDEX_URL": "https://pypi.example/simple",
            "PIP_FIND_LINKS": "/opt/wheels",
            "PIP_CERT": "/somewhere/else.pem",
        }
    )
    assert config.startswith("[global]\n")
    assert "index-url = https://pypi.example/simple" in config
    # Host paths mean nothing inside the build; the bundle is the one mounted there.
    assert "/opt/wheels" not in config and "/somewhere" not in config
    if image.CA_BUNDLE.is_file():
        assert f"cert = {image.CA_BUNDLE}" in config


# --- The built image ----------------------------------------------------------------------


@dataclass
class Built:
    ref: image.ImageRef
    seconds: float
    warm: image.ImageRef
    warm_seconds: float
    config: dict[str, Any]


@pytest.fixture(scope="module")
def built() -> Built:
    started = time.monotonic()
    ref = image.ensure_image()
    seconds = time.monotonic() - started
    started = time.monotonic()
    warm = image.ensure_image(log=False)
    warm_seconds = time.monotonic() - started
    info = json.loads(
        subprocess.run(
            ["buildah", "inspect", "--type", "image", ref.image_id],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return Built(ref, seconds, warm, warm_seconds, info["OCIv1"]["config"])


@pytest.fixture(scope="module")
def rootfs(built: Built) -> Iterator[Path]:
    """The image's filesystem: a buildah working container of it, mounted."""
    container = f"overshoot-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["buildah", "from", "--pull=never", "--name", container, built.ref.image_id],
        capture_output=True,
        text=True,
        check=True,
    )
    try:
        mount = subprocess.run(
            ["buildah", "mount", container], capture_output=True, text=True, check=True
        )
        yield Path(mount.stdout.strip())
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


@dataclass
class Runner:
    rootfs: Path
    env: list[str]
    work: Path

    def __call__(
        self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the image as the publisher Pod would: uid/gid 65532, a read-only
        root, no capabilities, a tmpfs /tmp, the image's environment, no network."""
        name = f"overshoot-test-{uuid.uuid4().hex[:8]}"
        bundle = self.work / name
        bundle.mkdir()
        state = self.work / "runc-state"
        subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["root"] = {"path": str(self.rootfs), "readonly": True}
        spec["hostname"] = "publisher"
        spec["process"].update(
            terminal=False,
            args=list(args),
            env=[*self.env, *(f"{k}={v}" for k, v in (extra_env or {}).items())],
            cwd="/",
            user={"uid": UID, "gid": GID, "additionalGids": [GID]},
            capabilities={k: [] for k in ("bounding", "effective", "permitted", "ambient")},
            noNewPrivileges=True,
        )
        spec["mounts"].append(
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=64m"],
            }
        )
        (bundle / "config.json").write_text(json.dumps(spec))
        runc = ["runc", "--root", str(state)]
        try:
            return subprocess.run(
                [*runc, "run", "--bundle", str(bundle), name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            subprocess.run([*runc, "delete", "--force", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def run(built: Built, rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    work = tmp_path_factory.mktemp("runc")
    return Runner(rootfs, list(built.config["Env"]), work)


@pytest.mark.packaging
@pytest.mark.timeout(1800)
def test_built_once_then_reused(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    ref, warm = built.ref, built.warm
    assert ref.name == image.IMAGE == "localhost/overshoot-operator:dev"
    assert warm.timings == {"reused": 0.0}, f"the second call did work: {warm.timings}"
    assert warm == ref
    assert built.warm_seconds < 30
    assert ref.archive.is_file() and ref.archive.parent == image.image_dir()
    # What `ctr images import` reads: one manifest under the image's full name, whose config
    # is the image id buildah reports.
    with tarfile.open(ref.archive) as archive:
        index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        assert entry["digest"] == ref.digest
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == ref.name
        blob = archive.extractfile(f"blobs/sha256/{ref.digest.removeprefix('sha256:')}")
        manifest = json.load(blob)  # type: ignore[arg-type]
        assert manifest["config"]["digest"] == ref.image_id
    with capsys.disabled():
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in ref.timings.items())
        print(
            f"\n[image] {ref.name} {ref.size_bytes / 1e6:.0f} MB; first call {built.seconds:.0f} s"
            f" ({steps}); warm reuse {built.warm_seconds:.2f} s; archive {ref.archive}"
        )


@pytest.mark.packaging
@pytest.mark.timeout(1800)
def test_image_config_runs_the_operator_as_65532(built: Built) -> None:
    config = built.config
    assert config["User"] == f"{UID}:{GID}"
    assert config["Entrypoint"] == ["overshoot-operator"]
    # The base's CMD (python3, like the official image's) must not reach the entry point.
    assert not config.get("Cmd")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # What the next call compares with this checkout's context_hash() to reuse it.
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", config["Labels"][image.CONTEXT_LABEL])


@pytest.mark.packaging
@pytest.mark.timeout(1800)
def test_nothing_of_the_build_host_is_baked_in(built: Built, rootfs: Path) -> None:
    names = {item.split("=", 1)[0].upper() for item in built.config["Env"]}
    assert not {n for n in names if "PROXY" in n or n.startswith("PIP_")}, names
    assert not (rootfs / "etc" / "pip.conf").exists()
    # The host's own CAs (a TLS-intercepting proxy's among them) were only mounted in.
    bundle = (rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt").read_text()
    local = Path("/usr/local/share/ca-certificates")
    for cert in local.rglob("*.crt") if local.is_dir() else []:
        body = "".join(re.findall(r"^[A-Za-z0-9+/=]+$", cert.read_text(), flags=re.M))
        assert base64.b64decode(body)
        assert body[:200] not in bundle.replace("\n", ""), f"{cert} is in the image"


@pytest.mark.packaging
@pytest.mark.timeout(1800)
def test_operator_console_script_starts(run: Runner) -> None:
    result = run("overshoot-operator", "--help")
    assert result.returncode == 0, result.stderr
    assert "overshoot-operator" in result.stdout


@pytest.mark.packaging
@pytest.mark.timeout(1800)
def test_publisher_without_config_exits_with_its_configuration_error(run: Runner) -> None:
    result = run("overshoot-publisher")
    assert result.returncode == EXIT_CONFIGURATION, result.stderr
    assert "OVERSHOOT_PUBLISHER_CONFIG is not set" in result.stderr
    assert "Traceback" not in result.stderr


_PROBE = r"""
import errno, os, sys, time
started = time.monotonic()
import av, numpy, livekit.rtc, overshoot_publisher.__main__
imported = time.monotonic() - started
assert (os.getuid(), os.getgid(), os.geteuid()) == ({uid}, {gid}, {uid}), os.getuid()
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
assert int(status["CapEff"], 16) == 0 and int(status["NoNewPrivs"]) == 1, status
root = [l.split() for l in open("/proc/self/mountinfo") if l.split()[4] == "/"][-1]
assert "ro" in root[5].split(","), root
for path in ("/probe", "/opt/venv/probe", "/opt/venv/lib/probe"):
    try:
        open(path, "w")
    except OSError as exc:
        assert exc.errno == errno.EROFS, (path, exc)
    else:
        raise AssertionError(path + " is writable")
# No bytecode: a module imported from the one writable place leaves no __pycache__.
assert sys.flags.dont_write_bytecode
open("/tmp/fresh_module.py", "w").write("VALUE = 1\n")
sys.path.insert(0, "/tmp")
import fresh_module
assert fresh_module.VALUE == 1 and not os.path.exists("/tmp/__pycache__"), os.listdir("/tmp")
assert sys.prefix == "/opt/venv", sys.prefix
assert av.codec.Codec("h264", "r")
print("python", sys.version.split()[0], os.path.realpath(sys.executable))
print("av", av.__version__, "numpy", numpy.__version__, "livekit", livekit.rtc.__version__)
print(f"imported in {{imported:.2f}} s")
"""


@pytest.mark.packaging
@pytest.mark.timeout(1800)
def test_publisher_media_stack_as_65532_on_a_read_only_root(
    run: Runner, rootfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _bytecode(rootfs)
    result = run("python", "-c", _PROBE.format(uid=UID, gid=GID))
    assert result.returncode == 0, result.stderr
    assert "imported in" in result.stdout
    assert _bytecode(rootfs) == before
    with capsys.disabled():
        print("\n[image] " + result.stdout.strip().replace("\n", "; "))


def _bytecode(rootfs: Path) -> set[str]:
    found: set[str] = set()
    for top in ("opt/venv", "usr/lib", "usr/local/lib"):
        for dirpath, _dirs, files in os.walk(rootfs / top):
            found.update(os.path.join(dirpath, f) for f in files if f.endswith(".pyc"))
    return found
