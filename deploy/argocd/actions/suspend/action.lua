-- Release the remote stream and the publisher Pod, keep the resource (spec.suspend).
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = true
return obj
