#!/usr/bin/env python3
"""Memory while isr passes a body far over max_body to a visitor (never buffered).

    python3 bench/large_body.py [--mib 1024]

An origin streams one response of --mib MiB (text/html, so isr would compress it if it
stored it); isr (release build, max_body 8 MiB) passes it through to curl, once at full
speed and once to a client reading at 20 MiB/s. isr's RSS is sampled every 50 ms. Prints
a Markdown table for BENCHMARKS.md.
"""

import argparse
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

ORIGIN_PORT = 19400
PORT = 19405


def origin(mib):
    chunk = (b"<p>" + b"large body " * 93 + b"</p>\n")[:1024] * 64  # 64 KiB

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(mib << 20))
            self.end_headers()
            for _ in range(mib * 16):
                self.wfile.write(chunk)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", ORIGIN_PORT), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def transfer(pid, path, rate=None):
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], run.tree_rss_mib(pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    before = run.tree_rss_mib(pid)
    t.start()
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"]
    if rate:
        cmd += ["--limit-rate", rate]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{PORT}{path}"], capture_output=True, text=True).stdout
    done.set()
    t.join()
    size, secs = out.split()
    return before, peak[0], run.tree_rss_mib(pid), int(size), float(secs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    run.sh("cargo build --release -q --bin isr", cwd=run.ROOT)
    work = tempfile.mkdtemp(prefix="isr-large-")
    srv = origin(args.mib)
    s = run.Servers(work)
    try:
        run.start_isr(s, "isr", work, PORT, f"127.0.0.1:{ORIGIN_PORT}", "")
        pid = s.procs["isr"].pid
        rows = [("full speed", transfer(pid, "/large/1")),
                ("client at 20 MiB/s", transfer(pid, "/large/2", rate="20M"))]
    finally:
        s.stop_all()
        srv.shutdown()
    print(f"Command: `python3 bench/large_body.py --mib {args.mib}`\n")
    print("| client | bytes received | seconds | isr RSS before (MiB) | peak | after |")
    print("|---|---|---|---|---|---|")
    for name, (before, peak, after, size, secs) in rows:
        print(f"| {name} | {size:,} | {secs:.1f} | {before:.1f} | {peak:.1f} | {after:.1f} |")


if __name__ == "__main__":
    main()
