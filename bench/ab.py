#!/usr/bin/env python3
"""A/B of two isr binaries on the hit path, interleaved in one run (a b a b …), so a
change can be measured on this noisy machine without comparing runs of different days.

    python3 bench/ab.py OLD_BINARY NEW_BINARY [--reps 5] [--duration 5] [--scenarios hot-16k,spread-16k] [--nginx]

Same set-up as bench/run.py (origin, 16 KiB pages, isr pinned to CPU 0, wrk -t1 -c64 on
CPU 1): by default the hot URL and the spread over 1,000 URLs, 16 KiB (or other sizes:
hot-32k, spread-64k, hot-128k and so on). Prints medians of rps and hits per
server CPU-second, p99 latency, and new/old ratios. With --nginx, nginx serving the same
pages as static files (bench/run.py's "nginx static", 16 and 128 KiB only) runs in the same
rotation, and each binary's ratios to it are printed too, with `wrk`'s CPU time per
response for all three: when `wrk` sets the rate, that is what decides rps.
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

PORTS = {"old": 19105, "new": 19106}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--scenarios", default="hot-16k,spread-16k")
    ap.add_argument("--nginx", action="store_true", help="nginx static in the same rotation")
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")
    if args.nginx and any(run.prefix_of(sc) not in (run.PREFIXES["16k"], run.PREFIXES["128k"]) for sc in scenarios):
        ap.error("--nginx: nginx static has the 16 and 128 KiB pages only (scenarios *-16k, *-128k)")
    names = ["old", "new"] + (["nginx-static"] if args.nginx else [])
    run.sh("cargo build --release -q --example bench_origin", cwd=run.ROOT)
    work = tempfile.mkdtemp(prefix="isr-ab-")
    os.chmod(work, 0o755)
    s = run.Servers(work)
    results = {(n, sc): [] for n in names for sc in scenarios}
    try:
        origin = os.path.join(run.ROOT, "target/release/examples/bench_origin")
        s.start("origin", [origin, "serve", run.ORIGIN], cpu="1")
        run.wait_up(f"http://{run.ORIGIN}/page/0")
        if args.nginx:
            static_dir = os.path.join(work, "static")
            run.sh(f"{origin} write {static_dir} {run.PAGES}")
            run.start_targets(s, ["nginx-static"], work, static_dir)
        for name, binary in (("old", args.old), ("new", args.new)):
            d = os.path.join(work, name)
            os.makedirs(d)
            config = os.path.join(d, "isr.toml")
            with open(config, "w") as f:
                f.write(f'listen = "127.0.0.1:{PORTS[name]}"\norigin = "http://{run.ORIGIN}"\n'
                        f'data_dir = "{d}/data"\n'
                        + "".join(f'[[route]]\nmatch = "{p}{{n}}"\nrevalidate = 60\n'
                                  for p in run.PREFIXES.values()))
            s.start(name, [binary, "serve", "--config", config], env={"ISR_SECRET": "x", "ISR_LOG": "warn"})
            run.wait_up(f"http://127.0.0.1:{PORTS[name]}/_isr/health")
            for prefix in {run.prefix_of(sc) for sc in scenarios}:
                for i in range(run.PAGES):
                    run.get(f"http://127.0.0.1:{PORTS[name]}{prefix}{i}")
        run.PORTS.update(PORTS)
        for rep in range(args.reps):
            for sc in scenarios:
                for name in names if rep % 2 == 0 else names[::-1]:
                    r = run.wrk(name, sc, args.duration, s.procs[name].pid)
                    r["wrk_us"] = r["client_cpu_s"] / (r["rps"] * args.duration) * 1e6
                    results[(name, sc)].append(r)
                    print(f"rep {rep} {sc:11} {name:12}  {r['rps']:9.0f} rps  {r['hits_per_cpu_s']:9.0f} per CPU-s"
                          f"  p99 {r['p99_ms']} ms  wrk {r['client_cpu_s']:.2f}s ({r['wrk_us']:.2f} µs/response)",
                          flush=True)
    finally:
        s.stop_all()
    print(f"\nCommand: `python3 bench/ab.py OLD NEW --reps {args.reps} --duration {args.duration} "
          f"--scenarios {args.scenarios}{' --nginx' if args.nginx else ''}`\n")
    print("| scenario | old rps | new rps | new/old | old per CPU-s | new per CPU-s | new/old "
          "| old p99 ms | new p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sc in scenarios:
        med = {n: [statistics.median(r[k] for r in results[(n, sc)]) for k in ("rps", "hits_per_cpu_s", "p99_ms")]
               for n in PORTS}
        (orps, ocpu, op99), (nrps, ncpu, np99) = med["old"], med["new"]
        print(f"| {sc} | {orps:,.0f} | {nrps:,.0f} | {nrps / orps:.2f} | {ocpu:,.0f} | {ncpu:,.0f} | {ncpu / ocpu:.2f} "
              f"| {op99:.2f} | {np99:.2f} |")
    if args.nginx:
        print("\nRatios to nginx static (medians of the per-repetition ratios), and `wrk`'s CPU per response:\n")
        print("| scenario | binary | rps | per CPU-s | wrk µs/response | nginx's wrk µs/response |")
        print("|---|---|---:|---:|---:|---:|")
        for sc in scenarios:
            ref = results[("nginx-static", sc)]
            for n in ("old", "new"):
                ratio = {k: statistics.median(r[k] / g[k] for r, g in zip(results[(n, sc)], ref))
                         for k in ("rps", "hits_per_cpu_s")}
                wrk_us = statistics.median(r["wrk_us"] for r in results[(n, sc)])
                print(f"| {sc} | {n} | {ratio['rps']:.2f} | {ratio['hits_per_cpu_s']:.2f} | {wrk_us:.2f} "
                      f"| {statistics.median(g['wrk_us'] for g in ref):.2f} |")


if __name__ == "__main__":
    main()
