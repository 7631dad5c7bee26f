"""The command line shared by ``main_pretrain.py``, ``main_finetune.py`` and ``main_artifacts.py``.

    python main_X.py [--config PATH] [-m] [--cfg job|hydra|all] [--resolve]
                     [--info defaults] [--job-index N] [key=value ...]

One run: compose the config, create the run directory (``hydra.run.dir``) with
``.hydra/{config,hydra,overrides}.yaml`` and a log file, seed, call ``main(cfg)``.
A sweep (``-m`` or ``hydra.mode: MULTIRUN``): one numbered job directory under
``hydra.sweep.dir`` per job, jobs one after another, and ``summary.json`` listing each
job's overrides, directory, status and the metrics dict its ``main`` returned.
``--job-index N`` runs only job N of the sweep (one SLURM array task per job).
Bad input exits with code 2 and one message on stderr; ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""
from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
from typing import Any, Callable, Optional

from util import distributed
from util.config import (Config, compose, defaults_list, expand_sweeps, resolve, resolve_key, to_yaml,
                         value_source)
from util.errors import ConfigError, NonFiniteLossError, Preempted
from util.files import atomic_write_text, describe_os_error
from util.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from util.schema import Bool, SchemaError
from util.seeding import seed_everything

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
EXIT_USAGE = 2

log = logging.getLogger("cli")

MainFn = Callable[[Config], Optional[dict]]


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Compose a config from configs/ (Hydra 1.3 semantics) and run this entry point.",
        epilog="Overrides: key=value (change), +key=value (add), ++key=value (add or change), "
               "~key (delete), group=option (choose a config). Sweeps with -m: key=a,b or range(...).")
    p.add_argument("--config", metavar="PATH",
                   help="a primary config (configs/finetune.yaml) or an experiment file "
                        "(configs/experiment/.../x.yaml, composed as experiment=... on this script's primary)")
    p.add_argument("-m", "--multirun", action="store_true", help="run a sweep: one job per combination")
    p.add_argument("--cfg", choices=["job", "hydra", "all"], help="print the composed config and exit")
    p.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    p.add_argument("--info", choices=["defaults"], help="print the final defaults list and exit")
    p.add_argument("--job-index", type=int, metavar="N",
                   help="run only job N (0-based) of the sweep, e.g. $SLURM_ARRAY_TASK_ID")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. trainer.max_epochs=50")
    return p


def locate_config(path: Optional[str], primary: str) -> tuple[str, str, list[str]]:
    """(config_dir, config_name, extra overrides) for ``--config PATH`` (or the default primary)."""
    if path is None:
        return CONFIG_DIR, primary, []
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise ConfigError(f"--config '{path}' does not exist. Give a YAML file such as configs/{primary}.yaml.")
    if not full.endswith(".yaml"):
        raise ConfigError(f"--config '{path}' is not a .yaml file.")
    folder = os.path.dirname(full)
    config_dir = folder
    while os.path.basename(config_dir) != "configs" and os.path.dirname(config_dir) != config_dir:
        config_dir = os.path.dirname(config_dir)
    if os.path.basename(config_dir) != "configs":
        return folder, os.path.basename(full)[:-5], []  # a standalone config folder
    rel = os.path.relpath(full, config_dir)[:-5].replace(os.sep, "/")
    if "/" not in rel:
        return config_dir, rel, []
    group, _, option = rel.partition("/")
    if group != "experiment":
        raise ConfigError(
            f"--config '{path}' is a '{group}' option, not a primary or an experiment. "
            f"Choose it with the override {group}={option} instead.")
    return config_dir, primary, [f"experiment={option}"]


def _print_defaults(config_dir: str, name: str, overrides: list[str]) -> None:
    rows = defaults_list(config_dir, name, overrides)
    headers = ("Config path", "Package", "_self_", "Parent")
    table = [(r["config_path"], r["package"], str(r["is_self"]), r["parent"] or "") for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    print("\nDefaults List\n*************")
    print(line)
    print("-" * len(line))
    for t in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(t, widths)) + " |")


def _agreed_now() -> dt.datetime:
    """One timestamp for the whole run, the same on every rank (it names the run directory)."""
    now = dt.datetime.now()
    if distributed.world_size() > 1:
        distributed.init_distributed()
        now = distributed.broadcast_object(now)
    return now



def _write_run_files(output_dir: str, tree: dict) -> None:
    hydra = tree["hydra"]
    subdir = os.path.join(output_dir, str(hydra.get("output_subdir") or ".hydra"))
    os.makedirs(subdir, exist_ok=True)
    job = {k: v for k, v in tree.items() if k != "hydra"}
    atomic_write_text(os.path.join(subdir, "config.yaml"), to_yaml(job))
    atomic_write_text(os.path.join(subdir, "hydra.yaml"), to_yaml({"hydra": hydra}))
    atomic_write_text(os.path.join(subdir, "overrides.yaml"), to_yaml(list(hydra["overrides"]["task"])))


def _log_file(cfg: dict, output_dir: str, job_name: str) -> str:
    """``hydra.job_logging.handlers.file.filename`` when set and resolved, else ``<output_dir>/<job>.log``."""
    try:
        name = cfg["hydra"]["job_logging"]["handlers"]["file"]["filename"]
    except (KeyError, TypeError):
        name = None
    if isinstance(name, str) and name and "${" not in name:
        return name
    return os.path.join(output_dir, f"{job_name}.log")


def _setup_logging(log_file: Optional[str], level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    if distributed.is_main_process():
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        root.addHandler(stream)
        if log_file is not None:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            fh = logging.FileHandler(log_file)
            fh.setFormatter(fmt)
            root.addHandler(fh)


def _log_level(tree: dict) -> str:
    try:
        return str(tree["hydra"]["job_logging"]["root"]["level"])
    except (KeyError, TypeError):
        return "INFO"


# the extras group (applied here, for every entry point)
EXTRAS_SCHEMA = {"ignore_warnings": Bool(), "enforce_tags": Bool(), "print_config": Bool()}


def apply_extras(cfg: Config) -> None:
    """The ``extras`` group: silence warnings, insist on tags, print the config."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        import warnings

        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise ConfigError("tags are empty but extras.enforce_tags is true: name the run, e.g. "
                          "tags=[baseline,v1], or set extras.enforce_tags=false.")
    if extras.get("print_config"):
        log.info("config:\n%s", to_yaml({k: v for k, v in cfg.items() if k != "hydra"}))


def _is_timestamped(pattern: Any) -> bool:
    """A run/sweep directory pattern that names a new directory per start (``${now:...}``)."""
    return isinstance(pattern, str) and "${now:" in pattern


def claim_new_directory(path: str) -> str:
    """Create ``path`` exclusively; when it exists (two runs started in the same second) create
    ``path_1``, ``path_2``, ... instead. Returns the directory this process owns."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for n in range(1000):
        candidate = path if n == 0 else f"{path}_{n}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"cannot create a new run directory next to {path}: 1000 exist already")


def lock_directory(path: str, conflict: str = "two runs cannot share a run directory. Wait for it to finish, or "
                   "choose another directory (hydra.run.dir=...).") -> Optional[Any]:
    """Hold ``<path>/.run.lock`` for this process's run, so two processes never run in one directory
    (two ``resume=auto`` of the same run, a pinned ``hydra.run.dir`` started twice). Returns the open
    lock file (closing it releases the lock), or None where the file system has no locks. ``conflict``
    ends the message when another process holds it."""
    lock_path = os.path.join(path, ".run.lock")
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{path} is in use by {holder}: {conflict}") from None
    except OSError:  # e.g. a network file system mounted without locks: run unguarded
        log.warning("cannot lock %s on this file system; make sure no other run uses this directory", path)
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {dt.datetime.now():%Y-%m-%d %H:%M:%S}\n")
    handle.flush()
    return handle


def _run_job(main: MainFn, config_dir: str, name: str, overrides: list[str], job_name: str,
             now: dt.datetime, mode: str, job_num: Optional[int]) -> tuple[dict, str, Optional[float]]:
    tree = compose(config_dir, name, overrides, mode=mode, job_num=job_num, job_name=job_name,
                   now=now, resolve=False)
    output_dir = tree["hydra"]["runtime"]["output_dir"]
    if output_dir == "???":
        key = "hydra.run.dir" if mode == "RUN" else "hydra.sweep.dir"
        try:
            resolve_key(tree, key, now)
            reason = ""
        except ConfigError as e:  # names the unknown key or the missing environment variable
            reason = f" ({e})"
        raise ConfigError(f"Cannot make the run directory: {key} does not resolve{reason}. "
                          f"Check paths.log_dir and {key} (e.g. {key}=/path/to/runs).")
    lock = None
    if distributed.is_main_process():
        if mode == "RUN" and _is_timestamped(tree["hydra"]["run"]["dir"]):
            output_dir = claim_new_directory(output_dir)  # a fresh run never shares a directory
        else:
            os.makedirs(output_dir, exist_ok=True)  # a pinned directory: a continuation, guarded by the lock
        lock = lock_directory(output_dir)
    # the other ranks use rank 0's directory, and write into it only once it exists
    output_dir = distributed.broadcast_object(output_dir)
    tree["hydra"]["runtime"]["output_dir"] = output_dir
    try:
        cfg = resolve(tree, now)
        if distributed.is_main_process():
            _write_run_files(output_dir, tree)
        _setup_logging(_log_file(cfg, output_dir, job_name), _log_level(tree))
        log.info("output directory: %s", output_dir)
        if tree["hydra"]["overrides"]["task"]:
            log.info("overrides: %s", " ".join(tree["hydra"]["overrides"]["task"]))
        apply_extras(cfg)
        seed_everything(cfg.get("seed"))
        try:
            metrics = dict(main(cfg) or {})
        except SchemaError as e:  # say where each bad value was set: a config file or an override
            raise e.with_sources(lambda key: value_source(config_dir, name, overrides, key, mode=mode,
                                                          job_num=job_num)) from None
        # optional key: a standalone config tree need not define it
        objective = optimized_value(metrics, cfg.get("optimized_metric"))
    finally:
        if lock is not None:
            lock.close()
    return metrics, output_dir, objective


def optimized_value(metrics: dict, key: Optional[str]) -> Optional[float]:
    """The value of ``optimized_metric`` among the (flattened) metrics a main returned."""
    if not key:
        return None
    flat = _flatten(metrics)
    if key not in flat:
        raise ConfigError(f"optimized_metric '{key}' is not among the metrics this run returned "
                          f"({', '.join(sorted(flat)) or 'none'}); set optimized_metric to one of them")
    log.info("optimized_metric %s = %s", key, flat[key])
    return flat[key]


def _flatten(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def aggregate_metrics(runs: list[dict]) -> dict:
    """Mean, sample std and count of every numeric metric over the finished jobs (e.g. CV folds)."""
    import math
    import statistics

    values: dict[str, list[float]] = {}
    for metrics in runs:
        for key, value in _flatten(metrics).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.setdefault(key, []).append(float(value))
    return {key: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}
            for key, v in values.items()}


RESULTS = ".results"  # one file per job of a sweep: <sweep dir>/.results/job_<num>.json


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


def sweep_summary(sweep_dir: str) -> dict:
    """The summary of a sweep, built from its jobs' result files (see ``_update_summary``)."""
    folder = os.path.join(sweep_dir, RESULTS)
    jobs = []
    for n, _, _ in _results_stamp(folder):
        with open(os.path.join(folder, n), encoding="utf-8") as f:
            jobs.append(json.load(f))
    jobs.sort(key=lambda j: j["num"])
    return {"sweep_dir": sweep_dir, "jobs": jobs,
            "aggregate": aggregate_metrics([j["metrics"] for j in jobs if j["status"] == "ok"])}


def _update_summary(sweep_dir: str, entry: dict) -> None:
    """Record one job and rewrite ``summary.json``. No lock (SLURM array tasks share the folder, often
    on a network file system without cluster-wide locks): each job writes its own result file
    atomically, and the summary is rebuilt from all of them until no new one appeared meanwhile, so
    the last summary written holds every job."""
    folder = os.path.join(sweep_dir, RESULTS)
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(os.path.join(folder, f"job_{entry['num']}.json"), json.dumps(entry, default=str))
    while True:
        before = _results_stamp(folder)
        atomic_write_text(os.path.join(sweep_dir, "summary.json"),
                          json.dumps(sweep_summary(sweep_dir), indent=2, default=str) + "\n")
        if _results_stamp(folder) == before:
            return


def _sweep_jobs(master: dict, overrides: list[str], config_dir: str) -> tuple[list[str], list[list[str]]]:
    """(hydra overrides given to every job, the task overrides of each job in Hydra's order)."""
    hydra_overrides = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    task_overrides = [o for o in overrides if o not in hydra_overrides]
    params = (master["hydra"].get("sweeper") or {}).get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError("hydra.sweeper.params must be a mapping of key: sweep (e.g. model.lr: 1e-4,1e-3)")
    from_config = [f"{k}={v}" for k, v in params.items()]
    return hydra_overrides, expand_sweeps(from_config + task_overrides, config_dir)


def _multirun(main: MainFn, config_dir: str, name: str, overrides: list[str], job_name: str,
              job_index: Optional[int]) -> int:
    now = _agreed_now()
    master = resolve(compose(config_dir, name, overrides, mode="MULTIRUN", job_name=job_name, now=now,
                             resolve=False), now, strict=False)
    hydra_overrides, jobs = _sweep_jobs(master, overrides, config_dir)
    sweep_dir = master["hydra"]["sweep"]["dir"]
    if "${" in str(sweep_dir):
        raise ConfigError(f"hydra.sweep.dir does not resolve: {sweep_dir}")
    sweep_dir = os.path.abspath(sweep_dir)
    claimed = sweep_dir
    if distributed.is_main_process() and _is_timestamped(master["hydra"]["sweep"].get("dir")) \
            and job_index is None:
        claimed = claim_new_directory(sweep_dir)  # a new sweep never shares a directory
    claimed = distributed.broadcast_object(claimed)
    if claimed != sweep_dir:  # started in the same second as another sweep: the jobs follow the new name
        sweep_dir = claimed
        quoted = sweep_dir.replace("\\", "\\\\").replace("'", "\\'")
        hydra_overrides = hydra_overrides + [f"hydra.sweep.dir='{quoted}'"]
    indices = list(range(len(jobs)))
    if job_index is not None:
        if not 0 <= job_index < len(jobs):
            raise ConfigError(f"--job-index {job_index} is out of range: this sweep has {len(jobs)} "
                              f"jobs (0..{len(jobs) - 1}); size the SLURM array as --array=0-{len(jobs) - 1}.")
        indices = [job_index]
    if distributed.is_main_process():
        os.makedirs(sweep_dir, exist_ok=True)
        atomic_write_text(os.path.join(sweep_dir, "multirun.yaml"), to_yaml(master))
        print(f"[sweep] {len(jobs)} job(s) in {sweep_dir}", file=sys.stderr)
    failed = 0
    for num in indices:
        job_overrides = hydra_overrides + jobs[num]
        if distributed.is_main_process():
            print(f"[sweep] #{num} : {' '.join(jobs[num])}", file=sys.stderr)
        entry: dict[str, Any] = {"num": num, "overrides": jobs[num]}
        start = time.time()
        try:
            metrics, output_dir, objective = _run_job(main, config_dir, name, job_overrides, job_name, now,
                                                      "MULTIRUN", num)
            entry.update(status="ok", output_dir=output_dir, metrics=metrics)
            if objective is not None:
                entry["objective"] = objective
        except (Preempted, KeyboardInterrupt) as e:  # the sweep stops; a requeued task reruns this job
            code, message = explain_failure(e)
            entry.update(status="preempted" if code == EXIT_PREEMPTED else "interrupted", error=message,
                         metrics={})
            if distributed.is_main_process():
                _update_summary(sweep_dir, entry)
            print(f"Job #{num}: {message}", file=sys.stderr)
            return code
        except Exception as e:  # one failed job does not stop the sweep; the exit code reports it
            failed += 1
            known = explain_failure(e)
            entry.update(status="failed", error=known[1] if known else f"{type(e).__name__}: {e}", metrics={})
            logging.getLogger("cli").error("job #%d failed: %s", num, entry["error"])
            if known is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                traceback.print_exc()
            else:
                print(f"Job #{num}: {known[1]}", file=sys.stderr)
        entry["seconds"] = round(time.time() - start, 3)
        if distributed.is_main_process():
            _update_summary(sweep_dir, entry)
    if failed:
        print(f"[sweep] {failed} of {len(indices)} job(s) failed; see {sweep_dir}/summary.json",
              file=sys.stderr)
        return 1
    return 0


def run_cli(main: MainFn, primary: str, argv: Optional[list[str]] = None,
            prog: Optional[str] = None) -> int:
    """Parse ``argv``, compose, and run ``main`` once or per sweep job. Returns the exit code."""
    prog = prog or os.path.basename(sys.argv[0]) or f"main_{primary}.py"
    job_name = os.path.splitext(prog)[0]
    args = build_parser(prog).parse_intermixed_args(argv)  # flags may come after overrides, as with Hydra
    os.environ.setdefault("PROJECT_ROOT", REPO_ROOT)
    try:
        config_dir, name, extra = locate_config(args.config, primary)
        overrides = extra + list(args.overrides)
        if args.info == "defaults":
            _print_defaults(config_dir, name, overrides)
            return 0
        if args.cfg:
            mode = "MULTIRUN" if args.multirun else "RUN"
            tree = compose(config_dir, name, overrides, mode=mode, job_name=job_name, resolve=False)
            if args.resolve:
                tree = resolve(tree)
            part = {"job": {k: v for k, v in tree.items() if k != "hydra"},
                    "hydra": {"hydra": tree["hydra"]}, "all": tree}[args.cfg]
            sys.stdout.write(to_yaml(part))
            return 0
        multirun = args.multirun or args.job_index is not None
        if not multirun:
            probe = compose(config_dir, name, overrides, mode="MULTIRUN", job_name=job_name, resolve=False)
            multirun = probe["hydra"]["runtime"]["configured_mode"] == "MULTIRUN"
        if multirun:
            return _multirun(main, config_dir, name, overrides, job_name, args.job_index)
        _run_job(main, config_dir, name, overrides, job_name, _agreed_now(), "RUN", None)
        return 0
    except (Exception, KeyboardInterrupt) as e:
        known = explain_failure(e)
        if known is None or (os.environ.get("HYDRA_FULL_ERROR") == "1" and not isinstance(e, Preempted)):
            raise
        code, message = known
        hint = "\n\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace." \
            if code in (EXIT_USAGE, 1) else ""
        print(f"{message}{hint}", file=sys.stderr)
        return code


def _unwrap_worker_message(text: str, error: BaseException) -> str:
    """A user error raised in a DataLoader worker arrives wrapped in the worker's traceback text:
    keep the original message only."""
    if "Original Traceback" not in text:
        return text
    found = re.search(rf"(?:^|\n)[\w.]*{re.escape(type(error).__name__)}: (.*)\Z", text, re.S)
    return found.group(1).strip() if found else text


def explain_failure(error: BaseException) -> Optional[tuple[int, str]]:
    """``(exit code, one message)`` for a failure the user can act on; None for a bug (traceback)."""
    if isinstance(error, Preempted):
        return error.exit_code, ("Interrupted: " if error.exit_code == EXIT_INTERRUPTED else "Preempted: ") + str(error)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "Interrupted (Ctrl-C) before a checkpoint could be written: nothing to resume"
    if isinstance(error, ConfigError):
        return EXIT_USAGE, f"Error: {_unwrap_worker_message(str(error), error)}"
    if isinstance(error, OSError) and error.filename is not None:
        return EXIT_USAGE, f"Error: {describe_os_error(error)}"
    if isinstance(error, NonFiniteLossError):
        return 1, f"Error: {error}"
    return None
