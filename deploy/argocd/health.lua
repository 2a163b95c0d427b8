-- Argo CD health of an OvershootStream (overshoot.ai/v1alpha1), from what the operator
-- wrote in status: observedGeneration first (a status about an older spec says nothing
-- about this one), then phase and the Ready condition.
--   Healthy      Ready is True for the current generation (frames are reaching Overshoot)
--   Progressing  no status yet, status for an older generation, Pending / Provisioning,
--                transient trouble the operator retries on its own
--   Degraded     phase Degraded or Failed (a stale camera of a ServerPull stream too), or
--                Ready False for a reason a user must fix
--   Suspended    spec.suspend is true and the operator has released the stream
-- A resource being deleted never reaches this script: Argo CD answers Progressing
-- ("Pending deletion") for any object with a deletionTimestamp before it runs a health check.
-- Install: deploy/argocd/README.md.

-- Condition reasons that only a user can fix (operator/overshoot_operator/decisions.py and
-- kube.py); the operator retries them slowly, so waiting will not help.
local userFixable = {
  SecretNotFound = true,
  SecretKeyMissing = true,
  SecretKeyInvalid = true,
  ApiKeyRejected = true,
  InsufficientCredits = true,
  InvalidSpec = true,
  PublisherRejected = true,
  RemoteStreamEnded = true,
  -- delivery ServerPull: Overshoot cannot open or will not pull the camera
  SourceUnreachable = true,
  SourceRefused = true,
  ServerPullUnsupported = true,
  -- spec.region names a region Overshoot refuses
  RegionRejected = true,
  -- a publisher stream no frame reached was released until the source delivers
  WaitingForSource = true,
}

local function findCondition(conditions, conditionType)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == conditionType then
      return condition
    end
  end
  return nil
end

local function describe(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition ~= nil and condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return fallback
end

local hs = {}
local generation = obj.metadata.generation
local status = obj.status
local suspend = obj.spec ~= nil and obj.spec.suspend == true

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local ready = findCondition(status.conditions, "Ready")
local stale = generation ~= nil and status.observedGeneration < generation
if not stale and ready ~= nil and ready.observedGeneration ~= nil and generation ~= nil then
  stale = ready.observedGeneration < generation
end
if stale then
  hs.status = "Progressing"
  if suspend then
    hs.message = "Suspending: waiting for the operator to observe generation " .. generation
  else
    hs.message = "Waiting for the operator to observe generation " .. generation
  end
  return hs
end

local phase = status.phase

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(ready, "Suspended by spec.suspend")
  return hs
end
if suspend then
  -- Observed, yet not Suspended: the operator is still releasing the stream.
  hs.status = "Progressing"
  hs.message = "Suspending: releasing the remote stream"
  return hs
end

if phase == "Failed" or phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Phase " .. phase)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local fps = status.stream ~= nil and status.stream.recentFps or nil
  if fps ~= nil then
    hs.message = describe(ready, "Publishing") .. " (" .. fps .. " fps)"
  else
    hs.message = describe(ready, "Publishing")
  end
  return hs
end

if ready ~= nil and ready.status == "False" and userFixable[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready, ready.reason)
  return hs
end

-- Pending, Provisioning, transient errors being retried, or a phase this script does not
-- know yet (a newer operator): the operator is still at work.
hs.status = "Progressing"
hs.message = describe(ready, "Phase " .. (phase or "unknown"))
return hs
