#!/usr/bin/env python3
"""Soak: isr for a long time at about half its capacity, with regenerations and
revalidations running, recording RSS, open file descriptors and errors every 10 s.

    python3 bench/soak.py [--minutes 30] [--pages 5000]

Not a test: it measures. The origin (examples/bench_origin.rs) serves 16 KiB pages; isr
(release build, memory tier 64 MiB so the tier evicts) caches them with a 5 s window, so
pages regenerate all the time; every second the script revalidates a tag (every other
time eagerly) and bumps the origin's content. First a 10 s wrk run measures capacity;
then wrk runs at about half of it (a per-request delay in the Lua script) for the whole
soak. Results: bench/results/soak-<time>.md and .json.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

ORIGIN = "127.0.0.1:19300"
CONNECTIONS = 64
PORT = 19305

PACED = """
local pages = tonumber(os.getenv("PAGES"))
local delay_ms = tonumber(os.getenv("DELAY_MS"))
local reqs = {}
init = function(args)
  math.randomseed(7)
  for i = 0, pages - 1 do reqs[i + 1] = wrk.format("GET", "/page/" .. i) end
end
request = function() return reqs[math.random(1, pages)] end
delay = function() return delay_ms end
"""


def metrics():
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}/_isr/metrics",
                                 headers={"Authorization": "Bearer bench-secret"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def fds(pid):
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in run.tree_pids(pid) if os.path.isdir(f"/proc/{p}/fd"))


def revalidator(stop, stats):
    """Revalidates a tag every second (eager every other time) and bumps the origin."""
    n = 0
    while not stop.is_set():
        n += 1
        body = json.dumps({"tag": f"page-{n % 50}", "eager": n % 2 == 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{PORT}/_isr/revalidate", data=body,
                                     headers={"Authorization": "Bearer bench-secret"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                stats["revalidations_ok" if r.status == 200 else "revalidations_failed"] += 1
            if n % 10 == 0:
                run.get(f"http://{ORIGIN}/_bump")
        except Exception:
            stats["revalidations_failed"] += 1
        stop.wait(1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--pages", type=int, default=5000)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        run.sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk")
    run.sh("cargo build --release -q --bin isr --example bench_origin", cwd=run.ROOT)
    work = tempfile.mkdtemp(prefix="isr-soak-")
    s = run.Servers(work)
    try:
        s.start("origin", [os.path.join(run.ROOT, "target/release/examples/bench_origin"), "serve", ORIGIN], cpu="1")
        run.wait_up(f"http://{ORIGIN}/page/0")
        run.start_isr(s, "isr", work, PORT, ORIGIN,
                      '[cache]\nrevalidate = 5\nmemory = "64MiB"\n'
                      '[[route]]\nmatch = "/page/{n}"\ntags = ["pages", "page-{n}"]\n')
        pid = s.procs["isr"].pid
        lua = os.path.join(work, "paced.lua")
        with open(lua, "w") as f:
            f.write(PACED)
        for i in range(args.pages):  # warm every page once
            run.get(f"http://127.0.0.1:{PORT}/page/{i}")
        env = {**os.environ, "PAGES": str(args.pages), "DELAY_MS": "0"}
        wrk = ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", "--latency", "-s", lua]

        def rate(delay_ms, seconds=10):
            out = subprocess.run(wrk + [f"-d{seconds}s", f"http://127.0.0.1:{PORT}/"], capture_output=True,
                                 text=True, env={**env, "DELAY_MS": str(delay_ms)}).stdout
            return float(run.WRK_LINE.search(out).group(1))

        capacity = rate(0)
        # Each connection waits DELAY_MS between requests; calibrate that to about half of
        # the capacity with a trial run (wrk's timers are coarse).
        target = capacity / 2
        delay_ms = max(1, round(CONNECTIONS * 1000 / target))
        trial = rate(delay_ms)
        delay_ms = max(1, round(delay_ms * trial / target))
        seconds = int(args.minutes * 60)
        print(f"capacity {capacity:.0f} rps; trial {trial:.0f} rps; soaking {seconds} s aiming at "
              f"{target:.0f} rps (delay {delay_ms} ms per request per connection)", flush=True)
        load = subprocess.Popen(wrk + [f"-d{seconds}s", f"http://127.0.0.1:{PORT}/"], stdout=subprocess.PIPE,
                                text=True, env={**env, "DELAY_MS": str(delay_ms)})
        stop = threading.Event()
        stats = {"revalidations_ok": 0, "revalidations_failed": 0}
        t = threading.Thread(target=revalidator, args=(stop, stats), daemon=True)
        t.start()
        samples = []
        started = time.time()
        while load.poll() is None:
            time.sleep(10)
            m = metrics()
            sample = {
                "t_s": round(time.time() - started),
                "rss_mib": round(run.tree_rss_mib(pid), 1),
                "fds": fds(pid),
                "requests": sum(v for k, v in m.items() if k.startswith("isr_requests_total")),
                "regenerations_ok": m.get('isr_regenerations_total{result="ok"}', 0),
                "regenerations_failed": m.get('isr_regenerations_total{result="failed"}', 0),
                "origin_errors": sum(v for k, v in m.items() if k.startswith("isr_origin_errors_total")),
                "revalidations_ok": stats["revalidations_ok"],
                "revalidations_failed": stats["revalidations_failed"],
                "memory_tier_mib": round(m.get("isr_memory_tier_bytes", 0) / 2**20, 1),
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        stop.set()
        out = load.stdout.read()
        rps = float(run.WRK_LINE.search(out).group(1))
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        socket_errors = re.search(r"Socket errors: (.*)", out)
        result = {
            "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "minutes": args.minutes, "pages": args.pages, "capacity_rps": capacity,
            "soak_rps": rps, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else "none",
            "samples": samples,
        }
    finally:
        s.stop_all()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = os.path.join(run.BENCH, "results", f"soak-{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(render(result))
    print(render(result))


def render(r):
    s = r["samples"]
    first, last = s[0], s[-1]
    # After the first minute the memory tier is full: compare from there on.
    settled = [x for x in s if x["t_s"] >= 60] or s
    lines = [
        f"# Soak, {r['when']}: {r['minutes']} minutes, {r['pages']} pages",
        "",
        "Command: `python3 bench/soak.py --minutes {} --pages {}`".format(r["minutes"], r["pages"]),
        "",
        f"- capacity (10 s wrk, {CONNECTIONS} connections, no delay): {r['capacity_rps']:.0f} rps; "
        f"soak at {r['soak_rps']:.0f} rps ({100 * r['soak_rps'] / r['capacity_rps']:.0f} %)",
        f"- wrk: non-2xx {r['non_2xx']}, socket errors {r['socket_errors']}",
        f"- revalidations: {last['revalidations_ok']:.0f} ok, {last['revalidations_failed']:.0f} failed; "
        f"regenerations: {last['regenerations_ok']:.0f} ok, {last['regenerations_failed']:.0f} failed; "
        f"origin errors {last['origin_errors']:.0f}",
        f"- RSS MiB: first {first['rss_mib']}, after 1 min {settled[0]['rss_mib']}, last {last['rss_mib']}, "
        f"max after 1 min {max(x['rss_mib'] for x in settled)}",
        f"- open fds: first {first['fds']}, last {last['fds']}, max {max(x['fds'] for x in s)}",
        "",
        "| t (s) | RSS MiB | fds | memory tier MiB | requests | regenerations ok | revalidations ok | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in s:
        if x["t_s"] % 60 < 10 or x is last:
            errors = x["origin_errors"] + x["revalidations_failed"] + x["regenerations_failed"]
            lines.append(f"| {x['t_s']} | {x['rss_mib']} | {x['fds']} | {x['memory_tier_mib']} | {x['requests']:.0f} | "
                         f"{x['regenerations_ok']:.0f} | {x['revalidations_ok']} | {errors:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
