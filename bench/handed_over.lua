-- The first request of each of the 64 connections carries a body, which hands the
-- connection to hyper for the rest of its life; every later request is a plain GET.
local n = 0
request = function()
  n = n + 1
  if n <= 64 then
    return wrk.format("GET", "/big/1", {["Content-Length"] = "1"}, "x")
  end
  return wrk.format("GET", "/big/1")
end
