-- Which OvershootStream actions Argo CD offers: refresh always; suspend or resume
-- depending on spec.suspend.
local actions = {}
local suspended = obj.spec ~= nil and obj.spec.suspend == true
actions["refresh"] = {["disabled"] = false}
actions["suspend"] = {["disabled"] = suspended}
actions["resume"] = {["disabled"] = not suspended}
return actions
