-- Start a new remote stream and publisher again (spec.suspend).
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = false
return obj
