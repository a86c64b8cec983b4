#!/usr/bin/env python3
"""Latency of the revalidation API over a store of many tagged pages, for one or more
isr binaries measured in turn in one run (a b a b …), so a change to the revalidation
path can be judged on this noisy machine.

    python3 bench/revalidate.py BINARY [BINARY ...] [--pages 100000] [--requests 200] [--rounds 3]

Each binary gets its own copy of a store of `--pages` 1 KiB pages, all carrying the tag
`pages` (written once by examples/fill_store.rs), is pinned to CPU 0, and is sent
`--requests` revalidations of that tag per round over one keep-alive connection
(client-measured round trips on loopback). Prints p50, p90 and max per binary.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--pages", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    run.sh("cargo build --release -q -p isr --example fill_store", cwd=run.ROOT)
    work = tempfile.mkdtemp(prefix="isr-revalidate-")
    s = run.Servers(work)
    samples = {b: [] for b in args.binaries}
    try:
        template = os.path.join(work, "template")
        run.sh(f"{run.ROOT}/target/release/examples/fill_store {template} {args.pages} 1024 > /dev/null")
        for i, b in enumerate(args.binaries):
            shutil.copytree(template, os.path.join(work, f"data{i}"))
        for _ in range(args.rounds):
            for i, b in enumerate(args.binaries):
                port = 19200 + i
                config = os.path.join(work, f"isr{i}.toml")
                with open(config, "w") as f:
                    f.write(f'listen = "127.0.0.1:{port}"\norigin = "http://127.0.0.1:9"\n'
                            f'data_dir = "{work}/data{i}"\n[[route]]\nmatch = "/page/{{n}}"\n'
                            'revalidate = 3600\ntags = ["page-{n}"]\n')
                s.start(f"isr{i}", [b, "serve", "--config", config],
                        env={"ISR_SECRET": "bench-secret", "ISR_LOG": "warn"})
                run.wait_up(f"http://127.0.0.1:{port}/_isr/health")
                conn = http.client.HTTPConnection("127.0.0.1", port)
                headers = {"Authorization": "Bearer bench-secret", "Content-Type": "application/json"}
                body = json.dumps({"tag": "pages"})
                for _ in range(args.requests):
                    t = time.perf_counter()
                    conn.request("POST", "/_isr/revalidate", body=body, headers=headers)
                    r = conn.getresponse()
                    r.read()
                    assert r.status == 200, r.status
                    samples[b].append((time.perf_counter() - t) * 1000)
                conn.close()
                s.stop(f"isr{i}")
    finally:
        s.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(f"Command: `python3 bench/revalidate.py {' '.join(args.binaries)} --pages {args.pages} "
          f"--requests {args.requests} --rounds {args.rounds}`\n")
    print("| binary | requests | p50 ms | p90 ms | max ms |\n|---|---:|---:|---:|---:|")
    for b, xs in samples.items():
        xs.sort()
        print(f"| {b} | {len(xs)} | {statistics.median(xs):.3f} | {xs[int(len(xs) * 0.9)]:.3f} | {xs[-1]:.2f} |")


if __name__ == "__main__":
    main()
