#!/usr/bin/env python3
"""isr with Redis as the shared store (issue 4), against isr with its embedded store:

1. memory-tier hits: the same 1,000-URL spread on isr (embedded store) and isr (Redis),
   both with a 256 MiB memory tier: every hit comes from memory;
2. store hits: the same spread with the memory tier off (`memory = 0`), so every hit
   reads the store: redb on local disk vs one Redis round trip;
3. invalidation propagation across three nodes sharing one Redis: revalidate a tag on
   node A, then poll nodes B and C until both answer STALE; report p50/p99 of the time
   from A's API answer to the last node seeing it.

    python3 bench/cluster.py [--reps 3] [--duration 10] [--rounds 200]

Uses bench/run.py's servers, pinning (servers on CPU 0, wrk on CPU 1) and wrk settings."""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

REDIS_PORT = 19200
PORTS = {"isr-embedded": 19201, "isr-redis": 19202, "isr-embedded-nomem": 19203,
         "isr-redis-nomem": 19204, "node-a": 19211, "node-b": 19212, "node-c": 19213}
ROUTES = """[[route]]
match = "/page/{n}"
revalidate = 60
tags = ["p-{n}"]
"""


def start_redis(s, work):
    d = os.path.join(work, "redis")
    os.makedirs(d)
    s.start("redis", ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no", "--dir", d], cpu="0")
    for _ in range(200):
        if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True,
                          text=True).stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def isr(s, work, name, memory, redis_prefix=None):
    toml = f'[cache]\nmemory = "{memory}"\n{ROUTES}'
    if redis_prefix:
        toml += f'[redis]\nurl = "redis://127.0.0.1:{REDIS_PORT}/0"\nprefix = "{redis_prefix}"\n'
    run.start_isr(s, name, work, PORTS[name], run.ORIGIN, toml)


class Client:
    """One keep-alive connection."""

    def __init__(self, port):
        self.c = http.client.HTTPConnection("127.0.0.1", port)

    def get(self, path):
        self.c.request("GET", path)
        r = self.c.getresponse()
        r.read()
        return r.getheader("x-isr-cache")

    def revalidate(self, tags):
        self.c.request("POST", "/_isr/revalidate", body=json.dumps({"tags": tags}),
                       headers={"Authorization": "Bearer bench-secret",
                                "Content-Type": "application/json"})
        r = self.c.getresponse()
        r.read()
        assert r.status == 200, r.status


def propagation(rounds):
    """Each revalidation names two tags: page n is watched on node B, page n + rounds on
    node C (a node that regenerates its page cannot then hide the other's STALE)."""
    a, b, c = Client(PORTS["node-a"]), Client(PORTS["node-b"]), Client(PORTS["node-c"])
    for n in range(rounds):
        for node, page in ((b, n), (c, n + rounds)):
            a.get(f"/page/{page}")
            node.get(f"/page/{page}")
            assert node.get(f"/page/{page}") == "HIT"
    lat = []
    for n in range(rounds):
        sent = time.perf_counter()
        a.revalidate([f"p-{n}", f"p-{n + rounds}"])
        answered = time.perf_counter()
        pending = [(b, n), (c, n + rounds)]
        while pending:
            pending = [(x, page) for x, page in pending if x.get(f"/page/{page}") != "STALE"]
            if time.perf_counter() - answered > 5:
                raise RuntimeError(f"revalidation {n} did not reach every node in 5 s")
        seen = time.perf_counter()
        lat.append({"api_ms": (answered - sent) * 1000, "propagation_ms": (seen - answered) * 1000})
    return lat


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    run.ensure_tools()
    if not shutil.which("redis-server"):
        run.sh("apt-get install -y -qq redis-server")
    run.PORTS.update(PORTS)
    work = tempfile.mkdtemp(prefix="isr-cluster-")
    os.chmod(work, 0o755)
    s = run.Servers(work)
    hit_targets = ["isr-embedded", "isr-redis", "isr-embedded-nomem", "isr-redis-nomem"]
    rows = {}
    try:
        s.start("origin", [os.path.join(run.ROOT, "target/release/examples/bench_origin"), "serve", run.ORIGIN], cpu="1")
        run.wait_up(f"http://{run.ORIGIN}/_count")
        start_redis(s, work)
        isr(s, work, "isr-embedded", "256MiB")
        isr(s, work, "isr-redis", "256MiB", "hits")
        isr(s, work, "isr-embedded-nomem", "0")
        isr(s, work, "isr-redis-nomem", "0", "nomem")
        for n in range(run.PAGES):
            for t in hit_targets:
                for _ in range(2):
                    run.get(f"http://127.0.0.1:{PORTS[t]}/page/{n}")
        for rep in range(args.reps):
            for t in hit_targets:
                r = run.wrk(t, "spread-16k", args.duration, s.procs[t].pid)
                rows.setdefault(t, []).append(r)
                print(f"rep {rep} {t:20} {r['rps']:>9.0f} rps  p99 {r['p99_ms']} ms  non-2xx {r['non_2xx']}", flush=True)
        for t in hit_targets:
            s.stop(t)
        for name in ("node-a", "node-b", "node-c"):
            isr(s, work, name, "256MiB", "prop")
        lat = propagation(args.rounds)
    finally:
        s.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    out = [f"{redis_version}", "",
           "| spread-16k, 1,000 URLs | rps (median) | × isr embedded (same tier) | p99 ms |",
           "|---|---:|---:|---:|"]
    for t, base in (("isr-embedded", "isr-embedded"), ("isr-redis", "isr-embedded"),
                    ("isr-embedded-nomem", "isr-embedded-nomem"), ("isr-redis-nomem", "isr-embedded-nomem")):
        ratio = run.median([r["rps"] / b["rps"] for r, b in zip(rows[t], rows[base])])
        out.append(f"| {t} | {run.median([r['rps'] for r in rows[t]]):,.0f} | {ratio:.2f} | "
                   f"{run.median([r['p99_ms'] for r in rows[t]])} |")
    prop = [x["propagation_ms"] for x in lat]
    api = [x["api_ms"] for x in lat]
    out += ["", f"Invalidation across 3 nodes ({len(lat)} revalidations): API answer p50 {pct(api, 50):.2f} ms, "
            f"p99 {pct(api, 99):.2f} ms; from the answer to B and C both STALE: p50 {pct(prop, 50):.2f} ms, "
            f"p99 {pct(prop, 99):.2f} ms, max {max(prop):.2f} ms"]
    text = "\n".join(out) + "\n"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    os.makedirs(os.path.join(run.BENCH, "results"), exist_ok=True)
    with open(os.path.join(run.BENCH, "results", f"cluster-{stamp}.md"), "w") as f:
        f.write(f"`python3 bench/cluster.py {' '.join(sys.argv[1:])}`\n\n" + text)
    print("\n" + text)

if __name__ == "__main__":
    main()
