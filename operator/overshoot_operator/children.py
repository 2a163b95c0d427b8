"""The resource's children: the publish Secret and the publisher Pod.

Role: bring the children in line with the held stream and the spec, from what the
registry knows (the Pod as the Pod watch last saw it; which stream the Secret carries).
Called by the controller only right after it read that the resource exists and is not
being deleted, so a child is never (re)created for a resource that is gone; both carry an
ownerReference, so the garbage collector removes them with their owner.

- The Secret carries the newest token of the held stream (invariant 5: tokens live only
  there). It is written when a keepalive brought a token or the stream changed.
- The Pod is created when missing and replaced (delete, then create once it is gone) when
  its rendered spec changed or it ended for good. It carries the id of the stream its
  Secret names (`PUBLISH_STREAM_ANNOTATION`); when a recreated stream changes the Secret,
  the annotation changes too, because the kubelet swaps in a changed Secret volume only
  when it syncs the Pod: at once on a Pod update, else at its periodic sync (a minute or
  more). Token rotations are not announced: a rotated token only matters at the next
  reconnect, and the old one stays valid for longer than the kubelet takes anyway. A Pod the cluster refuses (Pod Security,
  quota, LimitRange, a webhook) is a `PublisherRejected` problem carrying the API server's
  message, not a silent retry.

Boundary: manifests.py to build, kube.py to write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from enum import Enum
from typing import Any

from overshoot_operator import decisions as dec
from overshoot_operator import manifests
from overshoot_operator import resource as res
from overshoot_operator.kube import ConflictError, Kube, KubeError, NotFoundError
from overshoot_operator.registry import DesiredPod, Entry, Held, Observed, PodFacts
from overshoot_operator.settings import OperatorSettings
from overshoot_publisher.config import PUBLISH_STREAM_ID_KEY

logger = logging.getLogger(__name__)

# A replaced or terminating Pod is looked at again after this long.
POD_RECHECK_SECONDS = 2.0


class PodState(Enum):
    READY_AS_WANTED = "as-wanted"  # exists with the wanted spec (ready or not)
    WAITING = "waiting"  # being replaced or terminating: look again soon
    CREATED = "created"


class Children:
    def __init__(self, kube: Kube, settings: OperatorSettings) -> None:
        self._kube = kube
        self._settings = settings

    # ---- the publish Secret ----------------------------------------------------------

    def secret_outdated(self, held: Held) -> bool:
        return held.publish is not None or held.secret_stream_id != held.stream_id

    async def write_secret(self, observed: Observed, held: Held) -> bool:
        """Write the held stream's newest token; False if there is no token to write yet
        (a resumed lease whose Secret names another stream needs a keepalive first)."""
        publish = held.publish
        if publish is None:
            return False
        manifest = manifests.build_publish_secret(
            observed.ref(),
            url=publish.url,
            token=publish.token.get_secret_value(),
            stream_id=held.stream_id,
        )
        await self._kube.apply_secret(
            manifest, exists=held.secret_stream_id is not None, urgent=True
        )
        if held.publish is publish:
            held.publish = None
        held.secret_stream_id = held.stream_id
        return True

    async def write_standby_secret(self, observed: Observed) -> None:
        """The publish Secret naming no stream (standby: the operator holds none while the
        publisher proves its source); the old token of a released stream is of no use."""
        manifest = manifests.build_publish_secret(observed.ref(), url="", token="", stream_id="")
        await self._kube.apply_secret(manifest, exists=True, urgent=True)

    async def read_secret_stream_id(self, observed: Observed) -> str | None:
        secret = await self._kube.read_publish_secret(
            observed.namespace, res.publish_secret_name(observed.name)
        )
        return (secret or {}).get(PUBLISH_STREAM_ID_KEY)

    # ---- the publisher Pod -----------------------------------------------------------

    def desired_pod(self, entry: Entry, observed: Observed, spec: res.EffectiveSpec) -> DesiredPod:
        cached = entry.pod_cache
        if cached is not None and cached.generation == observed.generation:
            return cached
        body = {
            "apiVersion": res.API_VERSION,
            "kind": res.KIND,
            "metadata": {
                "namespace": observed.namespace,
                "name": observed.name,
                "uid": observed.uid,
            },
        }
        manifest = manifests.build_publisher_pod(body, spec, self._settings)
        desired = DesiredPod(observed.generation, manifest, manifests.desired_config_hash(manifest))
        entry.pod_cache = desired
        return desired

    async def admit_pod(self, entry: Entry, observed: Observed, spec: res.EffectiveSpec) -> None:
        """Raise KubeError (`refused`) unless admission would let the Pod for this spec be
        created: a server-side dry run, so no remote stream is paid for a Pod the cluster
        refuses. A Pod of that name existing already (409) means admission passed."""
        desired = self.desired_pod(entry, observed, spec)
        with contextlib.suppress(ConflictError):
            await self._kube.create_pod(desired.manifest, dry_run=True)

    async def ensure_pod(
        self, entry: Entry, observed: Observed, spec: res.EffectiveSpec, stream_id: str | None
    ) -> PodState:
        """Create, keep or replace the Pod, and tell it of `stream_id`, the stream its
        Secret names. Raises ManifestError for a spec the builder cannot render, KubeError
        for a call that failed (`refused` for admission)."""
        desired = self.desired_pod(entry, observed, spec)
        pod = entry.pod
        name = res.publisher_pod_name(observed.name)
        if pod is None:
            try:
                created = await self._kube.create_pod(_with_stream(desired.manifest, stream_id))
            except ConflictError:
                # It exists after all (the Pod watch had not listed it yet): look at it.
                found = await self._kube.get_pod(observed.namespace, name)
                if found is None:
                    return PodState.WAITING
                entry.pod = PodFacts.from_body(
                    found, hash_annotation=res.PUBLISHER_CONFIG_HASH_ANNOTATION
                )
                return await self.ensure_pod(entry, observed, spec, stream_id)
            logger.info("Created Pod %s/%s", observed.namespace, name)
            entry.pod = PodFacts.from_body(
                created, hash_annotation=res.PUBLISHER_CONFIG_HASH_ANNOTATION
            )
            return PodState.CREATED
        if pod.deleting:
            return PodState.WAITING
        foreign = pod.owner_uid is not None and pod.owner_uid != observed.uid
        if foreign or pod.lost or pod.config_hash != desired.config_hash:
            if not foreign and not pod.lost:
                # The running Pod goes only once its successor would be admitted: a spec
                # the cluster refuses leaves the old publisher publishing, and says so.
                await self.admit_pod(entry, observed, spec)
            await self._kube.delete_pod(observed.namespace, name, uid=pod.uid)
            logger.info("Deleted Pod %s/%s to replace it", observed.namespace, name)
            return PodState.WAITING
        if stream_id is not None and pod.publish_stream != stream_id:
            await self._announce_stream(entry, observed, pod, stream_id)
        return PodState.READY_AS_WANTED

    async def _announce_stream(
        self, entry: Entry, observed: Observed, pod: PodFacts, stream_id: str
    ) -> None:
        name = res.publisher_pod_name(observed.name)
        # Gone or replaced meanwhile (404, or 409 on the uid): the Pod watch says so next.
        with contextlib.suppress(NotFoundError, ConflictError):
            await self._kube.annotate_pod(
                observed.namespace,
                name,
                uid=pod.uid,
                annotations={res.PUBLISH_STREAM_ANNOTATION: stream_id},
            )
            logger.info(
                "Annotated Pod %s/%s with stream %s (the kubelet swaps in its Secret now)",
                observed.namespace,
                name,
                stream_id,
            )
        # Until the watch delivers the patched Pod, do not patch it again.
        entry.pod = dataclasses.replace(pod, publish_stream=stream_id)

    async def delete_pod(self, observed: Observed, pod: PodFacts | None) -> None:
        await self._kube.delete_pod(
            observed.namespace,
            res.publisher_pod_name(observed.name),
            uid=pod.uid if pod is not None else None,
        )

    async def delete_all(self, observed: Observed, pod: PodFacts | None) -> None:
        """Suspend: no Pod and no Secret (nothing could use a token of no stream)."""
        await self.delete_pod(observed, pod)
        await self._kube.delete_secret(observed.namespace, res.publish_secret_name(observed.name))


def _with_stream(manifest: dict[str, Any], stream_id: str | None) -> dict[str, Any]:
    """The rendered Pod (cached per generation, so not changed in place) carrying the
    stream its Secret names."""
    if stream_id is None:
        return manifest
    meta = manifest["metadata"]
    annotations = {**meta.get("annotations", {}), res.PUBLISH_STREAM_ANNOTATION: stream_id}
    return {**manifest, "metadata": {**meta, "annotations": annotations}}


def child_problem(err: KubeError, observed: Observed, *, child: str) -> dec.Problem:
    if err.refused:
        return dec.publisher_rejected(err, owner=observed.owner, child=child)
    return dec.problem_from_error(err, owner=observed.owner, api_key_ref="")
