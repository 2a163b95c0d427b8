"""`make demo`, the way a newcomer meets the project: `overshoot-localstack demo` as a
subprocess reaches Publishing with a real, growing frame count sent by a publisher
container on a real node, and leaves nothing behind, whether it ends on its own
(`--timeout`, as CI runs it) or by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from overshoot_localstack import binaries
from overshoot_localstack.demo import REQUIRED_BINARIES, example_api_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

DEMO = [str(Path(sys.executable).with_name("overshoot-localstack")), "demo"]
ROW = re.compile(
    r"^\s*\d+s\s+(?P<name>\S+)\s+(?P<delivery>\S+)\s+(?P<phase>\S+)\s+\S+\s+\S+\s+"
    r"(?P<frames>\d+|-)\s"
)


def _require_binaries() -> None:
    missing = [b for b in REQUIRED_BINARIES if binaries.find(b) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not built: run `make binaries` first (the demo would "
            "build them, but a cold build does not fit in a test's timeout)",
            pytrace=False,
        )


def _publishing_frames(output: str, name: str, delivery: str) -> list[int]:
    """Frame counts of `name`'s status rows that show Publishing by `delivery`, in order."""
    return [
        int(m["frames"])
        for line in output.splitlines()
        if (m := ROW.match(line))
        and m["name"] == name
        and m["delivery"] == delivery
        and m["phase"] == "Publishing"
        and m["frames"] != "-"
    ]


def _leftovers(output: str) -> list[str]:
    """What the demo's output names that still exists: the node (its interfaces, cgroups,
    work directory), processes, ports, files."""
    found: list[str] = []
    node = re.search(r"Node (overshoot-node-(\d+)) Ready in .*\(work directory (\S+)\)", output)
    assert node, output
    index = node[2]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found.extend(
        f"interface {name}"
        for name in (f"ovkb{index}", f"ovkp{index}", f"ovkn{index}")
        if re.search(rf"^\d+: {name}[@:]", links, re.MULTILINE)
    )
    found.extend(
        f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob(f"*/{node[1]}") if path.exists()
    )
    paths = [
        Path(m[1]).parent
        for pattern in (r"export KUBECONFIG=(\S+)", r"Logs \(.*\): (\S+)")
        if (m := re.search(pattern, output))
    ]
    assert len(paths) == 2, output
    paths.append(Path(node[3]))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if any(str(p) in cmdline or cwd.startswith(str(p)) for p in paths):
            found.append(f"process {pid}: {cmdline[:120]}")
    found.extend(f"directory {p}" for p in paths if p.exists())
    emulator = re.search(r"Overshoot emulator at http://127\.0\.0\.1:(\d+)/", output)
    assert emulator, output
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", int(emulator[1]))) == 0:
            found.append(f"emulator port {emulator[1]}")
    return found


def _assert_no_secrets(output: str) -> None:
    assert example_api_key() not in output
    # LiveKit room tokens are JWTs: base64url of '{"' starts every one.
    assert "eyJ" not in output


def test_demo_reaches_publishing_with_growing_frames(tmp_path: Path) -> None:
    """Both delivery modes reach Publishing with growing frames, and the kubectl plugin
    writes a snapshot of each (the publisher's test pattern, the pulled camera)."""
    _require_binaries()
    started = time.monotonic()
    result = subprocess.run(
        [*DEMO, "--timeout", "240", "--snapshots", str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=420,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"demo exited with {result.returncode}:\n{output[-6000:]}"
    for name, delivery in (("test-pattern", "Publisher"), ("gate", "ServerPull")):
        frames = _publishing_frames(result.stdout, name, delivery)
        assert len(frames) >= 2 and frames[-1] > frames[0], (name, result.stdout[-4000:])
        assert f"OvershootStream demo/{name} is Publishing" in result.stdout
        with av.open(str(tmp_path / f"{name}.jpg")) as jpeg:
            picture = next(jpeg.decode(video=0))
        assert (picture.width, picture.height) == (640, 360), name
    assert "export KUBECONFIG=" in result.stdout and "Ctrl-C" in result.stdout
    assert result.stdout.rstrip().endswith("Stopped."), result.stdout[-2000:]
    assert _leftovers(result.stdout) == []
    _assert_no_secrets(output)
    print(f"demo reached Publishing and stopped in {time.monotonic() - started:.0f} s")


def test_demo_stops_cleanly_on_ctrl_c() -> None:
    _require_binaries()
    log = subprocess.PIPE
    # Its own process group, like a shell's foreground job: Ctrl-C is SIGINT to the group.
    process = subprocess.Popen(
        DEMO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 300
    try:
        for line in process.stdout:
            lines.append(line)
            if "is Publishing" in line or time.monotonic() > deadline:
                break
        assert any("is Publishing" in line for line in lines), "".join(lines[-80:])
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Closed here, not by the garbage collector in whatever test runs next.
        process.stdout.close()
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-4000:]
    assert "SIGINT: stopping the demo" in output
    assert output.rstrip().endswith("Stopped."), output[-2000:]
    assert _leftovers(output) == []
    _assert_no_secrets(output)
