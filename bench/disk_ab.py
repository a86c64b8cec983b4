#!/usr/bin/env python3
"""A/B of isr binaries on disk-tier hits, interleaved (a b a b …) on one filled store, so a
change to the store's read path can be measured on this noisy machine.

    KEEP=/tmp/isr-scale bash bench/scale.sh 1000000 16384 10   # fills the store once
    find /tmp/isr-scale/data -type f -exec cat {} + >/dev/null  # into the page cache
    python3 bench/disk_ab.py BINARY_A BINARY_B [...] [--store /tmp/isr-scale] [--reps 4] [--duration 10] [--pages N]

Each binary in turn serves the store (pinned to CPU 0, a 256 MiB memory tier, as
bench/scale.sh): a 5 s pass over 1,000 URLs to bring them into the memory tier, a
measured pass over them (memory-tier hits), a 5 s random pass over all pages to settle,
then a measured random pass (mostly disk-tier hits); wrk -t1 -c64 on CPU 1, the same
seeds for every binary within a round. Prints, per binary, the medians of the disk-tier
rps, of isr's CPU time per disk-tier hit (utime + stime over the pass) and of the
disk-tier rate over the memory-tier rate of the same run, and each binary's ratio to the
first. Each run also prints the bytes isr had read from the disk per hit (`read_bytes` in
/proc/PID/io): near zero when the page cache held the pages, and the reason when one run
is far slower than the others; and isr's RSS plus page files after the random pass.

With --pages N, the random passes go over /page/0 … /page/N-1 only: on a machine whose page
cache keeps less than the whole store (this VM keeps about 90 % of the 17 GB), a subset
of 200,000 pages (3.2 GB) stays cached, and the disk-tier path is measured without the
disk. (Keys sort as strings, so these pages are spread over the whole metadata table.)

With --cold, every file of the store is dropped from the page cache before each run
(posix_fadvise DONTNEED), and only the random pass is measured, at once: hits on a store
read from the disk. With --evict-every N, only every N-th segment file is dropped: part of
the bodies on the disk, the metadata in the page cache.

The page cache must otherwise hold the store: a build or a test run just before evicts
part of it, and the disk then sets both binaries' rates. Drop target/ from the page cache
and `cat` the store first (BENCHMARKS.md, "Disk-tier hits in the hit loops").
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import time
import urllib.request

PORT = 19098
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def up(url):
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except OSError:
        return False


def wrk(store, seconds, seed, script="random.lua"):
    bench = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(store, script) if script.startswith("random") else os.path.join(bench, script)
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "-s", path,
         f"http://127.0.0.1:{PORT}/"],
        env={**os.environ, "SEED": str(seed), "PREFIX": "/page/", "PAGES": "1000"},
        capture_output=True, text=True, check=True).stdout
    n = next(int(line.split()[0]) for line in out.splitlines() if "requests in" in line)
    rps = next(float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec"))
    return n, rps


def evict(store, every=1):
    """Drops the store's files from the page cache: all of them, or every `every`-th
    segment file (bodies only, the metadata stays)."""
    for root, _, files in os.walk(os.path.join(store, "data")):
        if every > 1:
            files = sorted(f for f in files if f.endswith(".seg"))[::every]
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_bytes(pid):
    """Bytes the process has had read from the disk (not the page cache)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


def memory_mib(pid):
    """RSS plus the bytes held in page files (memfds), which count in the memory tier but
    not in RSS, in MiB (as bench/scale.sh reports them)."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
    files = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                files += os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            pass
    return (rss + files) / 2**20


def one(binary, store, seconds, seed, cold, evict_every, random):
    if cold:
        evict(store)
    elif evict_every:
        evict(store, evict_every)
    proc = subprocess.Popen(
        ["taskset", "-c", "0", binary, "serve", "--config", os.path.join(store, "isr.toml")],
        env={**os.environ, "ISR_LOG": "warn"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not up(f"http://127.0.0.1:{PORT}/page/5"):
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{binary} did not start (port {PORT} taken?)")
            time.sleep(0.01)
        memory = None
        if not cold:
            wrk(store, 5, seed, "spread.lua")
            _, memory = wrk(store, seconds, seed, "spread.lua")
            wrk(store, 5, seed, random)
        before, disk = cpu_s(proc.pid), read_bytes(proc.pid)
        n, rps = wrk(store, seconds, seed + 1, random)
        disk = (read_bytes(proc.pid) - disk) / n
        ratio = rps / memory if memory else 0.0
        return rps, (cpu_s(proc.pid) - before) / n * 1e6, ratio, disk, memory_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--store", default="/tmp/isr-scale")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--cold", action="store_true", help="drop the store from the page cache first")
    ap.add_argument("--evict-every", type=int, default=0, metavar="N",
                    help="drop every N-th file of the store from the page cache first (part on the disk)")
    ap.add_argument("--pages", type=int, default=0, metavar="N",
                    help="random passes over the first N pages only (a subset the page cache keeps)")
    args = ap.parse_args()
    full = os.path.join(args.store, "random.lua")
    if not os.path.exists(full):
        raise SystemExit(f"no filled store in {args.store}: run KEEP={args.store} bash bench/scale.sh first")
    random = "random.lua"
    if args.pages:
        random = f"random-{args.pages}.lua"
        with open(full) as f:
            script = f.read()
        with open(os.path.join(args.store, random), "w") as f:
            f.write(re.sub(r"local pages = \d+", f"local pages = {args.pages}", script))
    res = {b: [] for b in args.binaries}
    for rep in range(args.reps):
        order = args.binaries if rep % 2 == 0 else list(reversed(args.binaries))
        for b in order:
            rps, us, ratio, disk, mib = one(b, args.store, args.duration, 100 * rep, args.cold,
                                         args.evict_every, random)
            res[b].append((rps, us, ratio))
            print(f"round {rep + 1} {b}: {rps:,.0f} disk-tier rps, {us:.1f} µs of isr CPU per "
                  f"hit, {ratio:.2f}x the memory-tier rate, {disk / 1024:.1f} KiB read from "
                  f"the disk per hit, RSS + page files {mib:.0f} MiB", flush=True)
    base = None
    for b in args.binaries:
        rps, us, ratio = (statistics.median(r[i] for r in res[b]) for i in range(3))
        base = base or (rps, us)
        print(f"{b}: median {rps:,.0f} rps ({rps / base[0]:.2f}x), {us:.1f} µs per hit "
              f"({us / base[1]:.2f}x), disk/memory {ratio:.2f}")


if __name__ == "__main__":
    main()
