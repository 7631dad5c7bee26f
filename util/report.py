"""The report of a sweep: mean, std and a bootstrap 95% interval of each metric per group of jobs,
as Markdown, plus a plot of one metric against one swept value.

    python -m util.report <sweep dir> [--metric test/auroc_macro ...] [--by protocol ...] [--x data.train_fraction]

Groups are the swept keys (the override keys whose values differ between the jobs that ended ok)
except the replicate keys, which are averaged over: ``seed`` and any key ending in ``seed`` unless
``--by`` names the grouping. The interval is a percentile bootstrap of the mean over the group's
jobs (resampling jobs, e.g. seeds), so with three seeds it is wide, as it should be. Writes
``<sweep dir>/report.md`` and ``<sweep dir>/report_<metric>.png``; prints the Markdown.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np

from util.files import atomic_write_text
from util.sweeps import flatten_metrics, override_columns, read_results

# metrics shown when --metric is not given, in this order, when the jobs returned them
PREFERRED = ("auroc_macro", "auprc_macro", "f1_macro", "accuracy", "balanced_accuracy", "auroc", "auprc", "f1",
             "rmse", "mae", "r2", "pearson_r", "loss")


# overrides that say how a job was run, not what it computed (a resumed sweep adds resume=auto to the
# jobs it reran): never a grouping key
BOOKKEEPING = ("resume", "hydra.", "trainer.enable_progress_bar", "extras.")


def is_replicate(key: str) -> bool:
    return key.lstrip("+~").split(".")[-1].endswith("seed")


def is_bookkeeping(key: str) -> bool:
    key = key.lstrip("+~")
    return any(key == b or (b.endswith(".") and key.startswith(b)) for b in BOOKKEEPING)


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean of ``values`` (one value: that value twice)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _sort_key(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


class SweepTable:
    """The jobs of a sweep that ended ok, with their swept values and numeric metrics."""

    def __init__(self, sweep_dir: str) -> None:
        self.sweep_dir = sweep_dir
        self.all_jobs = read_results(sweep_dir)
        if not self.all_jobs:
            raise SystemExit(f"error: {sweep_dir} holds no finished jobs (no .results/job_*.json); "
                             f"give the directory a sweep printed as '[sweep] N job(s) in <dir>'")
        self.jobs = [j for j in self.all_jobs if j["status"] == "ok"]
        self.values = [override_columns(j["overrides"]) for j in self.jobs]
        self.metrics = [{k: v for k, v in flatten_metrics(j.get("metrics") or {}).items() if _number(v) is not None}
                        for j in self.jobs]
        keys = []
        for v in self.values:
            keys += [k for k in v if k not in keys]
        self.swept = [k for k in keys if len({v.get(k) for v in self.values}) > 1 and not is_bookkeeping(k)]

    def metric_names(self) -> list:
        names = []
        for m in self.metrics:
            names += [k for k in m if k not in names]
        return names

    def default_metrics(self) -> list:
        names = self.metric_names()
        for split in ("test", "val"):
            chosen = [f"{split}/{m}" for m in PREFERRED if f"{split}/{m}" in names]
            if chosen:
                return chosen[:4]
        return names[:4]

    def groups(self, by: Sequence[str]) -> dict:
        """``{(value of each ``by`` key): [job positions]}`` in a natural order."""
        out: dict = {}
        for i, v in enumerate(self.values):
            out.setdefault(tuple(v.get(k, "") for k in by), []).append(i)
        return dict(sorted(out.items(), key=lambda kv: [_sort_key(x) for x in kv[0]]))


def summarise(table: SweepTable, by: Sequence[str], metrics: Sequence[str], n_boot: int) -> list:
    rows = []
    for group, members in table.groups(by).items():
        row = {"group": dict(zip(by, group)), "n": len(members), "stats": {}}
        for m in metrics:
            values = [table.metrics[i][m] for i in members if m in table.metrics[i]]
            if not values:
                continue
            low, high = bootstrap_mean_ci(values, n_boot)
            row["stats"][m] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
                               else 0.0, "low": low, "high": high, "n": len(values)}
        rows.append(row)
    return rows


def pivot_table(rows: list, by: Sequence[str], x_key: str, metric: str) -> Optional[list]:
    """The table a paper prints: one row per combination of the other keys, one column per value of
    ``x_key``, cells ``mean ± std`` of ``metric`` (None unless there is one other key or none)."""
    others = [k for k in by if k != x_key]
    if len(others) > 1:
        return None
    columns = sorted({r["group"][x_key] for r in rows}, key=_sort_key)
    cells: dict = {}
    for r in rows:
        s = r["stats"].get(metric)
        label = r["group"][others[0]] if others else metric
        cells.setdefault(label, {})[r["group"][x_key]] = "-" if s is None else f"{s['mean']:.3f} ± {s['std']:.3f}"
    head = [f"`{others[0]}`" if others else ""] + [f"{x_key} = {c}" for c in columns]
    out = [f"`{metric}` (mean ± std over the replicates):", "", "| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
    out += ["| " + " | ".join([label] + [row.get(c, "-") for c in columns]) + " |" for label, row in cells.items()]
    return out


def markdown(table: SweepTable, rows: list, by: Sequence[str], metrics: Sequence[str], replicates: Sequence[str],
             plot_name: Optional[str], pivot: Optional[list] = None) -> str:
    lines = [f"# Sweep report: {table.sweep_dir}", ""]
    states: dict = {}
    for j in table.all_jobs:
        states[j["status"]] = states.get(j["status"], 0) + 1
    lines.append(f"{len(table.all_jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".")
    if replicates:
        lines.append(f"Averaged over {', '.join(f'`{k}`' for k in replicates)}; mean ± std over the jobs of each row, "
                     f"[95% bootstrap interval of the mean], n jobs.")
    lines.append("")
    header = [f"`{k}`" for k in by] + [f"`{m}`" for m in metrics] + ["n"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        cells = [row["group"][k] for k in by]
        for m in metrics:
            s = row["stats"].get(m)
            cells.append("-" if s is None else f"{s['mean']:.3f} ± {s['std']:.3f} [{s['low']:.3f}, {s['high']:.3f}]")
        cells.append(str(row["n"]))
        lines.append("| " + " | ".join(cells) + " |")
    if pivot is not None:
        lines += ["", *pivot]
    bad = [j for j in table.all_jobs if j["status"] != "ok"]
    if bad:
        lines += ["", "Jobs that did not end ok:", ""]
        lines += [f"- #{j['num']} {j['status']}: {' '.join(j['overrides'])}: {j.get('error', '')}" for j in bad]
    if plot_name:
        lines += ["", f"![{plot_name}]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(table: SweepTable, rows: list, by: Sequence[str], x_key: str, metric: str, path: str) -> None:
    """``metric`` against ``x_key``, one line per combination of the other group keys, with the
    bootstrap intervals as error bars; a log x axis when the values span a decade or more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [k for k in by if k != x_key]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    lines: dict = {}
    for row in rows:
        s = row["stats"].get(metric)
        if s is None:
            continue
        label = ", ".join(f"{row['group'][k]}" for k in others) or metric
        lines.setdefault(label, []).append((float(row["group"][x_key]), s))
    for label, points in lines.items():
        points.sort(key=lambda p: p[0])
        xs = [p[0] for p in points]
        means = np.array([p[1]["mean"] for p in points])
        err = np.array([[p[1]["mean"] - p[1]["low"] for p in points], [p[1]["high"] - p[1]["mean"] for p in points]])
        ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=label)
    xs_all = [float(r["group"][x_key]) for r in rows]
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(xs_all)))
        ax.set_xticklabels([f"{x:g}" for x in sorted(set(xs_all))])
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if len(lines) > 1 or others:
        ax.legend(title=", ".join(others) or None, fontsize=8)
    n = max((r["n"] for r in rows), default=0)
    ax.set_title(f"{metric} vs {x_key} (mean, 95% bootstrap CI over up to {n} jobs)", fontsize=9)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def _numeric_key(table: SweepTable, key: str) -> bool:
    try:
        [float(v.get(key, "")) for v in table.values]
        return True
    except ValueError:
        return False


def report(sweep_dir: str, metrics: Optional[Sequence[str]] = None, by: Optional[Sequence[str]] = None,
           x_key: Optional[str] = None, n_boot: int = 2000) -> str:
    """Write ``report.md`` (and a plot when a numeric swept key exists) into ``sweep_dir``; returns the Markdown."""
    table = SweepTable(sweep_dir)
    if not table.jobs:
        raise SystemExit(f"error: no job of {sweep_dir} ended ok; see its summary.csv for the errors")
    known = table.metric_names()
    metrics = list(metrics or table.default_metrics())
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise SystemExit(f"error: no job returned {', '.join(unknown)}; the metrics are: {', '.join(known)}")
    by = list(by) if by is not None else [k for k in table.swept if not is_replicate(k)]
    missing = [k for k in by if k not in {k for v in table.values for k in v}]
    if missing:
        raise SystemExit(f"error: --by {', '.join(missing)} is not an override of this sweep; swept keys: "
                         f"{', '.join(table.swept) or 'none'}")
    replicates = [k for k in table.swept if k not in by]
    rows = summarise(table, by, metrics, n_boot)
    if x_key is None:
        numeric = [k for k in by if _numeric_key(table, k)]
        x_key = next((k for k in numeric if "fraction" in k), numeric[0] if numeric else None)
    plot_name = None
    if x_key is not None:
        if x_key not in by:
            raise SystemExit(f"error: --x {x_key} must be one of the grouping keys ({', '.join(by)})")
        plot_name = f"report_{metrics[0].replace('/', '_')}.png"
        plot(table, rows, by, x_key, metrics[0], os.path.join(sweep_dir, plot_name))
    pivot = pivot_table(rows, by, x_key, metrics[0]) if x_key is not None else None
    text = markdown(table, rows, by, metrics, replicates, plot_name, pivot)
    atomic_write_text(os.path.join(sweep_dir, "report.md"), text)
    return text


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m util.report", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="a sweep directory (holds summary.json and .results/)")
    p.add_argument("--metric", action="append", help="a metric key, e.g. test/auroc_macro (repeatable; the first "
                                                     "is plotted); default: the test headline metrics")
    p.add_argument("--by", action="append", help="group by this override key (repeatable); default: every swept "
                                                 "key except *seed")
    p.add_argument("--x", help="the swept key on the plot's x axis; default: a numeric one, *fraction* first")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.sweep_dir):
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        text = report(args.sweep_dir, args.metric, args.by, args.x, args.n_boot)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    print(text)
    print(f"written: {os.path.join(args.sweep_dir, 'report.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
