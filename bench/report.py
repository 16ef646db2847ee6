"""Result files of load tests and profiles: atomic JSON/text writes, PNG plots and the offline HTML report."""

from __future__ import annotations

import base64
import html
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafleet.atomic import write_bytes

if TYPE_CHECKING:
    from bench.load import LoadSummary
    from bench.sweep import SweepResult


# -- plots -------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return write_bytes(path, buf.getvalue())


def plot_latency_cdfs(records: list[dict], path: Path) -> Path:
    """Empirical CDFs of TTFT, TPOT and end-to-end latency of the successful requests."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ok = [r for r in records if r["ok"]]
    for ax, (key, title) in zip(axes, (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "end-to-end"))):
        values = sorted(1000 * r[key] for r in ok if r.get(key) is not None)
        if values:
            ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post")
        ax.set(title=f"{title} ({len(values)} requests)", xlabel="ms", ylabel="fraction of requests", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    return _save(fig, path)


def throughput_series(records: list[dict], bucket_s: float = 1.0) -> tuple[list[float], list[float], list[float]]:
    """(bucket start s, output tok/s, finished req/s) per bucket since the first request. A request's tokens
    are spread evenly over its decode time (first to last token), so the curve shows when tokens were made."""
    ok = [r for r in records if r["ok"]]
    if not records:
        return [], [], []
    t0 = min(r["start"] for r in records)
    end = max([r["start"] + r.get("e2e_s", 0) for r in records] + [t0 + bucket_s])
    n = int((end - t0) / bucket_s) + 1
    tokens, finished = [0.0] * n, [0.0] * n
    for r in records:
        finished[min(n - 1, int((r["start"] + r.get("e2e_s", 0) - t0) / bucket_s))] += 1
    for r in ok:
        a, b = r["start"] + r["ttft_s"] - t0, r["start"] + r["e2e_s"] - t0
        if b - a <= 1e-9:
            tokens[min(n - 1, int(b / bucket_s))] += r["output_tokens"]
            continue
        rate = r["output_tokens"] / (b - a)
        for i in range(int(a / bucket_s), min(n - 1, int(b / bucket_s)) + 1):
            overlap = min(b, (i + 1) * bucket_s) - max(a, i * bucket_s)
            tokens[i] += rate * max(overlap, 0.0)
    return [i * bucket_s for i in range(n)], [t / bucket_s for t in tokens], [f / bucket_s for f in finished]


def plot_throughput(records: list[dict], path: Path) -> Path:
    plt = _pyplot()
    t, tok_s, req_s = throughput_series(records)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(t, tok_s, label="output tokens/s", color="tab:blue")
    ax.set(xlabel="seconds since start", ylabel="output tokens/s", title="throughput over time")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(t, req_s, label="finished requests/s", color="tab:orange", alpha=0.7)
    ax2.set_ylabel("requests/s")
    ax2.set_ylim(bottom=0)
    fig.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_ttft_vs_concurrency(points: list[tuple[float, float]], path: Path, title: str = "TTFT vs concurrency") -> Path:
    """``points`` are (concurrent users when the request started, TTFT ms); medians per level are joined."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=10, alpha=0.4, label="requests")
        levels = sorted({p[0] for p in points})
        medians = [statistics.median(v for u, v in points if u == level) for level in levels]
        ax.plot(levels, medians, marker="o", color="tab:red", label="median")
        ax.legend()
    ax.set(xlabel="concurrent users", ylabel="TTFT ms", title=title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# -- HTML ----------------------------------------------------------------------------------------------------------
_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f3f3f3}"
        ".best{background:#e6f7e6;font-weight:bold}.miss{color:#a00}img{max-width:100%;margin:1em 0}")


def table_html(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f'<tr class="{(row_classes or [""] * len(rows))[i]}">' + "".join(f"<td>{cell(v)}</td>" for v in row)
                   + "</tr>" for i, row in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, parts: list[str], images: list[Path]) -> str:
    """A self-contained page: inline CSS, PNGs embedded as data URIs (readable offline, no scripts)."""
    imgs = "".join(f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                   for p in images)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}{imgs}</body></html>\n")


def write_load_report(out: Path, records: list[dict], summary: "LoadSummary") -> Path:
    """``plots/*.png`` and ``report.html`` of one load run."""
    plots = out / "plots"
    images = [plot_latency_cdfs(records, plots / "latency_cdf.png"), plot_throughput(records, plots / "throughput.png"),
              plot_ttft_vs_concurrency([(r["users"], 1000 * r["ttft_s"]) for r in records if r["ok"]],
                                       plots / "ttft_vs_concurrency.png")]
    s = summary
    rows = [[name, *(getattr(getattr(s, f"{name}_ms"), k) for k in ("mean", "p50", "p90", "p99"))]
            for name in ("ttft", "tpot", "e2e")]
    facts = (f"<p>{s.num_requests} requests, {s.num_errors} failed ({s.error_rate:.1%}); {s.output_tok_s:.1f} output "
             f"tokens/s, {s.req_s:.2f} requests/s over {s.window_s:.1f} s; {s.users} users, target "
             f"{html.escape(s.target)}.</p>")
    errors = table_html(["failures", "message"], [[n, m] for m, n in s.errors.items()]) if s.errors else ""
    page = html_page(f"load test: {s.workload}", [facts, table_html(["ms", "mean", "p50", "p90", "p99"], rows), errors],
                     images)
    return write_bytes(out / "report.html", page)


def plot_sweep(result: "SweepResult", path: Path) -> Path:
    """Output tokens/s against TTFT and TPOT (the SLO's statistic, p99 by default), one line per profile,
    each point labelled with its users; SLO limits dashed, the best setting starred."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    groups: dict[str | None, list] = {}
    for point in result.points:
        groups.setdefault(point.profile, []).append(point)
    for ax, metric in zip(axes, ("ttft", "tpot")):
        limit = next((lim for lim in result.slo.limits if lim.metric == metric), None)
        stat = limit.stat if limit else "p99"
        for profile, points in groups.items():
            xs = [getattr(getattr(p.summary, f"{metric}_ms"), stat) or 0 for p in points]
            ys = [p.summary.output_tok_s for p in points]
            ax.plot(xs, ys, marker="o", label=profile or "target")
            for p, x, y in zip(points, xs, ys):
                ax.annotate(f"{p.users}u", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            if result.best in points:
                b = result.best
                ax.scatter([getattr(getattr(b.summary, f"{metric}_ms"), stat)], [b.summary.output_tok_s], marker="*",
                           s=260, color="gold", edgecolors="black", zorder=5, label="best meeting SLO")
        largest = max((getattr(getattr(p.summary, f"{metric}_ms"), stat) or 0 for p in result.points), default=0)
        if limit and limit.max_ms <= 2 * largest:
            ax.axvline(limit.max_ms, linestyle="--", color="tab:red", label=f"SLO {limit.key} {limit.max_ms:g} ms")
        elif limit:  # a far-away limit would squeeze every point against the axis
            ax.plot([], [], " ", label=f"SLO {limit.key} {limit.max_ms:g} ms (off scale)")
        ax.set(xlabel=f"{metric.upper()} {stat} (ms)", ylabel="output tokens/s", title=f"throughput vs {metric.upper()}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_latency_vs_users(result: "SweepResult", path: Path) -> Path:
    """TTFT and TPOT (p50 solid, p99 dashed) against concurrency, one colour per profile."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    profiles = list(dict.fromkeys(p.profile for p in result.points))
    for ax, metric in zip(axes, ("ttft", "tpot")):
        for i, profile in enumerate(profiles):
            points = sorted((p for p in result.points if p.profile == profile), key=lambda p: p.users)
            for stat, style in (("p50", "-"), ("p99", "--")):
                ax.plot([p.users for p in points], [getattr(getattr(p.summary, f"{metric}_ms"), stat) or 0 for p in points],
                        style, marker="o", color=f"C{i}", label=f"{profile or 'target'} {stat}")
        ax.set(xlabel="concurrent users", ylabel="ms", title=f"{metric.upper()} vs concurrency")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def write_sweep_report(out: Path, result: "SweepResult") -> Path:
    """``plots/sweep.png``, ``plots/latency_vs_users.png`` and ``report.html`` of a sweep."""
    images = [plot_sweep(result, out / "plots" / "sweep.png"),
              plot_latency_vs_users(result, out / "plots" / "latency_vs_users.png")]
    rows = [[p.label, p.summary.output_tok_s, p.summary.req_s, p.summary.ttft_ms.p99, p.summary.tpot_ms.p99,
             p.summary.num_errors, "best" if p is result.best else ("met" if p.meets_slo else "; ".join(p.violations))]
            for p in result.points]
    classes = ["best" if p is result.best else ("" if p.meets_slo else "miss") for p in result.points]
    verdict = (f"<p>Best setting meeting the SLO: <b>{html.escape(result.best.label)}</b>.</p>" if result.best
               else '<p class="miss">No setting meets the SLO.</p>')
    links = "".join(f'<li><a href="{html.escape(os.path.relpath(p.run_dir, out))}/report.html">'
                    f"{html.escape(p.label)}</a></li>" for p in result.points)
    table = table_html(["setting", "output tok/s", "req/s", "TTFT p99 ms", "TPOT p99 ms", "errors", "SLO"], rows, classes)
    page = html_page("load sweep", [f"<p>SLO: {html.escape(str(result.slo))}</p>", verdict, table,
                                    f"<ul>{links}</ul>"], images)
    return write_bytes(out / "report.html", page)
