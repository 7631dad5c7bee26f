"""Sweeps (``-m``): the jobs of a grid sweep, or the trials of an Optuna search (``util/search.py``),
run one after another in this process, each through ``util.cli``'s job machinery in its own
numbered directory under ``hydra.sweep.dir``.

    <sweep dir>/multirun.yaml              the composed sweep config
    <sweep dir>/<num>/                     one job (its .hydra/, log, checkpoints, metrics)
    <sweep dir>/.results/job_<num>.json    one record per job that ended (ok, failed, pruned, preempted)
    <sweep dir>/summary.json, summary.csv  every job: overrides, status, wall time, objective, metrics
    <sweep dir>/optimization_results.yaml  (search) the best params and value

Resume: the same command with ``hydra.sweep.dir=<that dir> resume=auto`` skips the jobs that ended ok,
reruns failed ones, and resumes an interrupted job from its ``checkpoints/last.pt`` (every job gets
``resume=auto``). A job's record is compared with the job it stands for, so a resume with a changed
command is refused instead of mixing two sweeps in one table (without ``resume``, a job run again in
the same directory replaces its record: what a SLURM array task rerun does).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

from util import distributed
from util.cli import (MainFn, _agreed_now, _is_timestamped, _run_job, claim_new_directory, explain_failure,
                      flatten_metrics)
from util.config import compose, expand_sweeps, parse_override, resolve, to_yaml
from util.errors import ConfigError, Preempted, TrialPruned
from util.files import atomic_write_text
from util.preemption import EXIT_PREEMPTED

log = logging.getLogger("sweep")

RESULTS = ".results"  # one file per job of a sweep: <sweep dir>/.results/job_<num>.json


# --- what a search hears after every validation (the engine calls after_validation) ---------------

_validation_listener: Optional[Callable[[int, dict], bool]] = None


def after_validation(epoch: int, metrics: dict) -> None:
    """Called by the engine on every rank after each epoch's validation. Inside a search trial with a
    pruner, rank 0 reports the optimized metric and decides; every rank stops with ``TrialPruned``."""
    if _validation_listener is None:
        return
    prune = distributed.broadcast_object(_validation_listener(epoch, metrics) if distributed.is_main_process()
                                         else None)
    if prune:
        raise TrialPruned(f"pruned after epoch {epoch} by the search's pruner")


def set_validation_listener(listener: Optional[Callable[[int, dict], bool]]) -> None:
    global _validation_listener
    _validation_listener = listener


# --- one sweep: its directory, its jobs, their records --------------------------------------------

@dataclass
class SweepRun:
    """Everything a job of this sweep needs: the entry point, the config, the shared hydra overrides."""
    main: MainFn
    config_dir: str
    name: str
    job_name: str
    now: Any
    sweep_dir: str
    hydra_overrides: list
    resume: bool

    def previous(self) -> dict:
        """``{num: record}`` of the jobs that already ended in this sweep directory."""
        return {job["num"]: job for job in read_results(self.sweep_dir)}

    def run(self, num: int, overrides: list, extra: Optional[dict] = None) -> dict:
        """Run job ``num`` and record it; returns its record (``status`` ok | failed | pruned |
        preempted | interrupted). Preemption and Ctrl-C propagate after the record is written."""
        if distributed.is_main_process():
            print(f"[sweep] #{num} : {' '.join(overrides)}", file=sys.stderr)
        entry: dict[str, Any] = {"num": num, "overrides": list(overrides), **(extra or {})}
        start = time.time()
        try:
            metrics, output_dir, objective = _run_job(self.main, self.config_dir, self.name,
                                                      self.hydra_overrides + list(overrides), self.job_name,
                                                      self.now, "MULTIRUN", num)
            entry.update(status="ok", output_dir=output_dir, metrics=metrics)
            if objective is not None:
                entry["objective"] = objective
        except (Preempted, KeyboardInterrupt) as e:  # the sweep stops; a requeued task reruns this job
            code, message = explain_failure(e)
            entry.update(status="preempted" if code == EXIT_PREEMPTED else "interrupted", error=message,
                         metrics={}, seconds=round(time.time() - start, 3))
            self.record(entry)
            print(f"Job #{num}: {message}", file=sys.stderr)
            raise
        except TrialPruned as e:
            entry.update(status="pruned", error=str(e), metrics={})
            log.info("job #%d %s", num, e)
        except Exception as e:  # one failed job does not stop the sweep; the exit code reports it
            known = explain_failure(e)
            entry.update(status="failed", error=known[1] if known else f"{type(e).__name__}: {e}", metrics={})
            log.error("job #%d failed: %s", num, entry["error"])
            if known is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                traceback.print_exc()
            else:
                print(f"Job #{num}: {known[1]}", file=sys.stderr)
        entry["seconds"] = round(time.time() - start, 3)
        self.record(entry)
        return entry

    def record(self, entry: dict) -> None:
        if distributed.is_main_process():
            update_summary(self.sweep_dir, entry)


def same_job(recorded: list, overrides: list) -> bool:
    """Whether a job record stands for these overrides (``resume=...`` aside: a resumed sweep adds it)."""
    def key(items):
        return [o for o in items if not o.lstrip("+~").startswith("resume=")]
    return key(recorded) == key(overrides)


def run_sweep(main: MainFn, config_dir: str, name: str, overrides: list, job_name: str,
              job_index: Optional[int]) -> int:
    """Run the sweep ``overrides`` describe (a grid, or a search when ``hydra.sweeper`` is Optuna's)."""
    now = _agreed_now()
    tree = compose(config_dir, name, overrides, mode="MULTIRUN", job_name=job_name, now=now, resolve=False)
    timestamped = _is_timestamped(tree["hydra"]["sweep"].get("dir"))  # a new directory per start
    master = resolve(tree, now, strict=False)
    from util.search import is_search, run_search

    search = is_search(master["hydra"].get("sweeper"))
    resume = master.get("resume") == "auto"
    check_tags(master)
    hydra_overrides = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    task_overrides = [o for o in overrides if o not in hydra_overrides]
    sweep_dir = master["hydra"]["sweep"]["dir"]
    if "${" in str(sweep_dir):
        raise ConfigError(f"hydra.sweep.dir does not resolve: {sweep_dir}")
    sweep_dir = os.path.abspath(sweep_dir)
    if resume and timestamped:
        raise ConfigError("resume=auto continues an earlier sweep: give its directory, e.g. "
                          "hydra.sweep.dir=logs/finetune/multiruns/<date>_<time> resume=auto "
                          "(the same command otherwise)")
    jobs = None if search else _grid_jobs(master, task_overrides, config_dir)
    if job_index is not None and not search and not 0 <= job_index < len(jobs):
        raise ConfigError(f"--job-index {job_index} is out of range: this sweep has {len(jobs)} "
                          f"jobs (0..{len(jobs) - 1}); size the SLURM array as --array=0-{len(jobs) - 1}.")
    claimed = sweep_dir
    if distributed.is_main_process() and timestamped and job_index is None:
        claimed = claim_new_directory(sweep_dir)  # a new sweep never shares a directory
    claimed = distributed.broadcast_object(claimed)
    if claimed != sweep_dir:  # started in the same second as another sweep: the jobs follow the new name
        sweep_dir = claimed
        quoted = sweep_dir.replace("\\", "\\\\").replace("'", "\\'")
        hydra_overrides = hydra_overrides + [f"hydra.sweep.dir='{quoted}'"]
    if distributed.is_main_process():
        os.makedirs(sweep_dir, exist_ok=True)
        atomic_write_text(os.path.join(sweep_dir, "multirun.yaml"), to_yaml(master))
    sweep = SweepRun(main, config_dir, name, job_name, now, sweep_dir, hydra_overrides, resume)
    try:
        if search:
            return run_search(sweep, master, task_overrides)
        return _run_grid(sweep, jobs, job_index)
    except (Preempted, KeyboardInterrupt) as e:
        return explain_failure(e)[0]


def _grid_jobs(master: dict, task_overrides: list, config_dir: str) -> list:
    """The task overrides of each job in Hydra's order (``hydra.sweeper.params`` first)."""
    params = (master["hydra"].get("sweeper") or {}).get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError("hydra.sweeper.params must be a mapping of key: sweep (e.g. model.lr: 1e-4,1e-3)")
    from_config = [f"{k}={v}" for k, v in params.items()]
    return expand_sweeps(from_config + task_overrides, config_dir)


def _run_grid(sweep: SweepRun, jobs: list, job_index: Optional[int]) -> int:
    indices = list(range(len(jobs))) if job_index is None else [job_index]
    previous = sweep.previous() if sweep.resume else {}
    for num in indices:
        old = previous.get(num)
        if old is not None and not same_job(old["overrides"], jobs[num]):
            raise ConfigError(
                f"{sweep.sweep_dir} already holds job #{num} with other overrides ({' '.join(old['overrides'])}; "
                f"this sweep's #{num} is {' '.join(jobs[num])}). Rerun the sweep's own command, or choose a new "
                f"hydra.sweep.dir.")
    if distributed.is_main_process():
        print(f"[sweep] {len(jobs)} job(s) in {sweep.sweep_dir}", file=sys.stderr)
    failed = 0
    for num in indices:
        old = previous.get(num)
        if sweep.resume and old is not None and old["status"] == "ok":
            if distributed.is_main_process():
                print(f"[sweep] #{num} ended ok before: skipped (resume=auto)", file=sys.stderr)
            continue
        entry = sweep.run(num, jobs[num])
        failed += entry["status"] == "failed"
    if failed:
        print(f"[sweep] {failed} of {len(indices)} job(s) failed; see {sweep.sweep_dir}/summary.json",
              file=sys.stderr)
        return 1
    return 0


def check_tags(master: dict) -> None:
    """``extras.enforce_tags``: a sweep must be tagged before its first job starts (its results are
    found again by their tags), not refused job by job."""
    extras = master.get("extras") or {}
    if extras.get("enforce_tags") and not master.get("tags"):
        raise ConfigError("this sweep has no tags and extras.enforce_tags is true: add them to the command, "
                          "e.g. tags=[label_efficiency,v1] (or set extras.enforce_tags=false)")


# --- records and the summary table ----------------------------------------------------------------

def _results_stamp(folder: str) -> list:
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith("job_") and n.endswith(".json"))
    except FileNotFoundError:
        return []
    stamp = []
    for n in names:
        st = os.stat(os.path.join(folder, n))
        stamp.append((n, st.st_mtime_ns, st.st_size))
    return stamp


def read_results(sweep_dir: str) -> list:
    """The records of every job that ended in ``sweep_dir``, by job number."""
    folder = os.path.join(sweep_dir, RESULTS)
    jobs = []
    for n, _, _ in _results_stamp(folder):
        with open(os.path.join(folder, n), encoding="utf-8") as f:
            jobs.append(json.load(f))
    return sorted(jobs, key=lambda j: j["num"])


def aggregate_metrics(runs: list) -> dict:
    """Mean, sample std and count of every numeric metric over the finished jobs (e.g. CV folds)."""
    values: dict[str, list[float]] = {}
    for metrics in runs:
        for key, value in flatten_metrics(metrics).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.setdefault(key, []).append(float(value))
    return {key: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}
            for key, v in values.items()}


def sweep_summary(sweep_dir: str) -> dict:
    jobs = read_results(sweep_dir)
    return {"sweep_dir": sweep_dir, "jobs": jobs,
            "aggregate": aggregate_metrics([j["metrics"] for j in jobs if j["status"] == "ok"])}


def override_columns(overrides: list) -> dict:
    """``["data.train_fraction=0.1", "+protocol=linear_probe"]`` -> ``{key: value text}``."""
    out = {}
    for line in overrides:
        try:
            o = parse_override(line)
        except ConfigError:
            continue
        out[o.key_element()] = o.value_str() if o.has_value else ""
    return out


def summary_csv(summary: dict) -> str:
    """One row per job: its number, status, wall time, objective, each override key, each metric."""
    jobs = summary["jobs"]
    keys, metrics = [], []
    for job in jobs:
        keys += [k for k in override_columns(job["overrides"]) if k not in keys]
        metrics += [k for k in flatten_metrics(job.get("metrics") or {}) if k not in metrics]
    fields = ["num", "status", "seconds", "objective", *keys, *metrics, "output_dir", "error"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for job in jobs:
        writer.writerow({**{k: job.get(k, "") for k in ("num", "status", "seconds", "objective", "output_dir",
                                                          "error")},
                         **override_columns(job["overrides"]), **flatten_metrics(job.get("metrics") or {})})
    return out.getvalue()


def update_summary(sweep_dir: str, entry: dict) -> None:
    """Record one job and rewrite ``summary.json`` and ``summary.csv``. No lock (SLURM array tasks share
    the folder, often on a network file system without cluster-wide locks): each job writes its own
    record atomically, and the summary is rebuilt from all of them until no new one appeared meanwhile,
    so the last summary written holds every job."""
    folder = os.path.join(sweep_dir, RESULTS)
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(os.path.join(folder, f"job_{entry['num']}.json"), json.dumps(entry, default=str))
    while True:
        before = _results_stamp(folder)
        summary = sweep_summary(sweep_dir)
        atomic_write_text(os.path.join(sweep_dir, "summary.json"), json.dumps(summary, indent=2, default=str) + "\n")
        atomic_write_text(os.path.join(sweep_dir, "summary.csv"), summary_csv(summary))
        if _results_stamp(folder) == before:
            return
