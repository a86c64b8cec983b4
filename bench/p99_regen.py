#!/usr/bin/env python3
"""The 16 KiB spread's p99 with and without regenerations: nginx static, isr with
revalidate = R (each of its runs starts with a burst of 1,000 unchanged regenerations, as
in bench/run.py, whose isr runs come more than 60 s apart) and isr with revalidate = 3600
(none), interleaved; `wrk -t1 -c64 -d10s` as in bench/run.py.

    python3 bench/p99_regen.py [REPS=5] [R=20] [ISR_BINARY]
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
R = int(sys.argv[2]) if len(sys.argv) > 2 else 20
binary = sys.argv[3] if len(sys.argv) > 3 else os.path.join(run.ROOT, "target/release/isr")
run.sh("cargo build --release -q --bin isr --example bench_origin", cwd=run.ROOT)
work = tempfile.mkdtemp(prefix="p99-"); os.chmod(work, 0o755)
s = run.Servers(work)
ports = {"isr-regen": 19105, "isr-still": 19106}
run.PORTS.update(ports)
try:
    origin = os.path.join(run.ROOT, "target/release/examples/bench_origin")
    s.start("origin", [origin, "serve", run.ORIGIN], cpu="1")
    run.wait_up(f"http://{run.ORIGIN}/page/0")
    static_dir = os.path.join(work, "static")
    run.sh(f"{origin} write {static_dir} {run.PAGES}")
    run.start_targets(s, ["nginx-static"], work, static_dir)
    for name, rv in (("isr-regen", R), ("isr-still", 3600)):
        d = os.path.join(work, name); os.makedirs(d)
        cfg = os.path.join(d, "isr.toml")
        open(cfg, "w").write(f'listen = "127.0.0.1:{ports[name]}"\norigin = "http://{run.ORIGIN}"\ndata_dir = "{d}/data"\n[cache]\nmemory = "256MiB"\n[[route]]\nmatch = "/page/{{n}}"\nrevalidate = {rv}\n')
        s.start(name, [binary, "serve", "--config", cfg], env={"ISR_LOG": "warn"})
        run.wait_up(f"http://127.0.0.1:{ports[name]}/page/0")
    for t in ["nginx-static"] + list(ports):
        for _ in range(2):
            for n in range(run.PAGES):
                run.get(f"http://127.0.0.1:{run.PORTS[t]}/page/{n}")
    time.sleep(R + 1)
    res = {t: [] for t in ["nginx-static"] + list(ports)}
    for rep in range(reps):
        for t in res:
            r = run.wrk(t, "spread-16k", 10, s.procs[t].pid)
            res[t].append(r)
            print(f"rep {rep} {t:13} {r['rps']:>8.0f} rps p99 {r['p99_ms']} ms cpu {r['cpu_s']:.2f} wrk {r['client_cpu_s']}", flush=True)
        time.sleep(max(0, R + 1 - 20))  # the next isr-regen run finds every page stale
    for t, rs in res.items():
        print(f"{t:13} median rps {statistics.median(r['rps'] for r in rs):.0f}  p99 median {statistics.median(r['p99_ms'] for r in rs)}  p99s {[r['p99_ms'] for r in rs]}")
finally:
    s.stop_all()
