#!/usr/bin/env python3
"""Bar charts of one bench/run.py result: requests per second and hits per server
CPU-second for each target and scenario, as ratios to nginx static.

    python3 bench/plot.py bench/results/<stamp>.json [OUT.png]

Needs matplotlib (`pip install matplotlib`); writes bench/results/<stamp>.png by default.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".png"
    run = json.load(open(src))
    rows = run["table"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    width = 0.8 / len(targets)
    for ax, field, title in [
        (axes[0], "rps_vs_nginx_static", "requests per second"),
        (axes[1], "cpu_eff_vs_nginx_static", "hits per server CPU-second"),
    ]:
        for i, t in enumerate(targets):
            xs, ys = [], []
            for j, s in enumerate(scenarios):
                r = next((r for r in rows if r["scenario"] == s and r["target"] == t), None)
                if r:
                    xs.append(j + (i - (len(targets) - 1) / 2) * width)
                    ys.append(r[field])
            ax.bar(xs, ys, width, label=t)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(scenarios)), scenarios)
        ax.set_title(f"{title}, × nginx static")
    axes[0].set_ylabel("ratio to nginx static (same run)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(targets), fontsize=9)
    fig.suptitle(f"bench/run.py {run['when']} (medians of {run['args']['reps']} reps)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
