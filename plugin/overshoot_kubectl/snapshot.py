"""`kubectl overshoot snapshot`: one JPEG of what an OvershootStream's room shows right now.

The steps, each under the one `--timeout` budget: read the OvershootStream (the user's own
RBAC); check it has a remote stream with frames (status.streamId, the Ready condition);
read the API key from the Secret it uses (`--api-key-secret`, else spec.apiKeySecretRef in
its namespace, else the operator's default Secret); ask Overshoot for a subscribe-only
viewer token for the stream, in its region; take the first decoded frame in the room;
encode it; write the file.

Role: the flow and the messages. Every failure becomes one line that names the object,
the field and the fix (errors.py). The API key and the viewer token are handed to the
redactor the moment they are known.

Boundary: no I/O of its own. The API server, Overshoot and LiveKit come in as the
`Cluster`, `ViewerTokens` and `FrameGrabber` protocols (cluster.py, the operator's
`OvershootClient`, room.py), so tests run the whole flow with fakes; writing the file is
the only direct effect.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from overshoot_kubectl.cluster import SecretData
from overshoot_kubectl.deadline import Deadline
from overshoot_kubectl.errors import (
    ApiKeyProblem,
    NoFrameDecoded,
    NoFrames,
    NotFound,
    NotReady,
    NoVideoTrack,
    OvershootProblem,
    Redactor,
    RoomProblem,
    WriteFailed,
)
from overshoot_kubectl.jpeg import RgbImage, encode_jpeg
from overshoot_kubectl.streams import NO_FRAMES_REASONS, ObservedStream
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator.settings import OperatorSettings

__all__ = [
    "Cluster",
    "FrameGrabber",
    "Snapshot",
    "SnapshotRequest",
    "ViewerTokens",
    "default_api_key_secret",
    "take_snapshot",
]

# A frame grabber bounds its own waits with the budget it is given and says which one ran
# out; the overall deadline only steps in if it does not.
GRAB_GRACE_SECONDS = 2.0


class Cluster(Protocol):
    async def get_stream(
        self, namespace: str, name: str, *, limit: float
    ) -> dict[str, Any] | None: ...

    async def read_secret(
        self, namespace: str, name: str, *, limit: float
    ) -> SecretData | None: ...


class ViewerTokens(Protocol):
    @property
    def base_url(self) -> str: ...

    async def viewer_token(
        self, api_key: SecretStr, stream_id: str, *, region: str | None = None
    ) -> ov.ViewerToken: ...


class FrameGrabber(Protocol):
    async def __call__(self, url: str, token: SecretStr, *, limit: float) -> RgbImage: ...


def default_api_key_secret() -> res.SecretKeySelector:
    """The Secret the operator uses for a resource without spec.apiKeySecretRef, as the
    operator's settings default it (the chart may move it: then pass --api-key-secret)."""
    fields = OperatorSettings.model_fields
    return res.SecretKeySelector(
        namespace=fields["default_api_key_secret_namespace"].default,
        name=fields["default_api_key_secret_name"].default,
        key=fields["default_api_key_secret_key"].default,
    )


@dataclass(frozen=True)
class SnapshotRequest:
    namespace: str
    name: str
    output: Path
    timeout: float
    # --api-key-secret: overrides whatever the resource uses.
    api_key_secret: res.SecretKeySelector | None = None


@dataclass(frozen=True)
class Snapshot:
    path: Path
    width: int
    height: int
    stream_id: str

    def summary(self) -> str:
        return f"Wrote {self.path} ({self.width}x{self.height}) from stream {self.stream_id}"


async def take_snapshot(
    request: SnapshotRequest,
    *,
    cluster: Cluster,
    overshoot: ViewerTokens,
    grab: FrameGrabber,
    redact: Redactor,
    encode: Callable[[RgbImage], bytes] = encode_jpeg,
    deadline: Deadline | None = None,
) -> Snapshot:
    deadline = deadline or Deadline(request.timeout)
    ns, name = request.namespace, request.name
    obj = await deadline.run(
        cluster.get_stream(ns, name, limit=deadline.remaining()),
        what=f"reading {res.KIND} {ns}/{name}",
    )
    if obj is None:
        raise NotFound(
            f"{res.KIND} {ns}/{name} not found; `kubectl overshoot get -n {ns}` lists the "
            "streams there"
        )
    stream = ObservedStream.from_object(obj)
    stream_id = viewable_stream_id(stream)

    selector, chosen_by = api_key_source(stream, request.api_key_secret)
    data = await deadline.run(
        cluster.read_secret(selector.namespace, selector.name, limit=deadline.remaining()),
        what=f"reading Secret {selector.namespace}/{selector.name}",
    )
    api_key = api_key_from(data, selector, chosen_by)
    redact.add(api_key.get_secret_value())

    try:
        view = await deadline.run(
            overshoot.viewer_token(api_key, stream_id, region=stream.region),
            what=f"asking Overshoot ({overshoot.base_url}) for a viewer token of stream {stream_id}",
        )
    except ov.OvershootError as err:
        raise _overshoot_problem(err, stream, stream_id, selector, overshoot.base_url) from None
    redact.add(view.token.get_secret_value())

    try:
        rgb = await deadline.run(
            grab(view.url, view.token, limit=deadline.remaining()),
            what=f"watching the room of stream {stream_id}",
            grace=GRAB_GRACE_SECONDS,
        )
    except NoVideoTrack as err:
        raise NoFrames(
            f"no video track appeared in the room of stream {stream_id} within "
            f"{err.waited:.0f} s: nothing publishes into {stream.ref} right now "
            f"(phase {stream.phase or 'unknown'}); {_media_fix(stream)}, or retry with a "
            "longer --timeout"
        ) from None
    except NoFrameDecoded as err:
        raise NoFrames(
            f"the room of stream {stream_id} ({stream.ref}) has a video track, but no frame "
            f"was decoded within {err.waited:.0f} s; retry with a longer --timeout"
        ) from None
    except RoomProblem as err:
        raise RoomProblem(f"{stream.ref}, stream {stream_id}: {err}") from None

    height, width = rgb.shape[:2]
    write_atomically(request.output, encode(rgb))
    return Snapshot(request.output, width, height, stream_id)


def viewable_stream_id(stream: ObservedStream) -> str:
    """The stream id to view, or the reason there is nothing to see (from status alone)."""
    ready = stream.ready
    said = f"phase {stream.phase or 'unknown'}"
    if ready is not None and ready.status != "True" and ready.reason:
        said += f", Ready reason {ready.reason}"
    if stream.stream_id is None:
        raise NotReady(
            f"{stream.ref} has no status.streamId ({said}): there is no remote stream to "
            f"look at; {_not_ready_fix(stream)}"
        )
    frameless = stream.phase == "Provisioning" or (
        ready is not None and ready.status != "True" and ready.reason in NO_FRAMES_REASONS
    )
    if frameless:
        detail = f": {ready.message}" if ready is not None and ready.message else ""
        raise NoFrames(f"{stream.ref} has no frames to show ({said}{detail}); {_media_fix(stream)}")
    return stream.stream_id


def _not_ready_fix(stream: ObservedStream) -> str:
    watch = f"`kubectl overshoot get -n {stream.namespace}`"
    if stream.phase == "Suspended":
        return "set spec.suspend to false to resume it"
    if stream.phase == "Failed":
        return f"`kubectl describe ovs -n {stream.namespace} {stream.name}` says why"
    if stream.phase == "Deleting":
        return "it is being deleted"
    return f"wait until it is Publishing ({watch})"


def _media_fix(stream: ObservedStream) -> str:
    if stream.server_pull:
        return "check that Overshoot can reach the camera (spec.source) and that it sends video"
    return (
        "check the publisher: `kubectl logs -n "
        f"{stream.namespace} {res.publisher_pod_name(stream.name)}`"
    )


def api_key_source(
    stream: ObservedStream, override: res.SecretKeySelector | None
) -> tuple[res.SecretKeySelector, str]:
    """The Secret key to read, and what chose it (for messages)."""
    default = default_api_key_secret()
    if override is not None:
        return override, "--api-key-secret"
    ref = stream.api_key_secret_ref
    if ref is not None:
        selector = res.SecretKeySelector(
            namespace=stream.namespace, name=ref.name, key=ref.key or default.key
        )
        return selector, f"spec.apiKeySecretRef of {stream.ref}"
    return default, f"the operator's default, as {stream.ref} has no spec.apiKeySecretRef"


def api_key_from(
    data: SecretData | None, selector: res.SecretKeySelector, chosen_by: str
) -> SecretStr:
    where = f"Secret {selector.namespace}/{selector.name} ({chosen_by})"
    fix = "pass --api-key-secret NAMESPACE/NAME[:KEY]"
    if data is None:
        raise ApiKeyProblem(
            f"{where} does not exist; create it with key {selector.key!r}, or {fix}"
        )
    if selector.key not in data:
        present = ", ".join(sorted(data)) or "none"
        raise ApiKeyProblem(
            f"{where} has no key {selector.key!r} (keys present: {present}); add it, or {fix}"
        )
    try:
        value = data[selector.key].decode("utf-8").strip()
    except UnicodeDecodeError:
        value = ""
    if not value:
        raise ApiKeyProblem(
            f"{where} key {selector.key!r} is empty or not text; put the API key in it, or {fix}"
        )
    return SecretStr(value)


def _overshoot_problem(
    err: ov.OvershootError,
    stream: ObservedStream,
    stream_id: str,
    selector: res.SecretKeySelector,
    base_url: str,
) -> OvershootProblem:
    code = f"{err.status_code}" if err.status_code is not None else "no answer"
    if isinstance(err, ov.NotFound):
        return OvershootProblem(
            f"Overshoot has no stream {stream_id} ({code}: it ended, expired or was deleted) "
            f"for {stream.ref}; the operator replaces an ended stream: retry when "
            f"status.streamId has changed (`kubectl overshoot get -n {stream.namespace}`)"
        )
    if isinstance(err, ov.Unauthorized):
        return OvershootProblem(
            f"Overshoot refused the API key in Secret {selector.namespace}/{selector.name} "
            f"key {selector.key!r} ({code}: missing, invalid or not assigned); put a valid "
            "key there, or pass --api-key-secret NAMESPACE/NAME[:KEY]"
        )
    if isinstance(err, ov.OvershootUnavailable):
        return OvershootProblem(
            f"Overshoot at {base_url} is unavailable ({err.message}); retry later, or check "
            "--api-url / OVERSHOOT_API_URL"
        )
    return OvershootProblem(
        f"Overshoot refused a viewer token for stream {stream_id} of {stream.ref}: {err.message}"
    )


def write_atomically(path: Path, content: bytes) -> None:
    """`content` at `path`, never a half-written file (a new file, then a rename)."""
    directory = path.parent
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as err:
        raise WriteFailed(f"could not write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        # mkstemp makes it 0600; a picture is as readable as any file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise WriteFailed(f"could not write {path}: {err.strerror or err}") from None
