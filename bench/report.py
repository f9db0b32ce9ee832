"""pytest-benchmark JSON → a table of medians, images per second and ratios, and a latency plot."""
import json
from collections import defaultdict


def publish(report: dict, text: str, path: str | None) -> None:
    """A benchmark script's end: its table on stdout, its report as JSON at `path` (if given)."""
    print(text)
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"JSON: {path}")


def load_rows(path) -> list[dict]:
    data = json.loads(open(path).read())
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "provider" not in info:
            continue
        rows.append({**info, "median_ms": b["stats"]["median"] * 1e3, "iqr_ms": b["stats"]["iqr"] * 1e3,
                     "rounds": b["stats"]["rounds"]})
    return rows


def table(rows: list[dict]) -> str:
    """One block per (model, batch, dtype, device); each provider's median, spread, images/s and
    the best ferfuse provider's speed-up over it (peer median / ferfuse median)."""
    groups = defaultdict(list)
    for r in rows:  # alternating runs may meet a batch size twice (1 2 8 32 1): `step` keeps them apart
        groups[(r["model"], r.get("step", 0), r["batch"], r["dtype"], r["device"])].append(r)
    out = []
    for (model, _, batch, dtype, device), rs in sorted(groups.items()):
        ferfuse = [r for r in rs if r["provider"].startswith("ferfuse")]
        best = min(ferfuse, key=lambda r: r["median_ms"]) if ferfuse else None
        out.append(f"\n{model}, batch {batch}, {dtype}, {device} ({rs[0].get('device_name', '')}; "
                   f"torch {rs[0].get('torch', '?')}, triton {rs[0].get('triton', '?')})")
        extra = "build_s" in rs[0]  # alternating runs: build time and logits error per provider
        out.append(f"  {'provider':<28} {'median ms':>10} {'IQR ms':>8} {'images/s':>10} {'ferfuse speed-up':>17}"
                   + (f" {'build s':>8} {'logits rel err':>15}" if extra else ""))
        for r in sorted(rs, key=lambda r: r["median_ms"]):
            speedup = f"{r['median_ms'] / best['median_ms']:.2f}x" if best else "-"
            name = r["provider"] + (f" ({r['executor']})" if r.get("executor") else "")
            out.append(f"  {name:<28} {r['median_ms']:>10.2f} {r['iqr_ms']:>8.2f} "
                       f"{1e3 * batch / r['median_ms']:>10.1f} {speedup:>17}"
                       + (f" {r['build_s']:>8.1f} {r['logits_rel_error']:>15.1e}" if extra else "")
                       + (f"  OVER its budget {r['logits_budget']:.1e}" if r.get("within_budget") is False else ""))
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> str:
    """Latency against batch size, one line per provider, one panel per (model, dtype, device)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = defaultdict(lambda: defaultdict(list))
    for r in rows:
        panels[(r["model"], r["dtype"], r["device"])][r["provider"]].append((r["batch"], r["median_ms"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, ((model, dtype, device), providers) in zip(axes[0], sorted(panels.items())):
        for provider, points in sorted(providers.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=provider)
        ax.set(title=f"{model} {dtype} {device}", xlabel="batch", ylabel="median latency (ms)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
