-- The first request of each of the 64 connections is special, every later one is a plain
-- GET of URL. FIRST=body: it carries a body, which hands the connection to hyper for the
-- rest of its life. FIRST=miss: it is a miss, on a page of its own.
local url = os.getenv("URL") or "/big/1"
local first = os.getenv("FIRST") or "body"
local n = 0
request = function()
  n = n + 1
  if n <= 64 then
    if first == "miss" then
      return wrk.format("GET", "/page/" .. (1000 + n))
    end
    return wrk.format("GET", url, {["Content-Length"] = "1"}, "x")
  end
  return wrk.format("GET", url)
end
