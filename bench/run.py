#!/usr/bin/env python3
"""isr's benchmark against the tools users would pick instead, side by side.

    python3 bench/run.py [--reps 3] [--duration 10] [--targets nginx-static,...] [--skip-extra]

Installs what it needs (wrk, nginx, varnish from Debian; next/react from npm), starts on
127.0.0.1 a deterministic origin and, in front of it, nginx serving the same pages as
static files, nginx proxy_cache, Varnish, Next.js (App Router, revalidate = 60) and isr.
Each server is pinned to CPU 0 and wrk to CPU 1. Targets are interleaved, repetitions
give medians, and every run records the server's CPU time so hits per CPU-second can be
compared when wrk itself is the bottleneck. Results: bench/results/<time>.json and .md.
"""

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
ORIGIN = "127.0.0.1:19000"
SLOW_ORIGIN = "127.0.0.1:19010"
PORTS = {"nginx-static": 19001, "nginx-proxy-cache": 19002, "varnish": 19003, "nextjs": 19004, "isr": 19005}
PAGES = 1000  # URLs in the spread scenario, and files written for nginx static


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, text=True, **kw)


def ensure_tools():
    missing = [p for p, exe in [("wrk", "wrk"), ("nginx-light", "nginx"), ("varnish", "varnishd")]
               if shutil.which(exe) is None and not os.path.exists(f"/usr/sbin/{exe}")]
    if missing:
        sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq " + " ".join(missing))
    peer = os.path.join(BENCH, "next-peer")
    if not os.path.isdir(os.path.join(peer, "node_modules", "next")):
        sh("npm install --no-audit --no-fund --silent", cwd=peer)
    if not os.path.isdir(os.path.join(peer, ".next")):
        sh("npx next build > /dev/null", cwd=peer, env={**os.environ, "NEXT_TELEMETRY_DISABLED": "1"})
    sh("cargo build --release -q --bin isr --example bench_origin", cwd=ROOT)


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read()


def wait_up(url, tries=400):
    for _ in range(tries):
        try:
            get(url, timeout=2)
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class Servers:
    """Every process started, so they can all be stopped."""

    def __init__(self, work):
        self.work = work
        self.procs = {}

    def start(self, name, cmd, cpu="0", env=None, cwd=None):
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        self.procs[name] = p
        return p

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except Exception:
                os.killpg(p.pid, signal.SIGKILL)

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


def tree_cpu_seconds(pid):
    """utime + stime of a process and all its descendants (threads included)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def cpu_busy(cpus=(0, 1), seconds=0.5):
    """The busiest of `cpus` over `seconds`, as a fraction of that CPU (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            rows = {l.split()[0]: [int(x) for x in l.split()[1:]] for l in f if l.startswith("cpu")}
        return {c: rows[f"cpu{c}"] for c in cpus}
    a = sample()
    time.sleep(seconds)
    b = sample()
    busy = []
    for c in cpus:
        d = [y - x for x, y in zip(a[c], b[c])]
        idle = d[3] + d[4]  # idle + iowait
        busy.append(1 - idle / sum(d) if sum(d) else 0)
    return max(busy)


def wait_quiet(limit=20.0, threshold=0.05):
    """Waits (at most `limit` s) until both CPUs are nearly idle, so that no target's
    background work (Next.js finishing its regenerations, say) runs into the next target's
    measurement. Returns the seconds waited."""
    start = time.time()
    while time.time() - start < limit and cpu_busy() > threshold:
        pass
    return time.time() - start


def tree_pids(pid):
    """A process and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_rss_mib(pid):
    total = 0.0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
        except (OSError, AttributeError):
            pass
    return total


def tree_memfd_mib(pid):
    """Bytes in memory files (isr's page files) the process tree holds open: memory that
    counts in isr's memory tier but not in its RSS."""
    files = {}
    for p in tree_pids(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            path = f"/proc/{p}/fd/{fd}"
            try:
                if os.readlink(path).startswith("/memfd:"):
                    st = os.stat(path)
                    files[(st.st_dev, st.st_ino)] = st.st_size
            except OSError:
                pass
    return sum(files.values()) / (1 << 20)


def start_isr(s, name, work, port, origin, extra_toml):
    """Starts an isr (release build) named `name` on `port` in front of `origin`."""
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    config = os.path.join(d, "isr.toml")
    with open(config, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\norigin = "http://{origin}"\ndata_dir = "{d}/data"\n{extra_toml}')
    s.start(name, [os.path.join(ROOT, "target/release/isr"), "serve", "--config", config],
            env={"ISR_SECRET": "bench-secret", "ISR_LOG": "warn"})
    wait_up(f"http://127.0.0.1:{port}/_isr/health")
    return d


def start_nginx(s, name, work, http_block):
    """Starts an nginx with one worker whose `http {}` holds the shared settings plus `http_block`."""
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"""daemon off; worker_processes 1; error_log stderr warn; pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
{http_block.format(dir=d)}
}}
""")
    s.start(name, ["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf")])


def start_targets(s, targets, work, static_dir):
    if "nginx-static" in targets:
        start_nginx(s, "nginx-static", work, f"""  open_file_cache max=10000 inactive=60s; open_file_cache_valid 60s;
  default_type text/html;
  server {{{{ listen 127.0.0.1:{PORTS['nginx-static']}; root {static_dir}; }}}}""")
    if "nginx-proxy-cache" in targets:
        start_nginx(s, "nginx-proxy-cache", work, f"""  proxy_cache_path {{dir}}/cache levels=1:2 keys_zone=isr:64m max_size=4g inactive=24h use_temp_path=off;
  upstream origin {{{{ server {ORIGIN}; keepalive 32; }}}}
  server {{{{
    listen 127.0.0.1:{PORTS['nginx-proxy-cache']};
    location / {{{{
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache isr; proxy_cache_valid 200 60s;
      proxy_cache_use_stale updating error timeout; proxy_cache_background_update on; proxy_cache_lock on;
    }}}}
  }}}}""")
    if "varnish" in targets:
        d = os.path.join(work, "varnish")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        vcl = os.path.join(d, "bench.vcl")
        host, port = ORIGIN.split(":")
        with open(vcl, "w") as f:
            f.write(f"""vcl 4.1;
backend origin {{ .host = "{host}"; .port = "{port}"; }}
sub vcl_backend_response {{ set beresp.ttl = 60s; set beresp.grace = 24h; }}
""")
        os.chmod(vcl, 0o644)
        s.start("varnish", ["varnishd", "-F", "-a", f"127.0.0.1:{PORTS['varnish']}", "-f", vcl,
                            "-n", os.path.join(d, "n"), "-s", "malloc,2G", "-p", "thread_pools=1"])
    if "nextjs" in targets:
        s.start("nextjs", ["npx", "next", "start", "-p", str(PORTS["nextjs"]), "-H", "127.0.0.1"],
                cwd=os.path.join(BENCH, "next-peer"), env={"NEXT_TELEMETRY_DISABLED": "1"})
    if "isr" in targets:
        start_isr(s, "isr", work, PORTS["isr"], ORIGIN, """[cache]
memory = "256MiB"
[[route]]
match = "/page/{n}"
revalidate = 60
[[route]]
match = "/big/{n}"
revalidate = 60
""")
    for t in targets:
        wait_up(f"http://127.0.0.1:{PORTS[t]}/page/0")


def warm(targets):
    for t in targets:
        for prefix in (["/page/"] if t == "nextjs" else ["/page/", "/big/"]):
            for _ in range(2):
                for n in range(PAGES):
                    get(f"http://127.0.0.1:{PORTS[t]}{prefix}{n}")


WRK_LINE = re.compile(r"Requests/sec:\s+([\d.]+)")
LAT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


# The origin's pages of each size a scenario's name can end with.
PREFIXES = {"16k": "/page/", "32k": "/p32k/", "64k": "/p64k/", "128k": "/big/"}


def prefix_of(scenario):
    """The origin's pages of a scenario's size (its name's end: 16k, 32k, 64k or 128k)."""
    return PREFIXES[scenario.rsplit("-", 1)[1]]


def wrk(target, scenario, duration, server_pid, others=()):
    size_prefix = prefix_of(scenario)
    url = f"http://127.0.0.1:{PORTS[target]}"
    cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{duration}s", "--latency"]
    if scenario.startswith("spread"):
        cmd += ["-s", os.path.join(BENCH, "spread.lua")]
        url += "/"
    else:
        url += size_prefix + "1"
    waited = wait_quiet()
    cpu0 = tree_cpu_seconds(server_pid)
    others0 = sum(tree_cpu_seconds(p) for p in others)
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd + [url], capture_output=True, text=True,
                         env={**os.environ, "PREFIX": size_prefix, "PAGES": str(PAGES)}).stdout
    cpu = tree_cpu_seconds(server_pid) - cpu0
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # wrk's own CPU: when it nears `duration`, wrk (not the server) sets the rate.
    client_cpu = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
    others_cpu = sum(tree_cpu_seconds(p) for p in others) - others0
    rps = float(WRK_LINE.search(out).group(1))
    lat = {}
    for pct, v, unit in LAT.findall(out):
        lat[pct] = float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"), "cpu_s": cpu,
            "hits_per_cpu_s": rps * duration / cpu if cpu > 0 else None,
            "client_cpu_s": round(client_cpu, 2), "quiet_wait_s": round(waited, 1), "other_targets_cpu_s": round(others_cpu, 2),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def hits(args, s, targets):
    scenarios = ["hot-16k", "spread-16k", "hot-128k", "spread-128k"]
    runs = []
    for rep in range(args.reps):
        for scenario in scenarios:
            for t in targets:
                if t == "nextjs" and scenario.endswith("128k"):
                    continue
                others = [s.procs[o].pid for o in targets if o != t]
                r = wrk(t, scenario, args.duration, s.procs[t].pid, others)
                r.update(target=t, scenario=scenario, rep=rep)
                runs.append(r)
                print(f"rep {rep} {scenario:12} {t:18} {r['rps']:>10.0f} rps  p99 {r['p99_ms']} ms  cpu {r['cpu_s']:.2f}s wrk {r['client_cpu_s']:.2f}s"
                      f"  (waited {r['quiet_wait_s']}s for quiet; other targets {r['other_targets_cpu_s']}s cpu)", flush=True)
    table = []
    for scenario in scenarios:
        base = {}
        for rep in range(args.reps):
            for r in runs:
                if r["scenario"] == scenario and r["rep"] == rep and r["target"] == "nginx-static":
                    base[rep] = r
        for t in targets:
            rs = [r for r in runs if r["scenario"] == scenario and r["target"] == t]
            if not rs:
                continue
            ratio = [r["rps"] / base[r["rep"]]["rps"] for r in rs if r["rep"] in base]
            cpu_ratio = [r["hits_per_cpu_s"] / base[r["rep"]]["hits_per_cpu_s"] for r in rs
                         if r["rep"] in base and r["hits_per_cpu_s"] and base[r["rep"]]["hits_per_cpu_s"]]
            table.append({"scenario": scenario, "target": t, "rps": median([r["rps"] for r in rs]),
                          "p50_ms": median([r["p50_ms"] for r in rs]), "p99_ms": median([r["p99_ms"] for r in rs]),
                          "hits_per_cpu_s": median([r["hits_per_cpu_s"] for r in rs]),
                          "rps_vs_nginx_static": median(ratio), "cpu_eff_vs_nginx_static": median(cpu_ratio),
                          "errors": sum(r["non_2xx"] for r in rs)})
    return runs, table


def burst(url, n):
    out = subprocess.run([os.path.join(ROOT, "target/release/examples/burst"), url, str(n)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def origin_count(addr):
    return int(get(f"http://{addr}/_count")[2])


STAMPEDE_ROUNDS = 5


def stampedes(s, work):
    """1,000 concurrent requests on a missing and on a stale page, origin slowed to 200 ms."""
    s.start("slow-origin", [os.path.join(ROOT, "target/release/examples/bench_origin"), "serve", SLOW_ORIGIN, "200"], cpu="1")
    wait_up(f"http://{SLOW_ORIGIN}/_count")
    start_isr(s, "isr-stampede", work, 19006, SLOW_ORIGIN, '[[route]]\nmatch = "/page/{n}"\nrevalidate = 1\n')
    results = {}
    before = origin_count(SLOW_ORIGIN)
    results["missing"] = burst("http://127.0.0.1:19006/page/7", 1000)
    results["missing"]["origin_requests"] = origin_count(SLOW_ORIGIN) - before
    # Single bursts swing by 10 ms on this machine: five rounds, a HIT burst then (once
    # the 1 s window has passed) a STALE one, each round's regeneration done before the next.
    rounds = {"hit_burst": [], "stale": []}
    origin_requests = []
    for _ in range(STAMPEDE_ROUNDS):
        rounds["hit_burst"].append(burst("http://127.0.0.1:19006/page/7", 1000))
        time.sleep(1.2)
        before = origin_count(SLOW_ORIGIN)
        rounds["stale"].append(burst("http://127.0.0.1:19006/page/7", 1000))
        time.sleep(0.5)
        origin_requests.append(origin_count(SLOW_ORIGIN) - before)
    for k, rs in rounds.items():
        results[k] = {"p50_ms": statistics.median(r["p50_ms"] for r in rs),
                      "max_ms": statistics.median(r["max_ms"] for r in rs),
                      "max_ms_all": max(r["max_ms"] for r in rs), "rounds": rs}
    results["stale"]["origin_requests"] = max(origin_requests)
    results["stale"]["origin_requests_each"] = origin_requests
    s.stop("isr-stampede")
    s.stop("slow-origin")
    return results


def revalidation(s, work, tagged=100_000):
    """API latency of revalidating a tag carried by `tagged` stored pages, and the time from
    an eager revalidation to the first visitor seeing new content."""
    import http.client
    d = os.path.join(work, "isr-revalidate")
    sh(f"{ROOT}/target/release/examples/fill_store {d}/data {tagged} 1024 > /dev/null")
    start_isr(s, "isr-revalidate", work, 19007, ORIGIN,
              '[[route]]\nmatch = "/page/{n}"\nrevalidate = 3600\ntags = ["page-{n}"]\n')
    conn = http.client.HTTPConnection("127.0.0.1", 19007)
    headers = {"Authorization": "Bearer bench-secret", "Content-Type": "application/json"}

    def post(body):
        t = time.perf_counter()
        conn.request("POST", "/_isr/revalidate", body=json.dumps(body), headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        return (time.perf_counter() - t) * 1000

    api = sorted(post({"tag": "pages"}) for _ in range(50))
    # Eager: new content at the origin, then a CMS-style revalidation of that page's tag.
    url = "http://127.0.0.1:19007/page/7"
    get(url)
    eager = []
    for _ in range(10):
        version = int(get(f"http://{ORIGIN}/_bump")[2])
        t = time.perf_counter()
        post({"tag": "page-7", "eager": True})
        while f"Page 7 v{version}<".encode() not in get(url)[2]:
            time.sleep(0.0002)
        eager.append((time.perf_counter() - t) * 1000)
    s.stop("isr-revalidate")
    eager.sort()
    return {"tagged_pages": tagged, "api_p50_ms": api[len(api) // 2], "api_p99_ms": api[-1],
            "eager_to_new_content_p50_ms": eager[len(eager) // 2], "eager_to_new_content_max_ms": eager[-1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--targets", default=",".join(PORTS))
    ap.add_argument("--skip-extra", action="store_true", help="only the hit benchmarks")
    ap.add_argument("--skip-hits", action="store_true", help="only stampedes and revalidation")
    args = ap.parse_args()
    targets = args.targets.split(",")
    ensure_tools()
    work = tempfile.mkdtemp(prefix="isr-bench-")
    os.chmod(work, 0o755)
    s = Servers(work)
    try:
        static_dir = os.path.join(work, "static")
        sh(f"{ROOT}/target/release/examples/bench_origin write {static_dir} {PAGES}")
        s.start("origin", [os.path.join(ROOT, "target/release/examples/bench_origin"), "serve", ORIGIN], cpu="1")
        wait_up(f"http://{ORIGIN}/_count")
        start_targets(s, targets, work, static_dir)
        runs, table = [], []
        if not args.skip_hits:
            warm(targets)
            runs, table = hits(args, s, targets)
        rss = {t: tree_rss_mib(s.procs[t].pid) for t in targets}
        memfd = {t: tree_memfd_mib(s.procs[t].pid) for t in targets}
        extra = {}
        if not args.skip_extra:
            sh("cargo build --release -q --example burst", cwd=ROOT)
            sh("cargo build --release -q -p isr --example fill_store", cwd=ROOT)
            extra["stampede"] = stampedes(s, work)
            extra["revalidation"] = revalidation(s, work)
    finally:
        s.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    versions = {
        "isr": subprocess.run([f"{ROOT}/target/release/isr", "--version"], capture_output=True, text=True).stdout.strip(),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "varnish": subprocess.run(["varnishd", "-V"], capture_output=True, text=True).stderr.splitlines()[0],
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
    }
    try:
        versions["next"] = json.load(open(os.path.join(BENCH, "next-peer/node_modules/next/package.json")))["version"]
    except OSError:
        pass
    # Large bodies sent with sendfile are 2.5-3.8x slower under BBR's pacing than under cubic on
    # this machine (BENCHMARKS.md), so a run names the congestion control it ran with.
    versions["tcp_congestion_control"] = open("/proc/sys/net/ipv4/tcp_congestion_control").read().strip()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
    result = {"when": stamp, "args": vars(args), "versions": versions, "table": table, "runs": runs,
              "rss_mib_after": rss, "memfd_mib_after": memfd, **extra}
    with open(os.path.join(BENCH, "results", f"{stamp}.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = render(result)
    with open(os.path.join(BENCH, "results", f"{stamp}.md"), "w") as f:
        f.write(md)
    print(md)


def fmt(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def render(r):
    a = r["args"]
    command = f"python3 bench/run.py --reps {a['reps']} --duration {a['duration']}"
    if a.get("targets") and a["targets"] != ",".join(PORTS):
        command += f" --targets {a['targets']}"
    command += "".join(f" --{k.replace('_', '-')}" for k in ("skip_extra", "skip_hits") if a.get(k))
    lines = [f"Run {r['when']}: `{command}`",
             "", "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), "",
             "| scenario | target | rps (median) | × nginx static | p50 ms | p99 ms | hits per server CPU-s | × nginx static (CPU) | non-2xx |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["table"]:
        lines.append(f"| {row['scenario']} | {row['target']} | {fmt(row['rps'])} | {fmt(row['rps_vs_nginx_static'], 2)} | "
                     f"{fmt(row['p50_ms'], 2)} | {fmt(row['p99_ms'], 2)} | {fmt(row['hits_per_cpu_s'])} | "
                     f"{fmt(row['cpu_eff_vs_nginx_static'], 2)} | {row['errors']} |")
    lines += ["", "RSS after the hit runs (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in r["rss_mib_after"].items())]
    held = {k: v for k, v in r.get("memfd_mib_after", {}).items() if v}
    if held:
        lines[-1] += "; besides RSS, in page files (memfd): " + ", ".join(f"{k} {v:.0f}" for k, v in held.items())
    if "stampede" in r:
        lines += ["", "| isr stampede (1,000 concurrent, origin 200 ms) | origin requests | p50 ms | max ms | max of every round |",
                  "|---|---:|---:|---:|---:|"]
        for k in ["missing", "stale", "hit_burst"]:
            v = r["stampede"][k]
            lines.append(f"| {k} | {v.get('origin_requests', '–')} | {v['p50_ms']:.2f} | {v['max_ms']:.2f} | {v.get('max_ms_all', v['max_ms']):.2f} |")
        lines += ["", f"(stale and hit_burst: medians of {STAMPEDE_ROUNDS} rounds; origin requests: the most in one round)"]
    if "revalidation" in r:
        v = r["revalidation"]
        lines += ["", f"Revalidating a tag carried by {v['tagged_pages']:,} stored pages: API round trip p50 "
                  f"{v['api_p50_ms']:.2f} ms, max of 50 {v['api_p99_ms']:.2f} ms (client-measured, loopback, keep-alive). "
                  f"Eager revalidation to the first visitor seeing new content: p50 {v['eager_to_new_content_p50_ms']:.2f} ms, "
                  f"max of 10 {v['eager_to_new_content_max_ms']:.2f} ms."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
