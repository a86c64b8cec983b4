#!/usr/bin/env python3
"""How far could a specialised hit path go? nginx static and isr against three floors on
one hot 16 KiB URL and the 1,000-URL spread: bare hyper (hyper, one in-memory page, no
cache logic), a hand-written HTTP/1 loop copying the page from memory, and the same loop
sending it from a memfd with sendfile (zero-copy, as nginx does), and the same loop with
head and body in one memfd sent by one sendfile.

    python3 bench/floor.py [--reps 3] [--duration 5]

Uses bench/run.py's servers, pinning and wrk settings; prints one table of medians."""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

FLOORS = {"bare-hyper": 19101, "floor-copy": 19102, "floor-sendfile": 19103, "floor-whole": 19104}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    run.ensure_tools()
    run.sh("cargo build --release -q --example floor --example bare_hyper", cwd=run.ROOT)
    run.PORTS.update(FLOORS)
    work = tempfile.mkdtemp(prefix="isr-floor-")
    os.chmod(work, 0o755)
    s = run.Servers(work)
    targets = ["nginx-static", "isr", *FLOORS]
    ex = os.path.join(run.ROOT, "target/release/examples")
    try:
        static_dir = os.path.join(work, "static")
        run.sh(f"{ex}/bench_origin write {static_dir} {run.PAGES}")
        s.start("origin", [f"{ex}/bench_origin", "serve", run.ORIGIN], cpu="1")
        run.wait_up(f"http://{run.ORIGIN}/_count")
        run.start_targets(s, ["nginx-static", "isr"], work, static_dir)
        s.start("bare-hyper", [f"{ex}/bare_hyper", f"127.0.0.1:{FLOORS['bare-hyper']}"])
        s.start("floor-copy", [f"{ex}/floor", "copy", f"127.0.0.1:{FLOORS['floor-copy']}"])
        for mode in ("sendfile", "whole"):
            s.start(f"floor-{mode}", [f"{ex}/floor", mode, f"127.0.0.1:{FLOORS[f'floor-{mode}']}"])
        for t in FLOORS:
            run.wait_up(f"http://127.0.0.1:{FLOORS[t]}/page/0")
        run.warm(["nginx-static", "isr"])
        rows = {}
        for rep in range(args.reps):
            for scenario in ("hot-16k", "spread-16k"):
                for t in targets:
                    r = run.wrk(t, scenario, args.duration, s.procs[t].pid)
                    rows.setdefault((scenario, t), []).append(r)
                    print(f"rep {rep} {scenario} {t:15} {r['rps']:>9.0f} rps  p99 {r['p99_ms']} ms  "
                          f"{r['hits_per_cpu_s']:>9.0f} hits/CPU-s", flush=True)
    finally:
        s.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print("\n| scenario | target | rps | × nginx static | p99 ms | hits per CPU-s | × nginx static (CPU) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for scenario in ("hot-16k", "spread-16k"):
        base = rows[(scenario, "nginx-static")]
        for t in targets:
            rs = rows[(scenario, t)]
            ratio = run.median([r["rps"] / b["rps"] for r, b in zip(rs, base)])
            cpu = run.median([r["hits_per_cpu_s"] / b["hits_per_cpu_s"] for r, b in zip(rs, base)])
            print(f"| {scenario} | {t} | {run.median([r['rps'] for r in rs]):,.0f} | {ratio:.2f} | "
                  f"{run.median([r['p99_ms'] for r in rs])} | {run.median([r['hits_per_cpu_s'] for r in rs]):,.0f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
