-- Argo CD health check for cloudimage.dev/CloudImage.
--
-- Reads the conditions the operator writes (see the README, "Status"):
--   Healthy      Ready=True: the image exists in the cloud and is active.
--   Degraded     Stalled=True: a person has to act (image not found,
--                credentials missing or refused, forbidden, invalid spec,
--                a deletion blocked by a protected image, ...). The message
--                is the condition's reason and message.
--   Progressing  everything else: the first check, a spec change not yet
--                observed, a transient retry (Reconciling=True), a deletion
--                under way without a blocker.
--
-- Argo CD itself reports any object with a deletionTimestamp as Progressing
-- ("Pending deletion") without running health checks; the deletion branches
-- below serve tools that do run this script on deleted objects.
--
-- Lua 5.1 with only the base library: Argo CD opens no `string` library
-- unless resource.customizations.useOpenLibs is set.
local hs = {}

local function condition(type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function says(c)
  local reason = c.reason or "Unknown"
  if c.message == nil or c.message == "" then
    return reason
  end
  return reason .. ": " .. c.message
end

local ready = condition("Ready")
local stalled = condition("Stalled")
local reconciling = condition("Reconciling")
local deleting = condition("Deleting")

-- Being deleted: blocked (Stalled carries the Deleting reason), or under way.
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  if is_true(stalled) then
    hs.status = "Degraded"
    hs.message = "deletion blocked: " .. says(stalled)
  elseif is_true(deleting) then
    hs.status = "Progressing"
    hs.message = "deleting the image: " .. says(deleting)
  else
    hs.status = "Progressing"
    hs.message = "being deleted"
  end
  return hs
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator's first check of the image"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to check generation " .. tostring(generation)
  return hs
end

if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = says(stalled)
  return hs
end

if is_true(reconciling) then
  hs.status = "Progressing"
  hs.message = says(reconciling)
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end

hs.status = "Progressing"
hs.message = says(ready)
return hs
