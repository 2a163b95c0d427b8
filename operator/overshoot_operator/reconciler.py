"""The stream lifecycle: provision, keep alive, refresh, recreate, release, finalize.

Role: the orchestration between the pure parts (decisions, schedule, manifests) and the
two remote boundaries (overshoot.py, kube.py). kopf handlers call `reconcile()` and
`finalize()`; the due-queues call `_keepalive_due()` and `_poll_due()`.

State: for each stream with a live lease the process keeps one `Tracked` entry (stream id,
API key, expiry, last conditions). It is rebuilt from status on start (`reconcile` with
`resumed=True`) without calling Overshoot when the stored lease is comfortably alive, so a
restart neither recreates streams nor restarts publishers (invariant 3). A per-resource
lock serialises handlers, keepalives and polls of the same resource.

Status writes: handlers return the status patch to kopf (`patch.status`); background jobs
write it directly through kube.py. The stream id is written directly right after create,
before anything else (invariant 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import SecretStr, ValidationError

from overshoot_operator import decisions as dec
from overshoot_operator import manifests, metrics
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator import schedule as sch
from overshoot_operator.kube import ConflictError, Kube, KubeError, SecretProblem
from overshoot_operator.limiter import CallLimiter, Priority
from overshoot_operator.settings import OperatorSettings
from overshoot_operator.writeback import WriteBack

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)

GAUGE_INTERVAL_SECONDS = 10.0
# Background writers of tokens and of status; each holds at most one Kubernetes call, so
# together they never take more than this many of kube.py's threads.
WRITERS = 8
# A token write that failed is tried again after this long (or with the next keepalive).
TOKEN_RETRY_SECONDS = 5.0
# How long a successful API-key read is reused. Hundreds of resources usually share one
# key Secret, and a burst of creates read it once each (one GET per create); a few
# seconds is far below every retry delay, so a fixed or rotated key is still seen at the
# next attempt, and a 401 or a refresh always reads afresh.
API_KEY_CACHE_SECONDS = 5.0
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Tracked:
    """What the process holds for one resource with a live remote stream."""

    namespace: str
    name: str
    uid: str
    stream_id: str
    api_key: SecretStr
    api_key_ref: str
    api_key_selector: res.SecretKeySelector
    interval: float
    on_remote_end: str
    expires_at_ms: int
    generation: int | None
    recreations: int
    conditions: list[res.Condition] = field(default_factory=list)
    last_frame_at_ms: int | None = None
    ever_had_frames: bool = False
    problem: dec.Problem | None = None
    pod_ready: bool | None = None
    polls_without_frames: int = 0
    keepalive_due_wall: float | None = None
    phase: res.Phase | None = None
    last_stream_state: ov.StreamState | None = None
    last_keepalive: datetime | None = None
    # Whether the owned Secret holds this stream's id and a token.
    secret_written: bool = True
    # A keepalive's fresh token not yet in the Secret (the token writer's next job).
    pending_publish: ov.PublishInfo | None = None
    # A digest of the status last sent for this resource, to skip identical writes (the
    # digest, not the dict: kept for every stream, the dict was a few KiB each).
    last_written: int | None = None

    @property
    def owner(self) -> str:
        return f"{res.KIND} {self.namespace}/{self.name}"

    def ref(self) -> dict[str, Any]:
        """Enough of the object for Events and ownerReferences."""
        return {
            "apiVersion": res.API_VERSION,
            "kind": res.KIND,
            "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
        }


@dataclass(frozen=True)
class Outcome:
    """What a handler hands back to kopf: a status patch, and when to run again."""

    status: dict[str, Any]
    retry_in: float | None = None


class Reconciler:
    def __init__(
        self,
        settings: OperatorSettings,
        client: ov.OvershootClient,
        kube: Kube,
        *,
        clock: Clock = _utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.kube = kube
        self.limiter = CallLimiter(settings.api_max_concurrency, settings.api_max_per_second)
        self.clock = clock
        self.rng = rng or random.Random()
        self.defaults = res.SpecDefaults(
            api_key_secret=res.SecretKeySelector(
                namespace=settings.default_api_key_secret_namespace,
                name=settings.default_api_key_secret_name,
                key=settings.default_api_key_secret_key,
            ),
            keepalive_interval_seconds=settings.keepalive_interval_seconds,
            publisher_image=settings.publisher_image,
            publisher_resources=res.ResourceRequirements(
                requests={
                    "cpu": settings.publisher_cpu_request,
                    "memory": settings.publisher_memory_request,
                },
                limits={
                    "cpu": settings.publisher_cpu_limit,
                    "memory": settings.publisher_memory_limit,
                },
            ),
        )
        self.tracked: dict[Key, Tracked] = {}
        # API-key reads by Secret and key, in flight or done, with when each started.
        self._api_keys: dict[tuple[str, str, str], tuple[asyncio.Future[str], datetime]] = {}
        self._budget_warned = False
        self._locks: dict[Key, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._gauges: asyncio.Task[None] | None = None
        self.keepalives: sch.DueQueue[Key] = sch.DueQueue(self._keepalive_due, name="keepalive")
        self.polls: sch.DueQueue[Key] = sch.DueQueue(self._poll_due, name="status-poll")
        # Keepalives and polls never wait for a Kubernetes write: they mark the key and
        # these write the newest state soon after (coalesced under load).
        self.token_writes: WriteBack[Key] = WriteBack(
            self._flush_token, workers=WRITERS, name="token-writes"
        )
        self.status_writes: WriteBack[Key] = WriteBack(
            self._flush_status, workers=WRITERS, name="status-writes"
        )

    # ---- lifecycle of the process ------------------------------------------------------

    def start(self) -> None:
        self.keepalives.start()
        self.polls.start()
        self.token_writes.start()
        self.status_writes.start()
        self._gauges = asyncio.create_task(self._gauge_loop(), name="gauges")

    async def stop(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges
        await self.keepalives.stop()
        await self.polls.stop()
        await self.token_writes.stop()
        await self.status_writes.stop()

    async def _gauge_loop(self) -> None:
        # The gauges walk every tracked stream: on a timer, not per keepalive, which made
        # each keepalive O(streams) (quadratic CPU at thousands of streams).
        while True:
            self._refresh_gauges()
            await asyncio.sleep(GAUGE_INTERVAL_SECONDS)

    def _event(self, type_: str, obj: Mapping[str, Any], *, reason: str, message: str) -> None:
        """Post a Kubernetes Event in the background: a failed Event never fails a step."""
        task = asyncio.create_task(
            self.kube.post_event(
                obj,
                type_=type_,
                reason=reason,
                message=message,
                now=dec.rfc3339(self.clock()) or "",
            )
        )
        self._background.add(task)
        task.add_done_callback(self._event_done)

    def _event_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("Posting an Event failed: %s", task.exception())

    def _lock(self, key: Key) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _untrack(self, key: Key) -> Tracked | None:
        self.keepalives.cancel(key)
        self.polls.cancel(key)
        self.token_writes.discard(key)
        self.status_writes.discard(key)
        return self.tracked.pop(key, None)

    def _refresh_gauges(self) -> None:
        counts: dict[str, int] = dict.fromkeys(res.PHASES, 0)
        soonest: float | None = None
        keepalives_per_second = 0.0
        now_ms = time.time() * 1000
        for t in self.tracked.values():
            if t.phase:
                counts[t.phase] += 1
            left = (t.expires_at_ms - now_ms) / 1000
            soonest = left if soonest is None else min(soonest, left)
            keepalives_per_second += 1.0 / t.interval
        for phase, n in counts.items():
            metrics.STREAMS_BY_PHASE.labels(phase).set(n)
        if soonest is not None:
            metrics.SECONDS_TO_EXPIRY.set(soonest)
        self._check_budget(keepalives_per_second)

    def _check_budget(self, keepalives_per_second: float) -> None:
        """Say so, once, when keepalives alone near the per-second call limit: above it,
        leases are lost however the calls are ordered."""
        crowded = keepalives_per_second > 0.8 * self.settings.api_max_per_second
        if crowded and not self._budget_warned:
            logger.warning(
                "Keepalives need %.0f calls/s, over 80%% of OVERSHOOT_API_MAX_PER_SECOND "
                "(%g): creates and status polls will wait and leases are at risk; raise the "
                "limit or lengthen keepaliveIntervalSeconds",
                keepalives_per_second,
                self.settings.api_max_per_second,
            )
        self._budget_warned = crowded

    # ---- Overshoot calls, through the limiter and the metrics ---------------------------

    async def _api(
        self,
        priority: Priority,
        endpoint: str,
        call: Any,
        *,
        on_start: Callable[[], None] | None = None,
    ) -> Any:
        async with self.limiter.slot(priority):
            if on_start is not None:
                on_start()
            try:
                result = await call
            except ov.OvershootError as err:
                outcome = str(err.status_code) if err.status_code else type(err).__name__
                metrics.API_CALLS.labels(endpoint, outcome).inc()
                raise
            metrics.API_CALLS.labels(endpoint, "ok").inc()
            return result

    # ---- reconcile: level-based, idempotent --------------------------------------------

    async def reconcile(
        self, body: Mapping[str, Any], *, resumed: bool = False, refresh: bool = False
    ) -> Outcome:
        meta = body["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        async with self._lock(key):
            return await self._reconcile_locked(body, key, resumed=resumed, refresh=refresh)

    async def _reconcile_locked(
        self, body: Mapping[str, Any], key: Key, *, resumed: bool, refresh: bool
    ) -> Outcome:
        namespace, name = key
        meta = body["metadata"]
        owner = f"{res.KIND} {namespace}/{name}"
        generation = meta.get("generation")
        status = res.parse_status(body.get("status"))
        tracked = self.tracked.get(key)
        conditions = tracked.conditions if tracked else list(status.conditions)
        now = self.clock()

        try:
            spec = res.effective_spec(
                res.parse_spec(body.get("spec") or {}), self.defaults, namespace=namespace
            )
        except ValidationError as err:
            # The CRD refuses what it can at admission; this catches the rest.
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = f"{owner}: spec.{where}: {first['msg']}; fix the spec"
            return self._static_status(conditions, generation, now, failed=("InvalidSpec", message))

        if spec.suspend:
            await self._release(key, body, status, spec, why="suspended")
            phase, conditions = dec.summarize(
                self._facts_none(generation, suspended=True),
                conditions,
                now=now,
                fresh_seconds=self.settings.frames_fresh_seconds,
            )
            patch = self._base_status(phase, conditions, generation)
            patch.update({"streamId": None, "expiresAt": None, "publisherPod": None})
            patch.update({"secretName": None, "stream": None})
            return Outcome(patch)

        api_key_ref = (
            f"Secret {spec.api_key_secret.namespace}/{spec.api_key_secret.name} "
            f"key {spec.api_key_secret.key!r}"
        )
        field_name = (
            "spec.apiKeySecretRef"
            if body["spec"].get("apiKeySecretRef")
            else ("the operator's default API key Secret")
        )
        try:
            api_key = await self._read_api_key(
                spec.api_key_secret, field=field_name, owner=owner, fresh=refresh
            )
            creds = spec.source.credentials_secret_ref
            if creds is not None:
                await self.kube.check_secret_keys(
                    namespace,
                    creds.name,
                    [creds.username_key, creds.password_key],
                    field=f"spec.source.{spec.source.kind}.credentialsSecretRef",
                    owner=owner,
                )
        except (SecretProblem, KubeError) as err:
            problem = dec.problem_from_error(err, owner=owner, api_key_ref=api_key_ref)
            if tracked is not None:
                tracked.problem = problem
            return self._problem_status(conditions, generation, now, problem, tracked)

        try:
            tracked = await self._ensure_stream(
                key, body, status, spec, api_key, api_key_ref, resumed=resumed, refresh=refresh
            )
        except _RemoteFailed as failed:
            return self._static_status(
                conditions,
                generation,
                now,
                failed=(failed.reason, failed.message),
            )
        except (ov.OvershootError, KubeError) as err:
            problem = dec.problem_from_error(err, owner=owner, api_key_ref=api_key_ref)
            if not problem.user_fixable:
                self._event("Warning", dict(body), reason=problem.reason, message=problem.message)
            return self._problem_status(conditions, generation, now, problem, tracked)

        tracked.generation = generation
        tracked.interval = spec.keepalive_interval_seconds
        tracked.on_remote_end = spec.on_remote_end
        retry_in: float | None = None
        try:
            retry_in = await self._ensure_publisher(body, spec, tracked)
        except manifests.ManifestError as err:
            tracked.problem = dec.Problem("InvalidSpec", str(err), True, dec.USER_FIX_RETRY_SECONDS)
        except KubeError as err:
            tracked.problem = dec.problem_from_error(err, owner=owner, api_key_ref=api_key_ref)
            retry_in = tracked.problem.retry_in
        if refresh:
            await self._poll_now(tracked)
        patch = self._tracked_status(tracked)
        tracked.last_written = _digest(patch)
        return Outcome(patch, retry_in)

    # ---- the remote stream ---------------------------------------------------------------

    async def _ensure_stream(
        self,
        key: Key,
        body: Mapping[str, Any],
        status: res.OvershootStreamStatus,
        spec: res.EffectiveSpec,
        api_key: SecretStr,
        api_key_ref: str,
        *,
        resumed: bool,
        refresh: bool,
    ) -> Tracked:
        namespace, name = key
        meta = body["metadata"]
        tracked = self.tracked.get(key)
        if tracked is not None:
            tracked.api_key = api_key  # a rotated key takes effect on the next call
            tracked.api_key_ref = api_key_ref
            tracked.problem = None
            if refresh or not tracked.secret_written:
                # A keepalive brings a fresh token, and with it the Secret write that failed.
                await self._keepalive_locked(tracked)
            return tracked

        annotations = meta.get("annotations") or {}
        recorded = res.parse_stream_id(status.stream_id)
        adopted = res.parse_stream_id(annotations.get(res.STREAM_ID_ANNOTATION))
        stream_id = recorded or adopted
        recreations = status.recreations
        publish: ov.PublishInfo | None = None
        expires_at_ms: int | None = None
        secret_name = res.publish_secret_name(name)

        secret_exists = False
        if stream_id is not None:
            secret = await self.kube.read_publish_secret(namespace, secret_name)
            secret_exists = secret is not None
            secret_ok = bool(secret) and (secret or {}).get("streamId") == stream_id
            stored_expiry = status.expires_at
            left = (stored_expiry - self.clock()).total_seconds() if stored_expiry else None
            if (
                resumed
                and not refresh
                and secret_ok
                and left is not None
                and left > sch.SAFETY_MARGIN_SECONDS
            ):
                # Invariant 3: the stored lease is alive; resume its schedule, call nothing.
                assert stored_expiry is not None
                expires_at_ms = int(stored_expiry.timestamp() * 1000)
            else:
                try:
                    result = await self._api(
                        Priority.KEEPALIVE,
                        "keepalive",
                        self.client.keepalive(api_key, stream_id),
                    )
                    expires_at_ms = result.expires_at_ms
                    publish = result.publish
                    if publish is None and not secret_ok:
                        # Guess: keepalive always returns `publish`; without it and without
                        # a Secret we have no token for this stream, so start over.
                        stream_id = None
                except ov.NotFound:
                    end_reason = await self._end_reason(api_key, recorded or adopted or "")
                    if recorded is not None and spec.on_remote_end == "Fail":
                        raise _RemoteFailed(
                            "RemoteStreamEnded",
                            f"{res.KIND} {namespace}/{name}: remote stream {stream_id} ended "
                            f"({end_reason}) and spec.onRemoteEnd is Fail; set it to Recreate "
                            "or recreate the resource",
                        ) from None
                    if recorded is not None:
                        recreations += 1
                        metrics.RECREATIONS.labels(end_reason).inc()
                        self._event(
                            "Normal",
                            dict(body),
                            reason="StreamEnded",
                            message=f"Remote stream {stream_id} ended ({end_reason}); "
                            "creating a new one",
                        )
                    else:
                        self._event(
                            "Warning",
                            dict(body),
                            reason="AdoptionFailed",
                            message=f"Stream {stream_id} from annotation "
                            f"{res.STREAM_ID_ANNOTATION} is not active; creating a new one",
                        )
                    stream_id = None

        if stream_id is None:
            if annotations.get(res.CREATING_ANNOTATION) and recorded is None:
                # A create was started and its id never written: the process died in
                # between. That stream is unknown to us and expires with its lease.
                self._event(
                    "Warning",
                    dict(body),
                    reason="StreamPossiblyLeaked",
                    message="A previous create may have made a remote stream whose id was "
                    "never recorded (operator stopped mid-create); it is not renewed and "
                    "expires within 300s",
                )
            # Marked first, so a crash between create and the record is detectable.
            await self.kube.patch_stream_annotations(
                namespace, name, {res.CREATING_ANNOTATION: dec.rfc3339(self.clock()) or "1"}
            )
            created = await self._api(Priority.CREATE, "create", self.client.create_stream(api_key))
            stream_id = created.id
            publish = created.publish
            expires_at_ms = created.expires_at_ms
            await self._record_stream_id(namespace, name, stream_id, recreations)
            self._event(
                "Normal",
                dict(body),
                reason="StreamCreated",
                message=f"Created remote stream {stream_id}",
            )
            logger.info("Created stream %s for %s %s/%s", stream_id, res.KIND, namespace, name)

        assert expires_at_ms is not None
        tracked = Tracked(
            namespace=namespace,
            name=name,
            uid=meta.get("uid", ""),
            stream_id=stream_id,
            api_key=api_key,
            api_key_ref=api_key_ref,
            api_key_selector=spec.api_key_secret,
            interval=spec.keepalive_interval_seconds,
            on_remote_end=spec.on_remote_end,
            expires_at_ms=expires_at_ms,
            generation=meta.get("generation"),
            recreations=recreations,
            conditions=list(status.conditions),
            last_frame_at_ms=(
                int(status.stream.last_frame_at.timestamp() * 1000)
                if status.stream and status.stream.last_frame_at
                else None
            ),
            ever_had_frames=bool(status.stream and status.stream.last_frame_index is not None),
        )
        # Tracked before the Secret is written: if that write fails, the stream is still kept
        # alive and the next pass must not trust kopf's body, which may predate the recorded
        # id (a stale body would otherwise lead to a second create and a leaked lease).
        tracked.secret_written = publish is None
        self.tracked[key] = tracked
        self._schedule_keepalive(tracked, after_success=True)
        self.polls.schedule(key, 0 if not resumed else self.rng.uniform(0, 10))
        if publish is not None:
            await self._write_publish_secret(tracked, publish, exists=secret_exists)
            tracked.secret_written = True
        return tracked

    async def _record_stream_id(
        self, namespace: str, name: str, stream_id: str, recreations: int
    ) -> None:
        """Invariant 2: write the new id down before anything else can fail."""
        await self.kube.patch_stream_annotations(
            namespace, name, {res.STREAM_ID_ANNOTATION: stream_id, res.CREATING_ANNOTATION: None}
        )
        await self.kube.patch_stream_status(
            namespace,
            name,
            {
                "streamId": stream_id,
                "secretName": res.publish_secret_name(name),
                "recreations": recreations,
            },
        )

    async def _end_reason(self, api_key: SecretStr, stream_id: str) -> str:
        """Why a stream ended, if its tombstone is still readable."""
        try:
            state = await self._api(Priority.GET, "get", self.client.get_stream(api_key, stream_id))
        except ov.OvershootError:
            return "unknown"
        return state.end_reason or ("unknown" if state.ended else "active")

    async def _write_publish_secret(
        self,
        tracked: Tracked,
        publish: ov.PublishInfo,
        *,
        exists: bool = False,
        urgent: bool = False,
    ) -> None:
        manifest = manifests.build_publish_secret(
            tracked.ref(),
            url=publish.url,
            token=publish.token.get_secret_value(),
            stream_id=tracked.stream_id,
        )
        await self.kube.apply_secret(manifest, exists=exists, urgent=urgent)

    def _schedule_keepalive(self, tracked: Tracked, *, after_success: bool) -> None:
        left = tracked.expires_at_ms / 1000.0 - time.time()
        if after_success:
            delay = sch.next_keepalive_delay(
                seconds_to_expiry=left,
                interval=tracked.interval,
                jitter=self.settings.keepalive_jitter,
                rng=self.rng,
            )
        else:
            retry_after = getattr(tracked.problem, "retry_in", None)
            delay = sch.retry_keepalive_delay(
                seconds_to_expiry=left,
                interval=tracked.interval,
                retry_after=retry_after,
                rng=self.rng,
            )
        tracked.keepalive_due_wall = time.time() + delay
        self.keepalives.schedule((tracked.namespace, tracked.name), delay)

    # ---- the publisher ---------------------------------------------------------------------

    async def _ensure_publisher(
        self, body: Mapping[str, Any], spec: res.EffectiveSpec, tracked: Tracked
    ) -> float | None:
        """Create the Pod if missing, replace it if its config changed or it is lost.

        Returns seconds until another pass is needed (a replaced Pod must finish
        terminating before its successor, with the same name, can be created).
        """
        desired = manifests.build_publisher_pod(body, spec, self.settings)
        pod_name = desired["metadata"]["name"]
        # A resource that never had a Pod tries the create first: one request instead of
        # a GET that answers 404 and then the create (a burst of new resources is bounded
        # by the API server). A Pod that exists after all answers 409 and is read.
        expect_pod = tracked.pod_ready is not None or (body.get("status") or {}).get("publisherPod")
        pod = await self.kube.get_pod(tracked.namespace, pod_name) if expect_pod else None
        if pod is None:
            try:
                await self.kube.create_pod(desired)
            except ConflictError:
                pod = await self.kube.get_pod(tracked.namespace, pod_name)
                if pod is None:
                    return 2.0  # deleted in between: create on the next pass
            else:
                logger.info("Created Pod %s/%s", tracked.namespace, pod_name)
                tracked.pod_ready = False
                return None
        if pod["metadata"].get("deletionTimestamp"):
            return 2.0
        if manifests.pod_needs_replacement(pod, desired) or dec.pod_is_lost(pod, node_exists=None):
            await self.kube.delete_pod(tracked.namespace, pod_name, uid=pod["metadata"]["uid"])
            logger.info("Deleted Pod %s/%s to replace it", tracked.namespace, pod_name)
            return 2.0
        tracked.pod_ready = _pod_ready(pod)
        return None

    async def on_pod_change(self, namespace: str, owner_name: str) -> None:
        """A publisher Pod was deleted or failed: bring it back (a bare Pod is not
        rescheduled by anyone else)."""
        body = await self.kube.get_stream_resource(namespace, owner_name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        outcome = await self.reconcile(body)
        await self.kube.patch_stream_status(namespace, owner_name, outcome.status)

    # ---- release (suspend) and finalize (delete) ----------------------------------------

    async def _release(
        self,
        key: Key,
        body: Mapping[str, Any],
        status: res.OvershootStreamStatus,
        spec: res.EffectiveSpec,
        *,
        why: str,
    ) -> None:
        """Stop keepalives at once, delete the remote stream, remove Pod and Secret."""
        tracked = self._untrack(key)
        namespace, name = key
        stream_id = tracked.stream_id if tracked else res.parse_stream_id(status.stream_id)
        if stream_id is not None:
            api_key = tracked.api_key if tracked else None
            if api_key is None:
                try:
                    api_key = await self._read_api_key(
                        spec.api_key_secret, owner=f"{res.KIND} {namespace}/{name}"
                    )
                except KubeError:
                    api_key = None
            if api_key is not None:
                try:
                    await self._api(
                        Priority.DELETE, "delete", self.client.delete_stream(api_key, stream_id)
                    )
                except ov.OvershootError as err:
                    # Keepalives already stopped: the lease ends the stream within 300 s.
                    self._event(
                        "Warning",
                        dict(body),
                        reason="DeleteFailed",
                        message=f"Could not delete remote stream {stream_id} ({err.message}); "
                        "its lease ends it within 300s",
                    )
            await self.kube.patch_stream_annotations(
                namespace, name, {res.STREAM_ID_ANNOTATION: None}
            )
            self._event(
                "Normal",
                dict(body),
                reason="StreamReleased",
                message=f"Released stream {stream_id} ({why})",
            )
        await self.kube.delete_pod(namespace, res.publisher_pod_name(name))
        await self.kube.delete_secret(namespace, res.publish_secret_name(name))

    async def finalize(self, body: Mapping[str, Any], *, started: datetime) -> None:
        """Deletion: stop keepalives, DELETE the remote stream, never hang (invariant 1).

        Raises kopf.TemporaryError to retry while the API is unreachable, until
        `delete_give_up_seconds` have passed since deletion began; then lets go, because
        the stopped keepalives let the lease end the stream within 300 s anyway.
        """
        meta = body["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        owner = f"{res.KIND} {key[0]}/{key[1]}"
        async with self._lock(key):
            tracked = self._untrack(key)
            status = res.parse_status(body.get("status"))
            stream_id = tracked.stream_id if tracked else res.parse_stream_id(status.stream_id)
            if stream_id is None:
                stream_id = res.parse_stream_id(
                    (meta.get("annotations") or {}).get(res.STREAM_ID_ANNOTATION)
                )
            if stream_id is None:
                return
            api_key = tracked.api_key if tracked else None
            if api_key is None:
                try:
                    spec = res.effective_spec(
                        res.parse_spec(body.get("spec") or {}), self.defaults, namespace=key[0]
                    )
                    api_key = await self._read_api_key(spec.api_key_secret, owner=owner)
                except (ValidationError, KubeError) as err:
                    self._event(
                        "Warning",
                        dict(body),
                        reason="DeleteSkipped",
                        message=f"No API key to delete stream {stream_id} ({err}); "
                        "its lease ends it within 300s",
                    )
                    return
            try:
                deleted = await self._api(
                    Priority.DELETE, "delete", self.client.delete_stream(api_key, stream_id)
                )
            except ov.OvershootError as err:
                waited = (self.clock() - started).total_seconds()
                if err.retryable and waited < self.settings.delete_give_up_seconds:
                    delay = sch.backoff_delay(
                        max(1, int(waited // 5) + 1),
                        cap=15.0,
                        retry_after=getattr(err, "retry_after", None),
                        rng=self.rng,
                    )
                    raise kopf.TemporaryError(
                        f"Deleting stream {stream_id} failed: {err.message}", delay=delay
                    ) from None
                self._event(
                    "Warning",
                    dict(body),
                    reason="DeleteAbandoned",
                    message=f"Gave up deleting stream {stream_id} after {waited:.0f}s "
                    f"({err.message}); keepalives stopped, so its lease ends it within 300s",
                )
                return
            verb = "Deleted" if deleted else "Stream already gone:"
            logger.info("%s remote stream %s of %s", verb, stream_id, owner)

    # ---- background jobs: keepalive and status poll ------------------------------------

    async def _keepalive_due(self, key: Key) -> None:
        async with self._lock(key):
            tracked = self.tracked.get(key)
            if tracked is None:
                return
            await self._keepalive_locked(
                tracked, due_wall=tracked.keepalive_due_wall, write_now=False
            )
        if key in self.tracked:
            self.status_writes.mark(key)

    async def _keepalive_locked(
        self, tracked: Tracked, *, due_wall: float | None = None, write_now: bool = True
    ) -> None:
        """Renew the lease; the fresh token goes into the Secret now (`write_now`, inside a
        reconcile that reports the result) or through the token writer (timer keepalives,
        which must not wait for Kubernetes)."""

        def started() -> None:
            # Lateness counts until the call starts, so the wait for a limiter slot is in
            # it: that queue is where a lease is lost under load.
            if due_wall is not None:
                metrics.KEEPALIVE_LATENESS.observe(max(0.0, time.time() - due_wall))

        try:
            result = await self._api(
                Priority.KEEPALIVE,
                "keepalive",
                self.client.keepalive(tracked.api_key, tracked.stream_id),
                on_start=started,
            )
        except ov.NotFound:
            metrics.KEEPALIVES.labels("ended").inc()
            await self._remote_ended(tracked)
            return
        except ov.OvershootError as err:
            metrics.KEEPALIVES.labels("error").inc()
            tracked.problem = dec.problem_from_error(
                err, owner=tracked.owner, api_key_ref=tracked.api_key_ref
            )
            if isinstance(err, ov.Unauthorized):
                await self._reread_api_key(tracked)
            self._schedule_keepalive(tracked, after_success=False)
            return
        metrics.KEEPALIVES.labels("ok").inc()
        tracked.problem = None
        tracked.last_keepalive = self.clock()
        tracked.expires_at_ms = result.expires_at_ms
        if result.publish is not None:
            tracked.pending_publish = result.publish
            if write_now:
                await self._write_pending_token(tracked)
            else:
                self.token_writes.mark((tracked.namespace, tracked.name))
        self._schedule_keepalive(tracked, after_success=True)

    async def _flush_token(self, key: Key) -> None:
        async with self._lock(key):
            tracked = self.tracked.get(key)
            if tracked is None or tracked.pending_publish is None:
                return
            ok = await self._write_pending_token(tracked)
        if not ok:
            asyncio.get_running_loop().call_later(TOKEN_RETRY_SECONDS, self.token_writes.mark, key)
        self.status_writes.mark(key)  # the problem appeared or cleared

    async def _write_pending_token(self, tracked: Tracked) -> bool:
        """Write the newest token into the Secret (under the resource's lock, so a
        recreation's Secret can never be overwritten by an older stream's token)."""
        publish = tracked.pending_publish
        if publish is None:
            return True
        try:
            await self._write_publish_secret(
                tracked, publish, exists=tracked.secret_written, urgent=True
            )
        except KubeError as err:
            tracked.problem = dec.problem_from_error(
                err, owner=tracked.owner, api_key_ref=tracked.api_key_ref
            )
            return False
        tracked.secret_written = True
        if tracked.problem is not None and tracked.problem.reason == dec.KUBERNETES_ERROR:
            tracked.problem = None
        if tracked.pending_publish is publish:
            tracked.pending_publish = None
        return True

    async def _flush_status(self, key: Key) -> None:
        # Under the lock: a suspend or delete that untracks the resource must not be
        # followed by this stream's stale status.
        async with self._lock(key):
            tracked = self.tracked.get(key)
            if tracked is not None:
                await self._write_status(tracked)

    async def _reread_api_key(self, tracked: Tracked) -> None:
        with contextlib.suppress(KubeError):
            tracked.api_key = await self._read_api_key(
                tracked.api_key_selector, owner=tracked.owner, fresh=True
            )

    async def _read_api_key(
        self,
        selector: res.SecretKeySelector,
        *,
        owner: str,
        field: str = "spec.apiKeySecretRef",
        fresh: bool = False,
    ) -> SecretStr:
        """The API key a resource uses; `field` and `owner` shape the error message.

        A read younger than API_KEY_CACHE_SECONDS is reused unless `fresh`; failures are
        never cached, so a fixed Secret is seen at the next attempt.
        """
        where = (selector.namespace, selector.name, selector.key)
        now = self.clock()
        entry = self._api_keys.get(where)
        if entry is not None and not fresh:
            shared, started = entry
            if not shared.done() or (now - started).total_seconds() < API_KEY_CACHE_SECONDS:
                # A burst of new resources shares one read. If it failed, read again, so
                # the error names this resource.
                with contextlib.suppress(KubeError):
                    return SecretStr(await asyncio.shield(shared))
        read = asyncio.ensure_future(
            self.kube.read_secret_value(
                selector.namespace, selector.name, selector.key, field=field, owner=owner
            )
        )
        # Retrieved even if this caller is cancelled and nobody else joined.
        read.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._api_keys[where] = (read, now)
        try:
            return SecretStr(await asyncio.shield(read))
        except KubeError:
            if self._api_keys.get(where, (None, now))[0] is read:
                del self._api_keys[where]  # failures are never reused
            raise

    async def _remote_ended(self, tracked: Tracked) -> None:
        """Invariant 6: a stream that ended on its own is recreated (or Failed)."""
        key = (tracked.namespace, tracked.name)
        end_reason = await self._end_reason(tracked.api_key, tracked.stream_id)
        old = tracked.stream_id
        if tracked.on_remote_end == "Fail":
            self._untrack(key)
            message = (
                f"{tracked.owner}: remote stream {old} ended ({end_reason}) and "
                "spec.onRemoteEnd is Fail; set it to Recreate or recreate the resource"
            )
            self._event("Warning", tracked.ref(), reason="RemoteStreamEnded", message=message)
            await self.kube.delete_pod(tracked.namespace, res.publisher_pod_name(tracked.name))
            phase, conditions = dec.summarize(
                self._facts_none(tracked.generation, failed=("RemoteStreamEnded", message)),
                tracked.conditions,
                now=self.clock(),
                fresh_seconds=self.settings.frames_fresh_seconds,
            )
            patch = self._base_status(phase, conditions, tracked.generation)
            patch["stream"] = {"endReason": end_reason}
            await self.kube.patch_stream_status(tracked.namespace, tracked.name, patch)
            return
        try:
            created = await self._api(
                Priority.CREATE, "create", self.client.create_stream(tracked.api_key)
            )
        except ov.OvershootError as err:
            tracked.problem = dec.problem_from_error(
                err, owner=tracked.owner, api_key_ref=tracked.api_key_ref
            )
            # The old id stays recorded; the next attempt sees 404 again and retries create.
            self._schedule_keepalive(tracked, after_success=False)
            return
        tracked.recreations += 1
        tracked.stream_id = created.id
        tracked.expires_at_ms = created.expires_at_ms
        tracked.last_frame_at_ms = None
        tracked.ever_had_frames = False
        tracked.polls_without_frames = 0
        tracked.problem = None
        await self._record_stream_id(
            tracked.namespace, tracked.name, created.id, tracked.recreations
        )
        metrics.RECREATIONS.labels(end_reason).inc()
        await self._write_publish_secret(tracked, created.publish, exists=True)
        tracked.pending_publish = None  # the old stream's token must never follow
        self._event(
            "Normal",
            tracked.ref(),
            reason="StreamRecreated",
            message=f"Remote stream {old} ended ({end_reason}); created {created.id} and "
            "moved the publisher to it",
        )
        logger.info(
            "Recreated stream %s (was %s, %s) for %s", created.id, old, end_reason, tracked.owner
        )
        self._schedule_keepalive(tracked, after_success=True)
        self.polls.schedule(key, 1.0)

    async def _poll_due(self, key: Key) -> None:
        tracked = self.tracked.get(key)
        if tracked is None:
            return
        # The GET runs outside the resource's lock: polls are the limiter's last priority
        # and may wait long for a slot, and a lock held meanwhile stalled that resource's
        # keepalive and writes (bench/operator_scale.py: p99 lateness 57 s at 5,000).
        stream_id = tracked.stream_id
        fetched = await self._fetch_state(tracked)
        async with self._lock(key):
            if self.tracked.get(key) is not tracked or tracked.stream_id != stream_id:
                return  # released or recreated meanwhile: that path scheduled its own poll
            await self._apply_state(tracked, fetched)
        if key in self.tracked:
            self.status_writes.mark(key)

    async def _poll_now(self, tracked: Tracked) -> None:
        """GET the stream and take in what it says (the caller holds the lock)."""
        await self._apply_state(tracked, await self._fetch_state(tracked))

    async def _fetch_state(self, tracked: Tracked) -> ov.StreamState | ov.OvershootError:
        """The stream's state, or the error that stood in for it (NotFound included)."""
        try:
            state: ov.StreamState = await self._api(
                Priority.POLL, "get", self.client.get_stream(tracked.api_key, tracked.stream_id)
            )
        except ov.OvershootError as err:
            return err
        return state

    async def _apply_state(
        self, tracked: Tracked, fetched: ov.StreamState | ov.OvershootError
    ) -> None:
        key = (tracked.namespace, tracked.name)
        if isinstance(fetched, ov.NotFound):
            await self._remote_ended(tracked)
            return
        if isinstance(fetched, ov.OvershootError):
            # Status can wait; keepalive errors are what the conditions report.
            self.polls.schedule(key, self.settings.status_poll_seconds)
            return
        state = fetched
        if state.ended:
            await self._remote_ended(tracked)
            return
        tracked.last_stream_state = state
        if state.last_frame_at_ms is not None:
            tracked.last_frame_at_ms = state.last_frame_at_ms
            tracked.ever_had_frames = True
        fresh = dec.frames_fresh(
            tracked.last_frame_at_ms,
            now=self.clock(),
            fresh_seconds=self.settings.frames_fresh_seconds,
        )
        if fresh:
            tracked.polls_without_frames = 0
            delay = self.settings.status_poll_seconds
        else:
            # Until frames flow, look often so `Publishing` appears within seconds of the
            # first frame, backing off to the normal cadence.
            tracked.polls_without_frames += 1
            delay = min(
                self.settings.status_poll_seconds, 2.0 * 2 ** min(tracked.polls_without_frames, 5)
            )
        self.polls.schedule(key, delay * self.rng.uniform(0.9, 1.1))

    # ---- status ------------------------------------------------------------------------------

    async def _write_status(self, tracked: Tracked) -> None:
        patch = self._tracked_status(tracked)
        # A poll that learned nothing new writes nothing: at thousands of streams, identical
        # status patches were most of the operator's Kubernetes writes (bench/operator_scale).
        digest = _digest(patch)
        if digest == tracked.last_written:
            return
        try:
            await self.kube.patch_stream_status(tracked.namespace, tracked.name, patch)
            tracked.last_written = digest
        except KubeError as err:
            logger.warning("Status write for %s failed: %s", tracked.owner, err)

    def _tracked_status(self, tracked: Tracked) -> dict[str, Any]:
        now = self.clock()
        facts = dec.Facts(
            generation=tracked.generation,
            suspended=False,
            failed_reason=None,
            failed_message=None,
            stream_id=tracked.stream_id,
            lease_held=True,
            last_frame_at_ms=tracked.last_frame_at_ms,
            ever_had_frames=tracked.ever_had_frames,
            pod_ready=tracked.pod_ready,
            problem=tracked.problem,
        )
        phase, tracked.conditions = dec.summarize(
            facts, tracked.conditions, now=now, fresh_seconds=self.settings.frames_fresh_seconds
        )
        tracked.phase = phase
        patch = self._base_status(phase, tracked.conditions, tracked.generation)
        state = tracked.last_stream_state
        patch.update(
            {
                "streamId": tracked.stream_id,
                "secretName": res.publish_secret_name(tracked.name),
                "publisherPod": res.publisher_pod_name(tracked.name),
                "expiresAt": dec.rfc3339(dec.ms_to_datetime(tracked.expires_at_ms)),
                "recreations": tracked.recreations,
            }
        )
        if tracked.last_keepalive is not None:
            patch["lastKeepaliveTime"] = dec.rfc3339(tracked.last_keepalive)
        # Nothing to say about media until frames were seen or the stream ended: a block of
        # nulls would be one more status write per new stream (its first poll) for no news.
        if state is not None and (state.last_frame_index is not None or state.end_reason):
            patch["stream"] = {
                "recentFps": state.recent_fps,
                "lastFrameIndex": state.last_frame_index,
                "lastFrameAt": dec.rfc3339(dec.ms_to_datetime(state.last_frame_at_ms)),
                "firstFrameAt": dec.rfc3339(dec.ms_to_datetime(state.first_frame_at_ms)),
                "streamTimeMs": state.stream_time_ms,
                "endReason": state.end_reason,
            }
        return patch

    def _base_status(
        self, phase: res.Phase, conditions: list[res.Condition], generation: int | None
    ) -> dict[str, Any]:
        return {
            "phase": phase,
            "observedGeneration": generation,
            "conditions": [res.to_json(c) for c in conditions],
        }

    def _facts_none(
        self,
        generation: int | None,
        *,
        suspended: bool = False,
        failed: tuple[str, str] | None = None,
        problem: dec.Problem | None = None,
    ) -> dec.Facts:
        return dec.Facts(
            generation=generation,
            suspended=suspended,
            failed_reason=failed[0] if failed else None,
            failed_message=failed[1] if failed else None,
            stream_id=None,
            lease_held=False,
            last_frame_at_ms=None,
            ever_had_frames=False,
            pod_ready=None,
            problem=problem,
        )

    def _static_status(
        self,
        conditions: list[res.Condition],
        generation: int | None,
        now: datetime,
        *,
        failed: tuple[str, str],
    ) -> Outcome:
        phase, conditions = dec.summarize(
            self._facts_none(generation, failed=failed),
            conditions,
            now=now,
            fresh_seconds=self.settings.frames_fresh_seconds,
        )
        return Outcome(self._base_status(phase, conditions, generation))

    def _problem_status(
        self,
        conditions: list[res.Condition],
        generation: int | None,
        now: datetime,
        problem: dec.Problem,
        tracked: Tracked | None,
    ) -> Outcome:
        if tracked is not None:
            tracked.problem = problem
            return Outcome(self._tracked_status(tracked), problem.retry_in)
        phase, conditions = dec.summarize(
            self._facts_none(generation, problem=problem),
            conditions,
            now=now,
            fresh_seconds=self.settings.frames_fresh_seconds,
        )
        return Outcome(self._base_status(phase, conditions, generation), problem.retry_in)


class _RemoteFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _digest(patch: Mapping[str, Any]) -> int:
    """Equal for equal status patches (a 64-bit hash: a collision skips one write, and
    the next change writes again)."""
    return hash(json.dumps(patch, sort_keys=True, separators=(",", ":")))


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False
