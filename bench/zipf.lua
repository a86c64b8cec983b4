-- wrk: GET /page/N with N drawn from a Zipf distribution over PAGES pages (exponent
-- ZIPF_S, default 0.8), the ranks shuffled over the page numbers with a fixed seed (the
-- same popular pages in every run), the draws seeded from SEED.
local pages = tonumber(os.getenv("PAGES")) or 150000
local s = tonumber(os.getenv("ZIPF_S")) or 0.8
local cdf, perm = {}, {}
init = function(args)
  math.randomseed(7)
  local acc = 0
  for i = 1, pages do acc = acc + 1 / i ^ s; cdf[i] = acc; perm[i] = i - 1 end
  for i = pages, 2, -1 do local j = math.random(1, i); perm[i], perm[j] = perm[j], perm[i] end
  for i = 1, pages do cdf[i] = cdf[i] / acc end
  math.randomseed(tonumber(os.getenv("SEED")) or os.time())
end
request = function()
  local u, lo, hi = math.random(), 1, pages
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/page/" .. perm[lo])
end
