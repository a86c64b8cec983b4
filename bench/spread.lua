-- wrk script: a random spread over PAGES URLs under PREFIX (requests pre-built so Lua
-- costs wrk as little as possible).
local prefix = os.getenv("PREFIX") or "/page/"
local pages = tonumber(os.getenv("PAGES") or "1000")
local reqs = {}

init = function(args)
  math.randomseed(42)
  for i = 0, pages - 1 do
    reqs[i + 1] = wrk.format("GET", prefix .. i)
  end
end

request = function()
  return reqs[math.random(1, pages)]
end
