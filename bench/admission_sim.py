#!/usr/bin/env python3
"""The memory tier's admission filter (`HotTier::admits`), simulated: hit rate and
admissions per request of a tier of N pages (LRU, a stand-in for quick_cache) behind the
filter with 4 and with 1 slot per page the tier holds, under uniform and Zipf access over
P pages. As in isr, the tier keeps every page while it is under 15/16 full.

    python3 bench/admission_sim.py P N REQUESTS     # e.g. 150000 15000 1500000
"""
import bisect
import itertools
import random
import sys
from collections import OrderedDict


def run(P, N, per, s, reqs, seed=1):
    rnd = random.Random(seed)
    if s == 0:
        draw = lambda: rnd.randrange(P)
    else:
        w = [1 / (i + 1) ** s for i in range(P)]
        cdf = list(itertools.accumulate(w)); tot = cdf[-1]
        perm = list(range(P)); rnd.shuffle(perm)
        draw = lambda: perm[bisect.bisect_left(cdf, rnd.random() * tot)]
    slots = [0] * (N * per); tier = OrderedDict(); hits = adm = 0
    salt = rnd.getrandbits(64)
    for _ in range(reqs):
        k = draw()
        if k in tier:
            tier.move_to_end(k); hits += 1; continue
        if len(tier) < N * 15 // 16:
            ok = True
        else:
            h = hash((k, salt)) & ((1 << 63) - 1) | 1
            j = (h >> 16) % len(slots)
            ok = slots[j] == h; slots[j] = h
        if ok:
            adm += 1; tier[k] = 1
            if len(tier) > N: tier.popitem(last=False)
    return hits / reqs, adm / reqs


P, N = int(sys.argv[1]), int(sys.argv[2])  # pages, tier size in pages
for s in (0, 0.6, 0.8, 1.0):
    for per in (4, 1):
        h, a = run(P, N, per, s, int(sys.argv[3]))
        print(f"P={P} N={N} zipf s={s} SEEN_PER_ITEM={per}: hit rate {h:.3f}, admissions per request {a:.3f}", flush=True)
