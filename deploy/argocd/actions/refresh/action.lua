-- Ask the operator for an immediate keepalive and status refresh: any new value of the
-- overshoot.ai/refresh annotation does it (operator/overshoot_operator/resource.py).
-- Argo CD's sandbox has no global `os`: its safe os (time and date only) is a module, as in
-- Argo CD's own built-in actions.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local previous = obj.metadata.annotations["overshoot.ai/refresh"]
local value = tostring(os.time())
if value == previous then
  -- A second click within the same second must still change the value. Argo CD's sandbox
  -- has no string library: plain comparison and concatenation only.
  value = value .. ".1"
end
obj.metadata.annotations["overshoot.ai/refresh"] = value
return obj
