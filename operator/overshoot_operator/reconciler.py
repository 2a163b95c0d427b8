"""The controller: `process(key)`, from a fresh read to what the resource needs now.

Role: level-triggered reconciliation of one OvershootStream at a time (cert-manager's
`ProcessItem(key)` is the model). Watch events, Pod events, due keepalives, poll answers
and retries only add the key to the work queue; `process` then reads what is true now (the
watch's latest object in the registry, the Pod as the Pod watch saw it, the held lease) and
does what that calls for: acquire, renew or recreate the remote stream, write its id down,
bring the Secret and the Pod in line, write status, or release everything and let go of the
finalizer. Nothing acts on memory of an object that is gone, suspended, being deleted, or
served by another replica: the key's next pass decides afresh, and when a pass cannot act
(a backoff, a failed write) it asks for the next one (`Entry.wake`); no step's failure can
drop a lease's schedule, because the schedule is derived from the held lease every pass.

The work is split by concern: leases.py (Overshoot calls), children.py (Secret and Pod),
records.py (finalizer and id on the resource), status.py (the one status writer),
apikeys.py (user Secrets), events.py (aggregated Events), poller.py (status polls),
registry.py (what is known), leader.py (whether this replica may act).

Boundary: none of its own; it orchestrates the modules above. Time is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import SecretStr, ValidationError

from overshoot_operator import decisions as dec
from overshoot_operator import delivery as dlv
from overshoot_operator import manifests, metrics
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator import schedule as sch
from overshoot_operator.apikeys import SecretReader
from overshoot_operator.children import Children, PodState, child_problem
from overshoot_operator.events import EventRecorder
from overshoot_operator.kube import ConflictError, Kube, KubeError, NotFoundError, SecretProblem
from overshoot_operator.leader import Gate, NotLeading, Role
from overshoot_operator.leases import Leases
from overshoot_operator.limiter import CallLimiter, Priority
from overshoot_operator.poller import FIRST_POLL_SECONDS, Poller
from overshoot_operator.records import Records
from overshoot_operator.registry import Entry, Held, Key, Media, Observed, PodFacts, Registry
from overshoot_operator.settings import OperatorSettings
from overshoot_operator.status import StatusWriter, View, WriteResult
from overshoot_operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)

GAUGE_INTERVAL_SECONDS = 10.0
# A failed Kubernetes write (Secret, Pod, a record) is tried again after this long.
KUBE_RETRY_SECONDS = 5.0
# A stream released because its resource vanished is retried this long at most; the
# lease ends it anyway.
VANISHED_GIVE_UP_SECONDS = 60.0
# The end reason of a pulled stream whose camera's stream ended (twice in a row).
# Guess: undocumented ("a source that ends, and ends again shortly after a reconnect,
# ends the Stream"); the emulator says "source_ended".
SOURCE_ENDED = "source_ended"
# After a stream is released for want of frames, a Ready publisher Pod is believed only
# this much later (the publisher's switch to standby and its readiness probe's failover).
STANDBY_SETTLE_SECONDS = 20.0
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Resume(Enum):
    CREATE = "create"  # no live stream to take over: create one
    WAIT = "wait"  # a transient failure or a Fail end: nothing more this pass


def spec_defaults(settings: OperatorSettings) -> res.SpecDefaults:
    """What the operator's settings fill into a spec that leaves them out."""
    return res.SpecDefaults(
        api_key_secret=res.SecretKeySelector(
            namespace=settings.default_api_key_secret_namespace,
            name=settings.default_api_key_secret_name,
            key=settings.default_api_key_secret_key,
        ),
        keepalive_interval_seconds=settings.keepalive_interval_seconds,
        delivery=settings.default_delivery,
        publisher_image=settings.publisher_image,
        publisher_resources=res.ResourceRequirements(
            requests={
                "cpu": settings.publisher_cpu_request,
                "memory": settings.publisher_memory_request,
                "ephemeral-storage": settings.publisher_ephemeral_storage_request,
            },
            limits={
                "cpu": settings.publisher_cpu_limit,
                "memory": settings.publisher_memory_limit,
                "ephemeral-storage": settings.publisher_ephemeral_storage_limit,
            },
        ),
    )


class Controller:
    def __init__(
        self,
        settings: OperatorSettings,
        client: ov.OvershootClient,
        kube: Kube,
        leader: Gate,
        *,
        clock: Clock = _utcnow,
        rng: random.Random | None = None,
        resolver: dlv.Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.leader = leader
        self.clock = clock
        self.rng = rng or random.Random()
        self.registry = Registry()
        self.queue: WorkQueue[Key] = WorkQueue(self.process, name="streams")
        self.leases = Leases(
            client,
            jitter=settings.keepalive_jitter,
            loop_time=self._now,
            wall=clock,
            rng=self.rng,
        )
        self.children = Children(kube, settings)
        self.records = Records(kube)
        self.secrets = SecretReader(kube, clock=self._now)
        self.events = EventRecorder(kube, clock=clock, monotonic=self._now)
        self.status = StatusWriter(kube, fresh_seconds=settings.frames_fresh_seconds)
        self.poller = Poller(
            self.registry,
            self.leases,
            self.queue,
            leader,
            poll_seconds=settings.status_poll_seconds,
            fresh_seconds=settings.frames_fresh_seconds,
            wall=clock,
            rng=self.rng,
        )
        self.defaults = spec_defaults(settings)
        self.resolve = resolver or dlv.system_resolver(settings.dns_timeout_seconds)
        self.networks = dlv.parse_networks(settings.server_pull_networks)
        self._gauges: asyncio.Task[None] | None = None
        self._budget_warned = False

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # ---- lifecycle of the process ------------------------------------------------------

    def start(self) -> None:
        self.queue.start()
        self.poller.start()
        self._gauges = asyncio.create_task(self._gauge_loop(), name="gauges")

    async def stop(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges
        await self.poller.stop()
        await self.queue.stop()
        await self.events.stop()

    def on_leadership(self, role: Role) -> None:
        """Back to leading after the API server was unreachable: every key needs a pass
        (writes failed meanwhile). Any other change needs nothing here: a replica that
        lost the Lease stops acting at once and exits (main)."""
        if role is Role.LEADING:
            for entry in self.registry:
                self.queue.add(entry.key)

    # ---- what the watches say ----------------------------------------------------------

    def on_stream_event(self, event: Mapping[str, Any]) -> None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        key: Key = (meta.get("namespace") or "", meta.get("name") or "")
        if not key[0] or not key[1]:
            return
        if event.get("type") == "DELETED":
            if self.registry.observe_gone(key, meta.get("uid")):
                self.queue.add(key)
            return
        if self.registry.observe(Observed.from_body(obj), now=self._now()):
            self.queue.add(key)

    def on_pod_event(self, event: Mapping[str, Any]) -> None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(manifests.STREAM_LABEL)
        namespace = meta.get("namespace")
        if not owner or not namespace or meta.get("name") != res.publisher_pod_name(owner):
            return
        facts = None
        if event.get("type") != "DELETED":
            facts = PodFacts.from_body(obj, hash_annotation=res.PUBLISHER_CONFIG_HASH_ANNOTATION)
        if self.registry.observe_pod((namespace, owner), facts):
            self.queue.add((namespace, owner))

    # ---- process(key) ------------------------------------------------------------------

    async def process(self, key: Key) -> None:
        entry = self.registry.get(key)
        if entry is None:
            return
        entry.wake_at = None
        try:
            if not self.leader.may_act():
                await self._hold(entry)
                return
            observed = entry.observed
            if observed is None:
                await self._vanished(entry)
            elif observed.deleting:
                await self._finalize(entry, observed)
            else:
                await self._reconcile(entry, observed)
        except NotLeading:
            return  # on_leadership brings the key back if this replica leads again
        self._schedule(entry)

    def _schedule(self, entry: Entry) -> None:
        if self.registry.get(entry.key) is not entry:
            return  # forgotten in this pass
        times = [t for t in (entry.wake_at, entry.create_after) if t is not None]
        observed = entry.observed
        if entry.held is not None and observed is not None and not observed.deleting:
            times.append(entry.held.keepalive_at)
        if times:
            self.queue.add_after(entry.key, min(times) - self._now())

    async def _hold(self, entry: Entry) -> None:
        """Not allowed to act: only renew what is held while the API server is unreachable
        (leader.py says why), nothing else; a 404 waits until this replica acts again."""
        held = entry.held
        if held is None or not self.leader.may_renew():
            return
        interval = self._interval(entry)
        if self._now() >= held.keepalive_at:
            try:
                await self.leases.renew(held, interval=interval)
            except ov.OvershootError as err:
                retry_after = err.retry_after if isinstance(err, ov.RateLimited) else None
                held.keepalive_at = self.leases.retry_keepalive_at(
                    held, interval=interval, retry_after=retry_after
                )
        self.queue.add_after(entry.key, held.keepalive_at - self._now())

    # ---- the resource exists -----------------------------------------------------------

    async def _reconcile(self, entry: Entry, observed: Observed) -> None:
        self._take_in_status(entry, observed)
        held = entry.held
        if held is not None and held.uid != observed.uid:
            # Deleted and created again under the same name: the old stream is not the new
            # resource's (its Secret and Pod go with the old owner).
            await self._release_held(entry, observed, why="its resource was replaced")
            entry.new_incarnation()
            self._take_in_status(entry, observed)
        spec = self._spec(entry, observed)
        if isinstance(spec, str):
            await self._release(entry, observed, None, why="its spec is invalid")
            await self._write_status(entry, observed, View(invalid=spec))
            return
        if spec.suspend:
            await self._release(entry, observed, spec, why="suspended")
            await self._write_status(entry, observed, View(suspended=True))
            return
        entry.children_removed = False
        refresh = bool(observed.refresh_annotation) and (
            observed.refresh_annotation != entry.refresh_seen
        )
        if entry.failed is not None and entry.failed[2] == observed.generation:
            await self._stay_failed(entry, observed)
            return
        entry.failed = entry.failed_end_reason = None
        if entry.held is not None and not observed.has_finalizer:
            # Removed by hand while the stream lives: without it, a deletion would not wait
            # for the release (the watch's DELETED would still release it, later).
            try:
                entry.observed = observed = await self.records.add_finalizer(observed)
            except KubeError as err:
                await self._metadata_write_failed(entry, observed, err)
                return

        decision = await self._delivery(entry, observed, spec)
        revision = await self._current_revision(entry, observed, spec, decision)
        if entry.held is not None:
            why = _replacement(entry.held, decision, revision)
            if why is not None:
                if not await self._replace(entry, observed, why):
                    await self._write_status(entry, observed, View())
                    return
                observed = entry.observed or observed  # without the released id
        if decision.delivery == "ServerPull":
            entry.standby = False
        if entry.held is None and entry.standby and not await self._stand_by(entry, observed, spec):
            await self._write_status(entry, observed, View())
            return
        if entry.held is None:
            await self._acquire(entry, observed, spec, decision, revision, refresh=refresh)
        else:
            if refresh or self._now() >= entry.held.keepalive_at:
                await self._renew(entry, observed, spec, fresh_key=refresh)
            if entry.fetched is not None:
                await self._take_in_poll(entry, observed, spec)
            if entry.held is not None and await self._starved(entry, observed):
                # The Pod is told (standby Secret, annotation) before status says so.
                await self._stand_by(entry, entry.observed or observed, spec)
                await self._write_status(entry, entry.observed or observed, View())
                return
        if refresh:
            entry.refresh_seen = observed.refresh_annotation
            if entry.held is not None:
                self.poller.schedule(entry.key, 0)
        # Steps above may have written the resource (the creating mark, the id): go on
        # from the object as stored, unless it turned out gone, replaced or deleting.
        current = self._current(entry, observed)
        if current is None:
            return
        held = entry.held
        if held is not None and not held.recorded:
            await self._record(entry, current, held)
            current = self._current(entry, observed)
            if current is None:
                return
        if held is not None:
            await self._ensure_children(entry, current, spec, held)
        await self._write_status(entry, current, View())

    def _current(self, entry: Entry, started: Observed) -> Observed | None:
        """The object as last seen, if it is still the incarnation and the generation a
        pass started with (its spec is the one the pass parsed) and still alive;
        otherwise None, and the next pass (at once) decides afresh."""
        current = entry.observed
        if (
            current is None
            or current.uid != started.uid
            or current.generation != started.generation
            or current.deleting
        ):
            entry.wake(self._now())
            return None
        return current

    def _take_in_status(self, entry: Entry, observed: Observed) -> None:
        """What the previous process wrote (conditions, recreations, a Fail end), once."""
        if entry.recreations is not None:
            return
        status = _parse_status(observed)
        entry.recreations = status.recreations
        entry.conditions = list(status.conditions)
        ready = res.get_condition(status.conditions, res.ConditionType.READY)
        if (
            status.phase == "Failed"
            and ready is not None
            and ready.reason == "RemoteStreamEnded"
            and ready.observed_generation == observed.generation
        ):
            entry.failed = (ready.reason, ready.message, observed.generation)
            entry.failed_end_reason = status.stream.end_reason if status.stream else None
        if (
            ready is not None
            and ready.reason == dec.WAITING_FOR_SOURCE
            and status.stream_id is None
        ):
            # Released for a source that never delivered: the publisher must prove it
            # first, after a restart too (a new stream at once would be paid for nothing).
            entry.standby = True
            entry.standby_rounds = 1

    def _spec(self, entry: Entry, observed: Observed) -> res.EffectiveSpec | str:
        """The effective spec, or the message of why it is unusable (cached per generation)."""
        cached = entry.spec_cache
        if cached is not None and cached[0] == observed.generation:
            return cached[1]
        parsed: res.EffectiveSpec | str
        try:
            parsed = res.effective_spec(
                res.parse_spec(observed.spec), self.defaults, namespace=observed.namespace
            )
        except ValidationError as err:
            # The CRD refuses what it can at admission; this catches the rest.
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            parsed = f"{observed.owner}: spec.{where}: {first['msg']}; fix the spec"
        entry.spec_cache = (observed.generation, parsed)
        return parsed

    def _interval(self, entry: Entry) -> float:
        cached = entry.spec_cache
        if cached is not None and not isinstance(cached[1], str):
            return cached[1].keepalive_interval_seconds
        return self.settings.keepalive_interval_seconds

    def _key_field(self, observed: Observed) -> str:
        if observed.spec.get("apiKeySecretRef"):
            return "spec.apiKeySecretRef"
        return "the operator's default API key Secret"

    def _key_ref(self, spec: res.EffectiveSpec) -> str:
        s = spec.api_key_secret
        return f"Secret {s.namespace}/{s.name} key {s.key!r}"

    async def _api_key(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec, *, fresh: bool
    ) -> SecretStr | None:
        """The key to create or adopt with; None (and a problem) if it cannot be read."""
        try:
            key = await self.secrets.value(
                spec.api_key_secret,
                field=self._key_field(observed),
                owner=observed.owner,
                fresh=fresh,
            )
        except KubeError as err:
            self._secret_problem(entry, observed, spec, err)
            return None
        if await self._source_credentials(entry, observed, spec) is False:
            return None
        entry.set_problem("secret", None)
        return key

    def _secret_problem(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec, err: KubeError
    ) -> None:
        problem = dec.problem_from_error(err, owner=observed.owner, api_key_ref=self._key_ref(spec))
        entry.set_problem("secret", problem)
        entry.create_after = self._now() + problem.retry_in
        entry.wake(entry.create_after)

    async def _source_credentials(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec
    ) -> SourceCredentials | Literal[False] | None:
        """The source's credentials Secret (read shared and briefly reused): its username,
        password and version; None when the source names none; False, with a problem and
        a retry scheduled, when it cannot be read or lacks a key."""
        creds = spec.source.credentials_secret_ref
        if creds is None:
            return None
        try:
            (username, password), version = await self.secrets.values(
                observed.namespace,
                creds.name,
                [creds.username_key, creds.password_key],
                field=f"spec.source.{spec.source.kind}.credentialsSecretRef",
                owner=observed.owner,
            )
        except KubeError as err:
            self._secret_problem(entry, observed, spec, err)
            return False
        return SourceCredentials(username, password, version)

    # ---- delivery ------------------------------------------------------------------

    async def _delivery(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec
    ) -> dlv.Decision:
        """How this generation's video is delivered (cached per generation: Auto resolves
        the camera's host once, and a fallback to Publisher holds for the generation)."""
        cached = entry.delivery_cache
        if cached is not None and cached[0] == observed.generation:
            return cached[1]
        host = dlv.needs_resolving(spec)
        addresses = await self.resolve(host) if host is not None else None
        decision = dlv.decide(spec, addresses=addresses, networks=self.networks)
        entry.delivery_cache = (observed.generation, decision)
        if spec.delivery == "Auto":
            logger.info("Delivery of %s: %s (%s)", observed.owner, decision.delivery, decision.why)
        return decision

    async def _current_revision(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec, decision: dlv.Decision
    ) -> str | None:
        """The stream revision the spec wants now (`EffectiveSpec.stream_revision`); None,
        with a problem, when a pulled camera's credentials Secret cannot be read.

        A held pulled stream's credentials version is taken as current unless the spec
        changed or its camera went quiet (a rotated camera password shows as a stale
        source): healthy pulled streams read no Secret, which at thousands of streams would
        be most of the operator's Kubernetes reads."""
        if decision.delivery == "Publisher":
            return spec.stream_revision("Publisher")
        held = entry.held
        if held is not None and held.delivery == "ServerPull" and held.revision is not None:
            quiet = entry.media.last_pull_ms is not None and not dec.frames_fresh(
                entry.media.last_pull_ms,
                now=self.clock(),
                fresh_seconds=self.settings.frames_fresh_seconds,
            )
            if entry.revision_generation == observed.generation and not (
                quiet and self._now() >= entry.revision_checked_at + dec.PULL_RECHECK_SECONDS
            ):
                return held.revision
        creds = await self._source_credentials(entry, observed, spec)
        if creds is False:
            return None
        entry.revision_generation = observed.generation
        entry.revision_checked_at = self._now()
        return spec.stream_revision("ServerPull", creds.version if creds else None)

    def _pull_refused(
        self,
        entry: Entry,
        observed: Observed,
        spec: res.EffectiveSpec,
        revision: str | None,
        err: ov.SourceUnusable | ov.ServerPullUnsupported,
    ) -> None:
        """Overshoot would not pull the camera. Auto publishes it from the cluster instead
        (for this generation); an explicit ServerPull waits for the user (decisions.py)."""
        field = f"spec.source.{spec.source.kind}"
        if spec.delivery == "Auto":
            cause = err.detail if isinstance(err, ov.SourceUnusable) and err.detail else err.message
            decision = dlv.Decision(
                "Publisher",
                f"Auto: Overshoot could not pull the camera ({cause}); publishing "
                "it from the cluster",
            )
            entry.delivery_cache = (observed.generation, decision)
            self.events.normal(observed.ref(), "DeliveryFallback", decision.why)
            logger.info("Delivery of %s falls back to Publisher: %s", observed.owner, cause)
            entry.wake(self._now())
            return
        problem = dec.pull_refused(
            err, owner=observed.owner, field=field, api_url=self.settings.api_url
        )
        entry.set_problem("create", problem)
        entry.blocked_pull = revision
        entry.create_failures += 1
        entry.wake(self._now() + problem.retry_in)

    async def _replace(self, entry: Entry, observed: Observed, why: str) -> bool:
        """Let go of the held stream because the resource now wants another one (delivery
        or pulled source changed). True once it is released; its DELETE is retried first
        (bounded like a deletion's), so one resource never has two live paid streams."""
        held = entry.held
        assert held is not None
        now = self.clock()
        entry.replacing_since = entry.replacing_since or now
        try:
            await self.leases.release(held.api_key, held.stream_id, region=held.region)
        except ov.OvershootError as err:
            waited = (now - entry.replacing_since).total_seconds()
            if err.retryable and waited < self.settings.delete_give_up_seconds:
                delay = sch.backoff_delay(max(1, int(waited // 5) + 1), cap=15.0, rng=self.rng)
                entry.wake(self._now() + delay)
                entry.set_problem(
                    "lease",
                    dec.Problem(
                        "Replacing",
                        f"{observed.owner}: replacing stream {held.stream_id} ({why}); its "
                        f"DELETE failed ({err.message}); retrying before a new stream is made",
                        False,
                        delay,
                    ),
                )
                return False
            self.events.warning(
                observed.ref(),
                "DeleteAbandoned",
                f"Gave up deleting stream {held.stream_id} after {waited:.0f}s ({err.message}); "
                "keepalives stopped, so its lease ends it within 300s",
            )
        entry.held = None
        entry.released_stream_id = held.stream_id
        entry.replacing_since = None
        entry.media = Media()
        entry.set_problem("lease", None)
        self.poller.cancel(entry.key)
        if observed.stream_id_annotation or observed.creating_annotation:
            try:
                entry.observed = await self.records.forget_stream_id(observed)
            except KubeError as err:
                # The released id stays out of reach anyway (released_stream_id).
                logger.warning("Forgetting stream id of %s failed: %s", observed.owner, err)
        self.events.normal(
            observed.ref(), "StreamReplaced", f"Released stream {held.stream_id}: {why}"
        )
        logger.info("Released stream %s of %s: %s", held.stream_id, observed.owner, why)
        return True

    async def _remove_publisher(self, entry: Entry, observed: Observed) -> None:
        """A pulled stream needs no publisher Pod and no publish Secret: remove those of an
        earlier Publisher delivery (once; the Pod watch says when the Pod is gone)."""
        if entry.pull_children_removed and (entry.pod is None or entry.pod.deleting):
            entry.synced_generation = observed.generation
            return
        try:
            await self.children.delete_all(observed, entry.pod)
        except KubeError as err:
            self._kube_problem(entry, observed, err)
            return
        entry.pull_children_removed = True
        entry.set_problem("kube", None)
        entry.synced_generation = observed.generation

    # ---- acquiring a stream ------------------------------------------------------------

    async def _acquire(
        self,
        entry: Entry,
        observed: Observed,
        spec: res.EffectiveSpec,
        decision: dlv.Decision,
        revision: str | None,
        *,
        refresh: bool,
    ) -> None:
        if entry.blocked_pull is not None:
            if refresh or decision.delivery != "ServerPull" or revision != entry.blocked_pull:
                # Something changed that may make the camera pullable: try again.
                entry.blocked_pull = None
                entry.create_after = None
                entry.set_problem("create", None)
            else:
                entry.wake(self._now() + dec.PULL_RECHECK_SECONDS)
                return
        if revision is None:
            return  # the credentials Secret cannot be read: _current_revision said why
        if entry.create_after is not None and self._now() < entry.create_after and not refresh:
            return
        api_key = await self._api_key(entry, observed, spec, fresh=refresh)
        if api_key is None:
            return
        status = _parse_status(observed)
        recorded = res.parse_stream_id(status.stream_id)
        adopted = res.parse_stream_id(observed.stream_id_annotation)
        stream_id = recorded or adopted
        if stream_id is not None and stream_id == entry.released_stream_id:
            # Released on purpose by this process (replaced, or no frame ever reached it);
            # status or the annotation have not caught up yet.
            stream_id = recorded = None
        if stream_id is not None:
            outcome = await self._resume(
                entry,
                observed,
                spec,
                api_key,
                stream_id,
                status,
                refresh=refresh,
                ours=recorded is not None,
            )
            if outcome is not _Resume.CREATE:
                held = entry.held
                if held is not None and _replacement(held, decision, revision):
                    entry.wake(self._now())  # the next pass replaces it
                return
        if decision.delivery == "Publisher" and not await self._admitted(entry, observed, spec):
            return
        leaked = observed.creating_annotation if recorded is None else None
        await self._create(entry, observed, spec, api_key, decision, revision, leaked_mark=leaked)

    async def _resume(
        self,
        entry: Entry,
        observed: Observed,
        spec: res.EffectiveSpec,
        api_key: SecretStr,
        stream_id: str,
        status: res.OvershootStreamStatus,
        *,
        refresh: bool,
        ours: bool,
    ) -> _Resume | None:
        """Take over the stream the resource names (after a restart, or adoption)."""
        interval = spec.keepalive_interval_seconds
        pulled = ours and status.delivery == "ServerPull"
        secret_stream_id: str | None = None
        if not pulled:
            try:
                secret_stream_id = await self.children.read_secret_stream_id(observed)
            except KubeError as err:
                self._kube_problem(entry, observed, err)
                return _Resume.WAIT
        expires = status.expires_at
        if (
            not refresh
            and ours
            and (pulled or secret_stream_id == stream_id)
            and expires is not None
            and self.leases.comfortably_alive(int(expires.timestamp() * 1000))
        ):
            # Invariant 3: the stored lease is alive; resume its schedule, call nothing.
            entry.held = self.leases.resume(
                api_key,
                stream_id,
                uid=observed.uid,
                expires_at_ms=int(expires.timestamp() * 1000),
                interval=interval,
            )
            _carry_over(entry.held, status)
            entry.refresh_seen = observed.refresh_annotation
            self._acquired(entry, first_poll=self.rng.uniform(0, 10))
            logger.info(
                "Resumed stream %s of %s (lease until %s)",
                stream_id,
                observed.owner,
                dec.rfc3339(expires),
            )
            return None
        region = status.region if ours else spec.region
        try:
            held = await self.leases.adopt(
                api_key, stream_id, uid=observed.uid, interval=interval, region=region
            )
        except ov.NotFound:
            end_reason = await self.leases.end_reason(api_key, stream_id, region=region)
            if ours and spec.on_remote_end == "Fail":
                self._fail(entry, observed, stream_id, end_reason)
                return _Resume.WAIT
            if ours:
                entry.recreations = (entry.recreations or 0) + 1
                metrics.RECREATIONS.labels(end_reason).inc()
                self.events.normal(
                    observed.ref(),
                    "StreamEnded",
                    f"Remote stream {stream_id} ended ({end_reason}); creating a new one",
                )
            else:
                self.events.warning(
                    observed.ref(),
                    "AdoptionFailed",
                    f"Stream {stream_id} from annotation {res.STREAM_ID_ANNOTATION} is not "
                    "active; creating a new one",
                )
            return _Resume.CREATE
        except ov.OvershootError as err:
            self._create_problem(entry, observed, spec, err)
            return _Resume.WAIT
        held.secret_stream_id = secret_stream_id
        held.recorded = ours
        if ours:
            _carry_over(held, status, region=held.region)
        elif held.publish is None:
            # Adopted by annotation: a keepalive without a publish token is a pulled stream,
            # whose source the operator cannot know (the API never returns it).
            held.delivery = "ServerPull"
        entry.set_problem("lease", None)
        entry.set_problem("create", None)
        entry.held = held
        self._acquired(entry, first_poll=0.0)
        return None

    async def _create(
        self,
        entry: Entry,
        observed: Observed,
        spec: res.EffectiveSpec,
        api_key: SecretStr,
        decision: dlv.Decision,
        revision: str | None,
        *,
        leaked_mark: str | None = None,
        replacing: tuple[str, str] | None = None,
    ) -> None:
        if leaked_mark and entry.leak_announced != leaked_mark:
            # A create was started and its id never written: the process died in between.
            # That stream is unknown to us and expires with its lease.
            entry.leak_announced = leaked_mark
            self.events.warning(
                observed.ref(),
                "StreamPossiblyLeaked",
                "A previous create may have made a remote stream whose id was never recorded "
                "(operator stopped mid-create); it is not renewed and expires within 300s",
            )
        try:
            # Marked first (with the finalizer), so a crash between create and the record
            # is detectable and deletion always waits for the release.
            marked = await self.records.mark_creating(
                observed, now=dec.rfc3339(self.clock()) or "1"
            )
        except KubeError as err:
            await self._metadata_write_failed(entry, observed, err)
            return
        entry.observed = observed = marked
        entry.leak_announced = marked.creating_annotation
        pull: ov.CameraSource | None = None
        if decision.delivery == "ServerPull":
            creds = await self._source_credentials(entry, observed, spec)
            if creds is False:
                with contextlib.suppress(KubeError):
                    entry.observed = await self.records.clear_creating(observed)
                    entry.leak_announced = None
                return
            login = (
                (creds.username.get_secret_value(), creds.password.get_secret_value())
                if creds is not None
                else None
            )
            pull = dlv.camera_source(spec, login)
        try:
            held = await self.leases.create(
                api_key,
                uid=observed.uid,
                interval=spec.keepalive_interval_seconds,
                region=spec.region,
                revision=revision,
                pull=pull,
            )
        except (ov.SourceUnusable, ov.ServerPullUnsupported) as err:
            with contextlib.suppress(KubeError):
                entry.observed = await self.records.clear_creating(observed)
                entry.leak_announced = None
            self._pull_refused(entry, observed, spec, revision, err)
            return
        except ov.OvershootError as err:
            self._create_problem(entry, observed, spec, err)
            nothing_made = isinstance(err, ov.OvershootRejected) or (
                isinstance(err, ov.OvershootUnavailable) and not err.request_sent
            )
            if nothing_made:
                # Known to have made no stream: the mark would announce a leak that is not.
                with contextlib.suppress(KubeError):
                    entry.observed = await self.records.clear_creating(observed)
                    entry.leak_announced = None
            return
        entry.create_failures = 0
        entry.create_after = None
        entry.set_problem("create", None)
        entry.set_problem("lease", None)
        if replacing is not None and held.delivery == "Publisher":
            held.secret_stream_id = replacing[0]  # the Secret exists, for the old stream
        entry.held = held
        self._acquired(entry, first_poll=FIRST_POLL_SECONDS)
        if replacing is not None:
            old, end_reason = replacing
            self.events.normal(
                observed.ref(),
                "StreamRecreated",
                f"Remote stream {old} ended ({end_reason}); created {held.stream_id} and moved "
                "the publisher to it",
            )
            logger.info(
                "Recreated stream %s (was %s, %s) for %s",
                held.stream_id,
                old,
                end_reason,
                observed.owner,
            )
        else:
            how = "pulled by Overshoot" if held.delivery == "ServerPull" else "for a publisher Pod"
            where = f" in region {held.region}" if held.region else ""
            self.events.normal(
                observed.ref(),
                "StreamCreated",
                f"Created remote stream {held.stream_id}{where}, {how} ({decision.why})",
            )
            logger.info(
                "Created stream %s for %s (%s%s)", held.stream_id, observed.owner, how, where
            )
        await self._record(entry, observed, held)

    def _acquired(self, entry: Entry, *, first_poll: float) -> None:
        entry.media = Media(stream_id=entry.held.stream_id if entry.held else None)
        entry.fetched = None
        self.poller.schedule(entry.key, first_poll)

    def _create_problem(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec, err: ov.OvershootError
    ) -> None:
        problem = dec.problem_from_error(err, owner=observed.owner, api_key_ref=self._key_ref(spec))
        entry.set_problem("create", problem)
        entry.create_failures += 1
        if isinstance(err, ov.RateLimited):
            delay = sch.create_retry_delay(
                entry.create_failures, retry_after=err.retry_after, rng=self.rng
            )
            problem = dec.Problem(
                problem.reason,
                f"{observed.owner}: Overshoot refused to create a stream (429: a stream or rate "
                f"limit of the key in {self._key_ref(spec)}); retrying in {delay:.0f}s",
                False,
                delay,
            )
            entry.set_problem("create", problem)
        elif problem.user_fixable:
            delay = problem.retry_in
        else:
            delay = sch.backoff_delay(
                entry.create_failures, base=problem.retry_in, cap=120.0, rng=self.rng
            )
        entry.create_after = self._now() + delay

    async def _record(self, entry: Entry, observed: Observed, held: Held) -> None:
        """Invariant 2: the id on the resource (annotation) and in status, right away."""
        try:
            entry.observed = await self.records.record_stream_id(observed, held.stream_id)
        except KubeError as err:
            await self._metadata_write_failed(entry, observed, err)
            return
        held.recorded = True
        entry.set_problem("kube", None)
        await self._write_status(entry, entry.observed, View())

    # ---- keeping it ----------------------------------------------------------------------

    async def _renew(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec, *, fresh_key: bool
    ) -> None:
        held = entry.held
        assert held is not None
        interval = spec.keepalive_interval_seconds
        try:
            await self.leases.renew(held, interval=interval)
        except ov.NotFound:
            await self._ended(entry, observed, spec, end_reason=None)
            return
        except ov.OvershootError as err:
            problem = dec.problem_from_error(
                err, owner=observed.owner, api_key_ref=self._key_ref(spec)
            )
            entry.set_problem("lease", problem)
            retry_after = err.retry_after if isinstance(err, ov.RateLimited) else None
            held.keepalive_at = self.leases.retry_keepalive_at(
                held, interval=interval, retry_after=retry_after
            )
            if isinstance(err, ov.Unauthorized):
                # A rotated key takes over at the next attempt; the old one was refused.
                current = await self._api_key(entry, observed, spec, fresh=True)
                if (
                    current is not None
                    and current.get_secret_value() != held.api_key.get_secret_value()
                ):
                    held.api_key = current
            return
        entry.set_problem("lease", None)
        await self._check_key_secret(entry, observed, spec, fresh=fresh_key)

    async def _check_key_secret(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec, *, fresh: bool
    ) -> None:
        """Say so when the API-key Secret went away while its stream lives on: the stream
        is renewed with the key read before, which a restart would not have (README)."""
        try:
            await self.secrets.value(
                spec.api_key_secret,
                field=self._key_field(observed),
                owner=observed.owner,
                fresh=fresh,
            )
        except SecretProblem as err:
            entry.set_problem(
                "secret",
                dec.Problem(
                    err.reason,
                    f"{err}. The stream is kept alive with the key read before; an operator "
                    "restart cannot, and would let it expire",
                    True,
                    dec.USER_FIX_RETRY_SECONDS,
                ),
            )
            return
        except KubeError:
            return  # unknown now: the next keepalive looks again
        entry.set_problem("secret", None)

    async def _take_in_poll(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec
    ) -> None:
        fetched, entry.fetched = entry.fetched, None
        held = entry.held
        if fetched is None or held is None or fetched.stream_id != held.stream_id:
            return
        state = fetched.state
        if fetched.ended:
            await self._ended(entry, observed, spec, end_reason=state.end_reason if state else None)
            return
        if state is None:
            return
        entry.media.state = state
        if state.last_frame_at_ms is not None:
            entry.media.last_frame_at_ms = state.last_frame_at_ms
            entry.media.ever_had_frames = True
            entry.standby_rounds = 0
        if state.last_pull is not None:
            entry.media.last_pull_ms = state.last_pull
            entry.media.ever_had_frames = True
            if dec.frames_fresh(
                state.last_pull, now=self.clock(), fresh_seconds=self.settings.frames_fresh_seconds
            ):
                entry.source_ends = 0

    async def _ended(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec, *, end_reason: str | None
    ) -> None:
        """Invariant 6: a stream that ended on its own is recreated (or Failed)."""
        held = entry.held
        assert held is not None
        old = held.stream_id
        reason = end_reason or await self.leases.end_reason(held.api_key, old, region=held.region)
        entry.held = None
        self.poller.cancel(entry.key)
        if spec.on_remote_end == "Fail":
            self._fail(entry, observed, old, reason)
            await self._stay_failed(entry, observed)
            return
        entry.recreations = (entry.recreations or 0) + 1
        metrics.RECREATIONS.labels(reason).inc()
        if held.delivery == "ServerPull" and reason == SOURCE_ENDED:
            # The camera's own stream keeps ending: a new stream at once would end the
            # same way. Wait longer each time it happens in a row.
            entry.source_ends += 1
            delay = sch.backoff_delay(entry.source_ends, base=30.0, cap=600.0, rng=self.rng)
            entry.create_after = self._now() + delay
            message = (
                f"{observed.owner}: Overshoot ended stream {old} because the camera's stream "
                f"ended (twice in a row, {entry.source_ends} time(s) now); a new stream is "
                f"created in {delay:.0f}s; check spec.source"
            )
            entry.set_problem("create", dec.Problem("SourceEnded", message, False, delay))
            self.events.warning(observed.ref(), "SourceEnded", message)
            return
        api_key = await self._api_key(entry, observed, spec, fresh=False)
        if api_key is None:
            return
        decision = await self._delivery(entry, observed, spec)
        revision = await self._current_revision(entry, observed, spec, decision)
        if revision is None:
            return
        await self._create(
            entry, observed, spec, api_key, decision, revision, replacing=(old, reason)
        )

    def _fail(self, entry: Entry, observed: Observed, stream_id: str, end_reason: str) -> None:
        message = (
            f"{observed.owner}: remote stream {stream_id} ended ({end_reason}) and "
            "spec.onRemoteEnd is Fail; set it to Recreate or recreate the resource"
        )
        entry.failed = ("RemoteStreamEnded", message, observed.generation)
        entry.failed_end_reason = end_reason
        self.events.warning(observed.ref(), "RemoteStreamEnded", message)

    async def _stay_failed(self, entry: Entry, observed: Observed) -> None:
        """onRemoteEnd Fail: no stream, no Pod, until the spec changes."""
        try:
            if entry.pod is not None and not entry.pod.deleting:
                await self.children.delete_pod(observed, entry.pod)
            if observed.stream_id_annotation:
                # The ended stream is nobody's to adopt when the spec changes.
                entry.observed = observed = await self.records.forget_stream_id(observed)
        except KubeError as err:
            await self._metadata_write_failed(entry, observed, err)
        await self._write_status(entry, observed, View())

    # ---- a stream no frame reaches -------------------------------------------------------

    async def _starved(self, entry: Entry, observed: Observed) -> bool:
        """Release a publisher's stream that no frame reached within
        `first_frame_timeout_seconds` of its creation: a dead camera (or a publisher that
        cannot reach LiveKit) costs no lease. The Pod stays and keeps trying its source;
        `_stand_by` creates a stream again once the Pod says the source delivers."""
        held = entry.held
        bound = self.settings.first_frame_timeout_seconds
        if held is None or held.delivery != "Publisher" or not bound:
            return False
        if entry.media.ever_had_frames:
            return False
        due = held.acquired_at + bound
        if self._now() < due:
            entry.wake(due)
            return False
        # Decided on a fresh read, not on the last poll (up to a minute old).
        try:
            state = await self.leases.state(held, priority=Priority.GET)
        except ov.OvershootError:
            entry.wake(self._now() + KUBE_RETRY_SECONDS)  # the poller and keepalives say more
            return False
        if state.last_frame_at_ms is not None or state.ended:
            entry.media.state = state
            entry.media.last_frame_at_ms = state.last_frame_at_ms
            entry.media.ever_had_frames = state.last_frame_at_ms is not None
            return False
        failure = entry.pod.failure if entry.pod is not None else None
        stream_id = held.stream_id
        await self._release_held(
            entry, observed, why=f"no frame reached it within {bound:.0f}s of its creation"
        )
        try:
            if observed.stream_id_annotation or observed.creating_annotation:
                entry.observed = await self.records.forget_stream_id(observed)
        except KubeError as err:
            await self._metadata_write_failed(entry, observed, err)
        entry.standby = True
        entry.standby_secret = False
        entry.standby_rounds += 1
        later = ""
        # The Pod's readiness means "track published" until the publisher has seen the
        # standby Secret and its probe has failed over (up to 15 s): only a readiness seen
        # after that says the source delivers.
        delay = STANDBY_SETTLE_SECONDS
        if entry.standby_rounds > 1:
            # The source delivered to the publisher last time and still nothing reached
            # Overshoot: the fault is between them; do not pay a lease a minute for it.
            delay = sch.backoff_delay(entry.standby_rounds - 1, base=60.0, cap=1800.0, rng=self.rng)
            later = f", and not before {delay:.0f}s from now (round {entry.standby_rounds})"
        entry.create_after = self._now() + delay
        entry.set_problem(
            "create",
            dec.waiting_for_source(
                owner=observed.owner, stream_id=stream_id, bound=bound, failure=failure, later=later
            ),
        )
        logger.info(
            "Released stream %s of %s: no frame within %.0fs", stream_id, observed.owner, bound
        )
        return True

    async def _stand_by(self, entry: Entry, observed: Observed, spec: res.EffectiveSpec) -> bool:
        """No stream while the publisher proves its source: its Secret names no stream,
        its Pod stays (the kubelet retries the source by restarting it), and its readiness
        in that state means "the source delivers". True once it does (and any backoff is
        over): the caller creates a stream again."""
        pod = entry.pod
        now = self._now()
        if pod is not None and pod.ready and not pod.deleting:
            if entry.create_after is None or now >= entry.create_after:
                entry.standby = False
                entry.create_after = None
                entry.set_problem("create", None)
                logger.info("Source of %s delivers again; creating a stream", observed.owner)
                return True
            entry.wake(entry.create_after)
        try:
            if not entry.standby_secret:
                await self.children.write_standby_secret(observed)
                entry.standby_secret = True
            state = await self.children.ensure_pod(entry, observed, spec, "")
        except manifests.ManifestError as err:
            entry.set_problem(
                "spec", dec.Problem("InvalidSpec", str(err), True, dec.USER_FIX_RETRY_SECONDS)
            )
            return False
        except KubeError as err:
            self._kube_problem(entry, observed, err)
            return False
        entry.set_problem("kube", None)
        if state is PodState.WAITING:
            entry.wake(now + 2.0)
        return False

    # ---- children --------------------------------------------------------------------

    async def _ensure_children(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec, held: Held
    ) -> None:
        if held.delivery == "ServerPull":
            await self._remove_publisher(entry, observed)
            return
        entry.pull_children_removed = False
        if self.children.secret_outdated(held):
            if held.publish is None:
                # A resumed lease whose Secret names another stream: a keepalive brings a
                # token (the next pass, at once).
                held.keepalive_at = self._now()
                entry.wake(self._now())
            else:
                try:
                    await self.children.write_secret(observed, held)
                except KubeError as err:
                    secret = f"Secret {observed.namespace}/{res.publish_secret_name(observed.name)}"
                    await self._child_failed(entry, observed, err, child=secret)
                    return
        try:
            state = await self.children.ensure_pod(entry, observed, spec, held.secret_stream_id)
        except manifests.ManifestError as err:
            entry.set_problem(
                "spec", dec.Problem("InvalidSpec", str(err), True, dec.USER_FIX_RETRY_SECONDS)
            )
            return
        except KubeError as err:
            pod = f"publisher Pod {observed.namespace}/{res.publisher_pod_name(observed.name)}"
            await self._child_failed(entry, observed, err, child=pod)
            return
        entry.set_problem("spec", None)
        entry.set_problem("publisher", None)
        entry.set_problem("kube", None)
        entry.rejected_since = None
        if state is PodState.WAITING:
            entry.wake(self._now() + 2.0)
        else:
            entry.synced_generation = observed.generation

    async def _child_failed(
        self, entry: Entry, observed: Observed, err: KubeError, *, child: str
    ) -> None:
        """A Secret or Pod write failed. A refusal by the cluster (admission, quota) is a
        problem for the user; while nothing publishes because of it, the paid stream is
        kept at most `publisher_rejected_release_seconds`."""
        if err.namespace_terminating:
            # The namespace controller is deleting everything in it, this resource too:
            # its deletion comes next, there is nothing to report.
            entry.wake(self._now() + KUBE_RETRY_SECONDS)
            return
        problem = child_problem(err, observed, child=child)
        if not err.refused:
            entry.set_problem("kube", problem)
            entry.wake(self._now() + KUBE_RETRY_SECONDS)
            return
        entry.set_problem("publisher", problem)
        if entry.pod is not None:
            # An older Pod still publishes (a replacement was refused): keep the stream.
            entry.wake(self._now() + problem.retry_in)
            return
        now = self.clock()
        entry.rejected_since = entry.rejected_since or now
        waited = (now - entry.rejected_since).total_seconds()
        bound = self.settings.publisher_rejected_release_seconds
        if waited < bound:
            entry.wake(self._now() + min(problem.retry_in, bound - waited))
            return
        held = entry.held
        stream_id = held.stream_id if held else "?"
        await self._release(entry, observed, None, why="the cluster refused its publisher")
        self.events.warning(
            observed.ref(),
            "StreamReleased",
            f"Released remote stream {stream_id}: no publisher could run for {waited:.0f}s "
            f"({problem.message}); a new stream is created once the cluster would admit "
            "the Pod (checked with a dry run, at once when the spec changes)",
        )
        entry.rejected_since = None
        entry.admitted_generation = None
        entry.create_failures += 1
        entry.create_after = self._now() + self._admission_backoff(entry)

    def _admission_backoff(self, entry: Entry) -> float:
        return sch.backoff_delay(entry.create_failures, base=30.0, cap=600.0, rng=self.rng)

    async def _admitted(self, entry: Entry, observed: Observed, spec: res.EffectiveSpec) -> bool:
        """Before a create: would the cluster admit the publisher Pod? Asked once per
        generation with a dry run (a Pod that exists already was admitted), so a stream is
        never paid for a Pod that Pod Security or a quota refuses."""
        if entry.pod is not None or entry.admitted_generation == observed.generation:
            return True
        try:
            await self.children.admit_pod(entry, observed, spec)
        except manifests.ManifestError as err:
            entry.set_problem(
                "spec", dec.Problem("InvalidSpec", str(err), True, dec.USER_FIX_RETRY_SECONDS)
            )
            entry.create_after = self._now() + dec.USER_FIX_RETRY_SECONDS
            return False
        except KubeError as err:
            if err.namespace_terminating:
                entry.create_after = self._now() + KUBE_RETRY_SECONDS
                return False
            pod = f"publisher Pod {observed.namespace}/{res.publisher_pod_name(observed.name)}"
            problem = child_problem(err, observed, child=pod)
            if err.refused:
                entry.set_problem("publisher", problem)
                entry.create_failures += 1
                entry.create_after = self._now() + self._admission_backoff(entry)
            else:
                entry.set_problem("kube", problem)
                entry.create_after = self._now() + KUBE_RETRY_SECONDS
            return False
        entry.admitted_generation = observed.generation
        entry.set_problem("publisher", None)
        return True

    # ---- releasing -------------------------------------------------------------------

    async def _release(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec | None, *, why: str
    ) -> None:
        """Suspend (or an unusable spec): no remote stream, no Pod, no Secret."""
        entry.standby = False
        entry.standby_rounds = 0
        if entry.held is not None:
            await self._release_held(entry, observed, why=why)
        else:
            stream_id = res.parse_stream_id(
                _parse_status(observed).stream_id
            ) or res.parse_stream_id(observed.stream_id_annotation)
            if stream_id is not None and spec is not None:
                # After a restart: the stream the resource names is not held in memory.
                with contextlib.suppress(KubeError):
                    key = await self.secrets.value(
                        spec.api_key_secret, field=self._key_field(observed), owner=observed.owner
                    )
                    region = _parse_status(observed).region
                    await self._delete_remote(observed, key, stream_id, region=region, why=why)
        if observed.stream_id_annotation or observed.creating_annotation:
            try:
                entry.observed = await self.records.forget_stream_id(observed)
            except KubeError as err:
                await self._metadata_write_failed(entry, observed, err)
                return
        if not entry.children_removed:
            try:
                await self.children.delete_all(observed, entry.pod)
            except KubeError as err:
                self._kube_problem(entry, observed, err)
                return
            entry.children_removed = True
        entry.set_problem("kube", None)
        entry.set_problem("lease", None)
        entry.set_problem("create", None)

    async def _release_held(self, entry: Entry, observed: Observed, *, why: str) -> None:
        held = entry.held
        assert held is not None
        entry.held = None
        entry.released_stream_id = held.stream_id
        self.poller.cancel(entry.key)
        await self._delete_remote(
            observed, held.api_key, held.stream_id, region=held.region, why=why
        )

    async def _delete_remote(
        self,
        observed: Observed,
        api_key: SecretStr,
        stream_id: str,
        *,
        region: str | None,
        why: str,
    ) -> None:
        try:
            await self.leases.release(api_key, stream_id, region=region)
        except ov.OvershootError as err:
            # Keepalives already stopped: the lease ends the stream within 300 s.
            self.events.warning(
                observed.ref(),
                "DeleteFailed",
                f"Could not delete remote stream {stream_id} ({err.message}); its lease ends "
                "it within 300s",
            )
            return
        self.events.normal(observed.ref(), "StreamReleased", f"Released stream {stream_id} ({why})")
        logger.info("Released stream %s of %s (%s)", stream_id, observed.owner, why)

    async def _vanished(self, entry: Entry) -> None:
        """The watch (or a 404 on a write) says the resource is gone, finalizer or not
        (a finalizer removed by hand): release its stream and forget everything."""
        held = entry.held
        if held is not None:
            now = self.clock()
            entry.vanished_at = entry.vanished_at or now
            try:
                deleted = await self.leases.release(
                    held.api_key, held.stream_id, region=held.region
                )
            except ov.OvershootError as err:
                waited = (now - entry.vanished_at).total_seconds()
                if err.retryable and waited < VANISHED_GIVE_UP_SECONDS:
                    attempt = max(1, int(waited // 5) + 1)
                    entry.wake(self._now() + sch.backoff_delay(attempt, cap=15.0, rng=self.rng))
                    return
                logger.warning(
                    "Gave up deleting stream %s of vanished %s (%s); its lease ends it within 300s",
                    held.stream_id,
                    entry.owner,
                    err.message,
                )
            else:
                verb = "Deleted" if deleted else "Found already gone:"
                logger.info(
                    "%s remote stream %s of %s, which is gone", verb, held.stream_id, entry.owner
                )
        self._forget(entry, uid=held.uid if held else None)

    def _forget(self, entry: Entry, *, uid: str | None) -> None:
        self.registry.forget(entry.key, uid=uid, now=self._now())
        self.queue.forget(entry.key)
        self.poller.cancel(entry.key)
        if uid:
            self.events.forget(uid)

    # ---- deletion ----------------------------------------------------------------------

    async def _finalize(self, entry: Entry, observed: Observed) -> None:
        """Deletion: stop keepalives, DELETE the remote stream, let go of the finalizer.

        Never hangs (invariant 1): an unreachable API is retried with backoff until
        `delete_give_up_seconds` after deletion began; then the finalizer goes anyway,
        since the stopped keepalives let the lease end the stream within 300 s.
        """
        self.poller.cancel(entry.key)
        released = await self._release_for_deletion(entry, observed)
        if not released:
            return
        if observed.has_finalizer:
            try:
                await self.records.remove_finalizer(observed)
            except NotFoundError:
                pass
            except ConflictError:
                await self._refresh_observed(entry, observed)
                return
            except KubeError as err:
                logger.warning("Removing the finalizer of %s failed: %s", observed.owner, err)
                entry.wake(self._now() + KUBE_RETRY_SECONDS)
                return
            logger.info("Finalized %s", observed.owner)
        self._forget(entry, uid=observed.uid)

    async def _release_for_deletion(self, entry: Entry, observed: Observed) -> bool:
        """True once there is no stream to release (deleted, gone, or given up on)."""
        held = entry.held
        region: str | None
        if held is not None and held.uid == observed.uid:
            api_key: SecretStr | None = held.api_key
            stream_id: str | None = held.stream_id
            region = held.region
        else:
            status = _parse_status(observed)
            region = status.region
            stream_id = res.parse_stream_id(status.stream_id) or res.parse_stream_id(
                observed.stream_id_annotation
            )
            api_key = None
            if stream_id is not None:
                spec = self._spec(entry, observed)
                try:
                    if isinstance(spec, str):
                        raise SecretProblem(spec, reason="InvalidSpec")
                    api_key = await self.secrets.value(
                        spec.api_key_secret, field=self._key_field(observed), owner=observed.owner
                    )
                except KubeError as err:
                    self.events.warning(
                        observed.ref(),
                        "DeleteSkipped",
                        f"No API key to delete stream {stream_id} ({err}); its lease ends it "
                        "within 300s",
                    )
                    return True
        if stream_id is None or api_key is None:
            return True
        try:
            deleted = await self.leases.release(api_key, stream_id, region=region)
        except ov.OvershootError as err:
            started = observed.deletion_started or self.clock()
            waited = (self.clock() - started).total_seconds()
            if err.retryable and waited < self.settings.delete_give_up_seconds:
                delay = sch.backoff_delay(
                    max(1, int(waited // 5) + 1),
                    cap=15.0,
                    retry_after=err.retry_after
                    if isinstance(err, ov.RateLimited | ov.OvershootUnavailable)
                    else None,
                    rng=self.rng,
                )
                entry.wake(self._now() + delay)
                # While DELETE keeps failing, `kubectl get ovs` says why the resource stays.
                await self._write_status(entry, observed, View(deleting=True))
                return False
            self.events.warning(
                observed.ref(),
                "DeleteAbandoned",
                f"Gave up deleting stream {stream_id} after {waited:.0f}s ({err.message}); "
                "keepalives stopped, so its lease ends it within 300s",
            )
            logger.warning(
                "Gave up deleting stream %s of %s: %s", stream_id, observed.owner, err.message
            )
        else:
            verb = "Deleted" if deleted else "Stream already gone:"
            logger.info("%s remote stream %s of %s", verb, stream_id, observed.owner)
        entry.held = None
        return True

    # ---- writes and their failures -----------------------------------------------------

    async def _write_status(self, entry: Entry, observed: Observed, view: View) -> None:
        self._announce(entry, observed)
        result = await self.status.write(entry, observed, view, now=self.clock())
        if result is WriteResult.GONE:
            await self._refresh_observed(entry, observed)
        elif result is WriteResult.FAILED:
            entry.wake(self._now() + KUBE_RETRY_SECONDS)

    def _announce(self, entry: Entry, observed: Observed) -> None:
        """One Warning Event when a problem appears or its reason changes: its message
        may change with every retry ("retrying in 30s"), which is news for the condition,
        not for another Event."""
        problem = dec.top_problem(entry.problems)
        said = problem.reason if problem is not None else None
        if said != entry.announced:
            entry.announced = said
            if problem is not None:
                self.events.warning(observed.ref(), problem.reason, problem.message)

    def _kube_problem(self, entry: Entry, observed: Observed, err: KubeError) -> None:
        entry.set_problem("kube", dec.problem_from_error(err, owner=observed.owner, api_key_ref=""))
        entry.wake(self._now() + KUBE_RETRY_SECONDS)

    async def _metadata_write_failed(
        self, entry: Entry, observed: Observed, err: KubeError
    ) -> None:
        if isinstance(err, NotFoundError | ConflictError) or err.status == 422:
            # Gone, replaced, or changed since the watch said (resourceVersion): read it.
            await self._refresh_observed(entry, observed)
            return
        self._kube_problem(entry, observed, err)

    async def _refresh_observed(self, entry: Entry, observed: Observed) -> None:
        """A write found the object other than the watch said: read it now, and let the
        next pass act on that (the watch will say the same soon)."""
        try:
            body = await self.kube.get_stream_resource(observed.namespace, observed.name)
        except KubeError as err:
            self._kube_problem(entry, observed, err)
            return
        entry.observed = Observed.from_body(body) if body is not None else None
        entry.wake(self._now())

    # ---- metrics -----------------------------------------------------------------------

    async def _gauge_loop(self) -> None:
        # The gauges walk every entry: on a timer, not per keepalive, which made each
        # keepalive O(streams) (quadratic CPU at thousands of streams).
        while True:
            self._refresh_gauges()
            await asyncio.sleep(GAUGE_INTERVAL_SECONDS)

    def _refresh_gauges(self) -> None:
        counts: dict[str, int] = dict.fromkeys(res.PHASES, 0)
        soonest: float | None = None
        keepalives_per_second = 0.0
        now_ms = self.clock().timestamp() * 1000
        for entry in self.registry:
            if entry.phase in counts:
                counts[entry.phase] += 1
            held = entry.held
            if held is None:
                continue
            left = (held.expires_at_ms - now_ms) / 1000
            soonest = left if soonest is None else min(soonest, left)
            keepalives_per_second += 1.0 / self._interval(entry)
        for phase, n in counts.items():
            metrics.STREAMS_BY_PHASE.labels(phase).set(n)
        if soonest is not None:
            metrics.SECONDS_TO_EXPIRY.set(soonest)
        metrics.LEADER.set(1 if self.leader.may_act() else 0)
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


@dataclass(frozen=True)
class SourceCredentials:
    """A camera's login from the Secret spec.source names, and that Secret's version."""

    username: SecretStr
    password: SecretStr
    version: str


def _replacement(held: Held, decision: dlv.Decision, revision: str | None) -> str | None:
    """Why the held stream cannot serve the spec any more (another delivery, another pulled
    camera, another region asked for), or None."""
    if held.delivery != decision.delivery:
        return f"delivery changes from {held.delivery} to {decision.delivery} ({decision.why})"
    if revision is None or held.revision is None or held.revision == revision:
        return None
    if decision.delivery == "ServerPull":
        return "what Overshoot pulls changed (spec.source, its credentials Secret or spec.region)"
    return "spec.region changed"


def _carry_over(
    held: Held, status: res.OvershootStreamStatus, *, region: str | None = None
) -> None:
    """What status says of a stream taken over after a restart: its delivery, region and
    revision."""
    held.delivery = status.delivery or "Publisher"
    held.region = region or status.region
    held.revision = status.stream_revision


def _parse_status(observed: Observed) -> res.OvershootStreamStatus:
    """The status as written before; a malformed one (edited by hand, an older operator)
    reads as empty rather than stopping the resource's processing for good."""
    try:
        return res.parse_status(observed.status)
    except ValidationError:
        return res.OvershootStreamStatus()


def request_gate(
    leader: Gate, limiter: CallLimiter
) -> Callable[[ov.Endpoint, Priority], contextlib.AbstractAsyncContextManager[None]]:
    """The Overshoot client's gate: every HTTP request asks the leader, then the limiter."""

    @contextlib.asynccontextmanager
    async def gate(endpoint: ov.Endpoint, priority: Priority) -> Any:
        if endpoint is ov.Endpoint.KEEPALIVE:
            leader.check_renew()
        else:
            leader.check_act()
        async with limiter.slot(priority):
            # Asked again after the wait for a slot: leadership may have gone meanwhile.
            if endpoint is ov.Endpoint.KEEPALIVE:
                leader.check_renew()
            else:
                leader.check_act()
            yield

    return gate
