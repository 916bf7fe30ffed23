-- Argo CD health of a SiteCache (sitecache.dev), from the conditions its controller writes:
-- the same reading as kstatus's (Flux, cli-utils), and Healthy only once a generation is
-- promoted. It uses only what Argo CD gives scripts without open libraries.
local hs = {}

local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the sitecache controller"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the sitecache controller to observe the latest spec"
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  if stalled.reason == "Suspended" then
    hs.status = "Suspended"
  else
    hs.status = "Degraded"
  end
  hs.message = stalled.message
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reconciling.message
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  if obj.spec ~= nil and obj.spec.suspend == true then
    hs.status = "Suspended"
    hs.message = "spec.suspend is true: no new snapshots; " .. ready.message
    return hs
  end
  hs.status = "Healthy"
  hs.message = ready.message
  -- A failing refresh leaves the promoted generation in service: still healthy, and said.
  local degraded = condition("Degraded")
  if degraded ~= nil and degraded.status == "True" then
    hs.message = ready.message .. "; " .. degraded.message
  end
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = ready.message
else
  hs.message = "Waiting for the first generation"
end
return hs
