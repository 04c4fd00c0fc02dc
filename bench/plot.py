"""The report's PNG: speedup per case, and achieved bandwidth against the byte floor.

Left: fastclip's speedup over torch (its default path; the per-tensor loop as a second bar), log
scale, 1x marked.  Right: bandwidth each clipper achieves (bytes it must move / median time),
with the copy bandwidth measured in the same group as the floor marker.  Needs matplotlib
(imported here only, so the rest of the report works without it).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(rows: list[dict], path: str, title: str = "") -> str:
    labels = [f"{r['set']} {r['dtype']} {r['regime']}" for r in rows]
    y = list(range(len(rows)))[::-1]
    h = 0.38
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.32 * len(rows) + 1.8), sharey=True)

    sp = [r["speedup"] or 0 for r in rows]
    sp_loop = [(r["torch_loop"] / r["fastclip"]) if r["torch_loop"] and r["fastclip"] else 0 for r in rows]
    ax1.barh([v + h / 2 for v in y], sp, h, label="vs torch (default: foreach)", color="tab:blue")
    ax1.barh([v - h / 2 for v in y], sp_loop, h, label="vs torch foreach=False", color="tab:cyan")
    ax1.axvline(1.0, color="k", lw=0.8)
    ax1.set_xscale("log")
    ax1.set_xlabel("speedup of fastclip (x, log scale)")
    ax1.set_yticks(y)
    ax1.set_yticklabels(labels, fontsize=8)
    ax1.legend(fontsize=8, loc="lower right")
    for v, s in zip(y, sp):
        if s:
            ax1.text(s, v + h / 2, f" {s:.2f}", va="center", fontsize=7)

    ax2.barh([v + h / 2 for v in y], [r["gbs"] or 0 for r in rows], h, label="fastclip", color="tab:green")
    ax2.barh([v - h / 2 for v in y], [r["torch_gbs"] or 0 for r in rows], h, label="torch", color="tab:gray")
    floor = [(v, r["copy_gbs"]) for v, r in zip(y, rows) if r["copy_gbs"]]
    if floor:
        ax2.scatter([f for _, f in floor], [v for v, _ in floor], marker="|", s=220, color="tab:red",
                    label="floor: copy bandwidth", zorder=3)
    ax2.set_xscale("log")
    ax2.set_xlabel("achieved GB/s, log scale (3N bytes when clipping, N when not)")
    ax2.legend(fontsize=8, loc="lower right")

    fig.suptitle(f"fastclip vs torch.nn.utils.clip_grad_norm_ — {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
