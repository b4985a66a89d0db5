-- The edge's first look at each request (Lua state is per Envoy worker thread).
--
-- 1. gRPC or JSON? Marked in dynamic metadata (iceos.edge.grpc) from the caller's content-type,
--    before the transcoder rewrites JSON calls into gRPC ones, so that the local-reply mappers
--    answer each in its own form.
--
-- 2. The cache of ext_authz verdicts (docs/security.md, "Caches and revocation").
-- A request whose exact Authorization header the registry's Authorization/Check accepted less
-- than ${ttl_ms} ms ago skips the Check: this filter marks it in dynamic metadata
-- (iceos.edge.verified), and the ext_authz filter is configured to run only when that mark is
-- absent. Dynamic metadata cannot be set by a caller. The Check answer says how long it may be
-- reused (cache_ms: what is left of the registry's own cache entry, never past the token's
-- expiry), so the edge never trusts a token longer than the services do: a revoked token is
-- refused everywhere within ICEOS_AUTH_CACHE_TTL_S. Every service still authenticates each call.
--
-- Lua state is per Envoy worker thread: each worker has its own small cache. Denials are never
-- cached. Both tables are bounded and simply dropped when full.
local TTL_MS = ${ttl_ms}
local MAX_ENTRIES = 10000
local verdicts, size = {}, 0
local pending, pending_size, next_slot = {}, 0, 0

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type")
  if content_type ~= nil and string.sub(content_type, 1, 16) == "application/grpc" then
    handle:streamInfo():dynamicMetadata():set("iceos.edge", "grpc", true)
  end
  local authorization = headers:get("authorization")
  if authorization == nil or TTL_MS <= 0 then
    return
  end
  local verdict = verdicts[authorization]
  local now = handle:timestamp()
  -- {filled at, good until, token}: a clock that went backwards voids the entry.
  if verdict ~= nil and verdict[1] <= now and now < verdict[2] then
    local metadata = handle:streamInfo():dynamicMetadata()
    metadata:set("iceos.edge", "verified", true)
    metadata:set("iceos.edge", "token", verdict[3])  -- for the access log: who, never the secret
    return
  end
  -- Remember which header this stream carried, for the response side. A number in metadata,
  -- never the secret.
  if pending_size >= MAX_ENTRIES then
    pending, pending_size = {}, 0
  end
  next_slot = next_slot + 1
  pending[next_slot] = authorization
  pending_size = pending_size + 1
  handle:streamInfo():dynamicMetadata():set("iceos.edge", "slot", next_slot)
end

function envoy_on_response(handle)
  local metadata = handle:streamInfo():dynamicMetadata()
  local edge = metadata:get("iceos.edge")
  if edge == nil or edge["slot"] == nil then
    return
  end
  local authorization = pending[edge["slot"]]
  if authorization == nil then
    return
  end
  pending[edge["slot"]] = nil
  pending_size = pending_size - 1
  -- Present only when the Check allowed this request (denials carry no metadata).
  local check = metadata:get("envoy.filters.http.ext_authz")
  if check == nil or check["cache_ms"] == nil then
    return
  end
  metadata:set("iceos.edge", "token", check["token"])
  if size >= MAX_ENTRIES then
    verdicts, size = {}, 0
  end
  if verdicts[authorization] == nil then
    size = size + 1
  end
  local now = handle:timestamp()
  verdicts[authorization] = {now, now + math.min(TTL_MS, check["cache_ms"]), check["token"]}
end
