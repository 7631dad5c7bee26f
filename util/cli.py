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
import sys
import time
import traceback
from typing import Any, Callable, Optional

from util import distributed
from util.config import Config, compose, defaults_list, expand_sweeps, resolve, to_yaml, value_source
from util.errors import ConfigError, Preempted
from util.preemption import EXIT_PREEMPTED
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


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_run_files(output_dir: str, tree: dict) -> None:
    hydra = tree["hydra"]
    subdir = os.path.join(output_dir, str(hydra.get("output_subdir") or ".hydra"))
    os.makedirs(subdir, exist_ok=True)
    job = {k: v for k, v in tree.items() if k != "hydra"}
    _atomic_write(os.path.join(subdir, "config.yaml"), to_yaml(job))
    _atomic_write(os.path.join(subdir, "hydra.yaml"), to_yaml({"hydra": hydra}))
    _atomic_write(os.path.join(subdir, "overrides.yaml"), to_yaml(list(hydra["overrides"]["task"])))


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


def _run_job(main: MainFn, config_dir: str, name: str, overrides: list[str], job_name: str,
             now: dt.datetime, mode: str, job_num: Optional[int]) -> tuple[dict, str]:
    tree = compose(config_dir, name, overrides, mode=mode, job_num=job_num, job_name=job_name,
                   now=now, resolve=False)
    output_dir = tree["hydra"]["runtime"]["output_dir"]
    if output_dir == "???":
        key = "hydra.run.dir" if mode == "RUN" else "hydra.sweep.dir/hydra.sweep.subdir"
        raise ConfigError(f"Cannot make the run directory: {key} does not resolve. "
                          f"Check paths.log_dir and {key} (e.g. {key.split('/')[0]}=/path/to/runs).")
    cfg = resolve(tree, now)
    if distributed.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        _write_run_files(output_dir, tree)
    distributed.barrier()  # the other ranks may write into the run directory only once it exists
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


def _update_summary(sweep_dir: str, entry: dict) -> None:
    """Add or replace one job in ``summary.json`` (locked: SLURM array tasks share the file)."""
    path = os.path.join(sweep_dir, "summary.json")
    with open(os.path.join(sweep_dir, ".summary.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = {"sweep_dir": sweep_dir, "jobs": []}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                summary = json.load(f)
        jobs = [j for j in summary["jobs"] if j["num"] != entry["num"]] + [entry]
        summary["jobs"] = sorted(jobs, key=lambda j: j["num"])
        summary["aggregate"] = aggregate_metrics([j["metrics"] for j in summary["jobs"] if j["status"] == "ok"])
        _atomic_write(path, json.dumps(summary, indent=2, default=str) + "\n")


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
    indices = list(range(len(jobs)))
    if job_index is not None:
        if not 0 <= job_index < len(jobs):
            raise ConfigError(f"--job-index {job_index} is out of range: this sweep has {len(jobs)} "
                              f"jobs (0..{len(jobs) - 1}); size the SLURM array as --array=0-{len(jobs) - 1}.")
        indices = [job_index]
    if distributed.is_main_process():
        os.makedirs(sweep_dir, exist_ok=True)
        _atomic_write(os.path.join(sweep_dir, "multirun.yaml"), to_yaml(master))
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
        except Preempted as e:  # the whole sweep stops; a requeued array task reruns this job with resume=auto
            entry.update(status="preempted", error=str(e), metrics={})
            if distributed.is_main_process():
                _update_summary(sweep_dir, entry)
            print(f"Preempted in job #{num}: {e}", file=sys.stderr)
            return EXIT_PREEMPTED
        except Exception as e:  # one failed job does not stop the sweep; the exit code reports it
            failed += 1
            user_error = isinstance(e, ConfigError)
            entry.update(status="failed", error=f"{type(e).__name__}: {e}", metrics={})
            logging.getLogger("cli").error("job #%d failed: %s", num, e)
            if not user_error or os.environ.get("HYDRA_FULL_ERROR") == "1":
                traceback.print_exc()
            else:
                print(f"Error in job #{num}: {e}", file=sys.stderr)
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
    except Preempted as e:
        print(f"Preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except ConfigError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {e}\n\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
              file=sys.stderr)
        return EXIT_USAGE
