"""Hyperparameter search with Optuna (``-m hparams_search=...``): the trials are jobs of a sweep
(``util/sweeps.py``), each in ``<sweep dir>/<trial number>/``, recorded in the summary like any job.

``hydra.sweeper`` (``configs/hydra/sweeper/optuna.yaml``; the keys of Hydra's Optuna sweeper plugin):

    direction: minimize | maximize      of ``optimized_metric`` (a key of what the main returns)
    n_trials: 20                        trials in the study, counted over every process that shares it
    storage: null                       null: sqlite:///<sweep dir>/optuna.db; or any Optuna storage URL,
                                        e.g. sqlite:////shared/study.db for several SLURM array tasks
    study_name: null                    needed with a storage of your own (several studies may share it)
    sampler: {_target_: optuna.samplers.TPESampler, seed: 1234, n_startup_trials: 10}
    pruner: null                        e.g. {_target_: optuna.pruners.MedianPruner, n_warmup_steps: 2}
    params:                             Hydra's sweep syntax
      model.optim.blr: tag(log, interval(1e-6, 1e-4))   float, log scale
      model.optim.layer_decay: interval(0.5, 0.9)       float
      trainer.max_epochs: int(interval(10, 50))         int
      data.batch_size: choice(16, 32, 64)               categorical
      model.size: range(1, 4)                           int 1, 2, 3 (stop excluded, as in a grid sweep)
      model.optim.warmup_epochs: 5                      fixed: given to every trial

Every trial asks the sampler under a file lock, so processes sharing one study (``--job-index`` of a
SLURM array, or the same command started twice) run exactly ``n_trials`` together. The sampler is
seeded with ``seed + trial number``: a search is repeatable, and two workers never draw the same
start. A trial that fails is told FAIL and the study goes on; with a pruner, the engine reports
``optimized_metric`` after every validation and a pruned trial ends as PRUNED. With ``resume=auto``
a trial whose process died is run again (from its checkpoint) under its own number and params.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import sys
from typing import Any, Optional

from util import distributed
from util.config import Sweep, _Repo, _value_to_str, instantiate, parse_override, to_yaml
from util.errors import ConfigError
from util.files import atomic_write_text
from util.schema import Anything, Choice, Int, SchemaError, Str, check

log = logging.getLogger("search")

# hydra.sweeper._target_ names which sweeper runs the jobs: Hydra's own names (configs written for Hydra
# work unchanged); they are identifiers here, nothing is imported from Hydra
SEARCH_TARGETS = ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",)
GRID_TARGETS = (None, "hydra._internal.core_plugins.basic_sweeper.BasicSweeper")

SEARCH_SCHEMA = {
    "_target_": Str(), "direction": Choice("minimize", "maximize"), "n_trials": Int(min=1),
    "n_jobs": Int(min=1, required=False), "storage": Str(nullable=True, required=False),
    "study_name": Str(nullable=True, required=False), "sampler": Anything(nullable=True, required=False),
    "pruner": Anything(nullable=True, required=False), "params": Anything(nullable=True),
    "max_batch_size": Anything(nullable=True, required=False),
}


def is_search(sweeper: Optional[dict]) -> bool:
    """Whether ``hydra.sweeper`` asks for an Optuna search (otherwise: a grid sweep)."""
    target = (sweeper or {}).get("_target_")
    if target in SEARCH_TARGETS:
        return True
    if target in GRID_TARGETS:
        return False
    raise ConfigError(f"hydra.sweeper._target_ '{target}' is not a sweeper here: use hparams_search=<name> (or "
                      f"hydra/sweeper=optuna) for a search, hydra/sweeper=basic for a grid sweep")


def _check(sweeper: dict) -> None:
    problems = check(sweeper, SEARCH_SCHEMA, "hydra.sweeper")
    if problems:
        raise SchemaError(problems)
    if (sweeper.get("n_jobs") or 1) > 1:
        raise ConfigError("hydra.sweeper.n_jobs > 1 is not supported: run several processes that share one "
                          "study instead (hydra.sweeper.storage=sqlite:///<file> and a SLURM array, see README)")
    for key in ("sampler", "pruner"):
        node = sweeper.get(key)
        if node is not None and not str((node or {}).get("_target_", "")).startswith(f"optuna.{key}s."):
            raise ConfigError(f"hydra.sweeper.{key}._target_ must be an optuna.{key}s class, e.g. "
                              f"{'optuna.samplers.TPESampler' if key == 'sampler' else 'optuna.pruners.MedianPruner'}"
                              f"; got {(node or {}).get('_target_')!r}")


def search_space(params: dict, task_overrides: list, config_dir: str) -> tuple[dict, dict]:
    """``({name: optuna distribution}, {name: fixed value text})`` from ``hydra.sweeper.params`` and the
    command line (a command-line value replaces a param of the same key)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(task_overrides)
    space: dict = {}
    fixed: dict = {}
    for line in lines:
        o = parse_override(line)
        name = o.key_element()
        space.pop(name, None)
        fixed.pop(name, None)
        value = o.value_raw
        if not isinstance(value, Sweep):
            fixed[name] = o.value_str() if o.has_value else None
            continue
        log_scale = "log" in value.tags
        if value.kind == "interval":
            start, end = value.extra["start"], value.extra["end"]
            if start >= end:
                raise ConfigError(f"'{line}': interval needs start < end")
            if isinstance(start, int) and isinstance(end, int):
                space[name] = IntDistribution(start, end, log=log_scale)
            else:
                space[name] = FloatDistribution(float(start), float(end), log=log_scale)
        elif value.kind == "range" and not value.shuffle:
            values = value.values()
            if not values:
                raise ConfigError(f"'{line}': the range is empty")
            start, step = value.extra["start"], value.extra["step"]
            if all(isinstance(v, int) for v in (start, step)) and isinstance(values[-1], int):
                space[name] = IntDistribution(start, values[-1], step=step, log=log_scale and step == 1)
            else:
                space[name] = FloatDistribution(float(start), float(values[-1]), step=float(step))
        else:  # choice, shuffled range, glob: categorical over the values a grid sweep would run
            options = _Repo(config_dir).group_options(o.key) if value.kind == "glob" else None
            choices = [_categorical(v) for v in value.values(options)]
            space[name] = CategoricalDistribution(choices)
    if not space:
        raise ConfigError("the search has nothing to search: hydra.sweeper.params needs at least one "
                          "interval(...), choice(...) or range(...)")
    return space, fixed


def _categorical(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return str(value) if type(value).__name__ == "Quoted" else value
    return _value_to_str(value)  # a list or dict choice: its override text


def trial_overrides(params: dict, fixed: dict) -> list:
    """A trial's overrides: its sampled params, then the fixed ones, as ``key=value``."""
    out = [f"{k}={_value_to_str(v)}" for k, v in params.items()]
    out += [f"{k}={v}" if v is not None else k for k, v in fixed.items()]
    return out


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on ``path`` (a file beside the study), for asking a trial atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: workers may overshoot n_trials by one each
            log.warning("cannot lock %s; processes sharing this study may run a few trials too many", path)
        yield


def _job_is_orphaned(job_dir: str) -> bool:
    """A trial's directory whose run lock nobody holds: its process died (or was preempted)."""
    lock_path = os.path.join(job_dir, ".run.lock")
    if not os.path.exists(lock_path):
        return False
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


class _Study:
    """The Optuna side of a search, driven from rank 0."""

    def __init__(self, sweeper: dict, sweep_dir: str, space: dict, fixed: dict) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.sweeper, self.sweep_dir, self.space, self.fixed = sweeper, sweep_dir, space, fixed
        self.asked: dict = {}  # trial number -> the optuna Trial this process asked (it reports for pruning)
        storage = sweeper.get("storage")
        if storage and not sweeper.get("study_name"):
            raise ConfigError("hydra.sweeper.storage is set, so name the study too: hydra.sweeper.study_name=<name> "
                              "(every process of this search uses the same name)")
        self.storage = storage or f"sqlite:///{os.path.join(sweep_dir, 'optuna.db')}"
        self.study_name = sweeper.get("study_name") or "search"
        prefix = "sqlite:///"
        db_file = self.storage[len(prefix):] if self.storage.startswith(prefix) else None
        self.lock_path = (db_file + ".lock") if db_file else os.path.join(sweep_dir, ".search.lock")
        if db_file:
            os.makedirs(os.path.dirname(os.path.abspath(db_file)), exist_ok=True)
        pruner = instantiate(sweeper["pruner"]) if sweeper.get("pruner") else None
        try:
            with _locked(self.lock_path):
                self.study = optuna.create_study(storage=self.storage, study_name=self.study_name,
                                                 direction=sweeper["direction"], pruner=pruner,
                                                 load_if_exists=True)
        except Exception as e:  # a wrong URL, a missing driver, a study with another direction
            raise ConfigError(f"cannot open the Optuna study '{self.study_name}' in {self.storage}: "
                              f"{type(e).__name__}: {e}") from None
        if self.study.direction.name.lower() != sweeper["direction"]:
            raise ConfigError(f"the study '{self.study_name}' in {self.storage} maximises/minimises the other way "
                              f"({self.study.direction.name.lower()}); hydra.sweeper.direction is "
                              f"{sweeper['direction']}. Use another study_name or hydra.sweep.dir.")

    def _sampler(self, number: int):
        node = dict(self.sweeper.get("sampler") or {"_target_": "optuna.samplers.TPESampler"})
        if node.get("seed") is not None:  # repeatable, and distinct for every trial whoever asks
            node["seed"] = int(node["seed"]) + number
        return instantiate(node)

    def next_trial(self, resume: bool) -> Optional[tuple[int, list, bool]]:
        """``(trial number, overrides, resumed)`` of the next trial this process runs, or None when the
        study holds ``n_trials`` trials. Under the lock: no two processes take the same trial."""
        TrialState = self.optuna.trial.TrialState
        with _locked(self.lock_path):
            trials = self.study.get_trials(deepcopy=False)
            if resume:
                for t in trials:
                    if t.state == TrialState.RUNNING and _job_is_orphaned(os.path.join(self.sweep_dir, str(t.number))):
                        os.utime(os.path.join(self.sweep_dir, str(t.number), ".run.lock"))
                        return t.number, list(t.user_attrs["overrides"]), True
            if len(trials) >= int(self.sweeper["n_trials"]):
                return None
            self.study.sampler = self._sampler(len(trials))
            trial = self.study.ask(fixed_distributions=self.space)
            self.asked[trial.number] = trial
            overrides = trial_overrides(trial.params, self.fixed)
            trial.set_user_attr("overrides", overrides)
            return trial.number, overrides, False

    def reporter(self, number: int, metric: Optional[str]):
        """The validation listener of trial ``number``: None without a pruner, or for a trial asked by
        another process (a resumed one is run to its end)."""
        trial = self.asked.get(number)
        if self.sweeper.get("pruner") is None or not metric or trial is None:
            return None
        warned = []

        def listener(epoch: int, metrics: dict) -> bool:
            value = metrics.get(metric)
            if value is None or not math.isfinite(float(value)):
                if not warned:
                    warned.append(True)
                    log.warning("pruning: %s is not among this epoch's validation metrics (%s); the trial is "
                                "not pruned", metric, ", ".join(sorted(k for k in metrics if k.startswith("val/"))))
                return False
            trial.report(float(value), step=epoch)
            return trial.should_prune()
        return listener

    def tell(self, number: int, entry: dict) -> None:
        TrialState = self.optuna.trial.TrialState
        value = entry.get("objective")
        if entry["status"] == "ok" and value is not None and math.isfinite(float(value)):
            self.study.tell(number, float(value))
        elif entry["status"] == "pruned":
            self.study.tell(number, state=TrialState.PRUNED)
        elif entry["status"] in ("ok", "failed"):
            if entry["status"] == "ok":
                entry["error"] = f"the objective is {value!r}: told FAIL"
            self.study.tell(number, state=TrialState.FAIL)
        # preempted / interrupted: left RUNNING, so resume=auto runs it again

    def results(self) -> dict:
        TrialState = self.optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        out = {"name": "optuna", "study_name": self.study_name, "storage": self.storage,
               "direction": self.sweeper["direction"], "n_trials": len(trials),
               "states": {k: v for k, v in counts.items() if v}}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            best = self.study.best_trial
            out.update(best_params=dict(best.params), best_value=best.value, best_trial=best.number,
                       best_overrides=list(best.user_attrs.get("overrides", [])))
        else:
            out.update(best_params=None, best_value=None)
        return out


def run_search(sweep, master: dict, task_overrides: list) -> int:
    """Run trials of the study until it holds ``n_trials``; write ``optimization_results.yaml``."""
    from util.sweeps import set_validation_listener

    sweeper = dict(master["hydra"]["sweeper"])
    _check(sweeper)
    metric = master.get("optimized_metric")
    if not metric:
        raise ConfigError("a search needs optimized_metric: the key of the metric to optimise among what the "
                          "main returns, e.g. optimized_metric=val/auroc_macro")
    study = None
    if distributed.is_main_process():
        space, fixed = search_space(sweeper.get("params"), task_overrides, sweep.config_dir)
        study = _Study(sweeper, sweep.sweep_dir, space, fixed)
        print(f"[search] study '{study.study_name}' in {study.storage}: {sweeper['n_trials']} trials, "
              f"{sweeper['direction']} {metric}", file=sys.stderr)
    failed = 0
    while True:
        step = distributed.broadcast_object(study.next_trial(sweep.resume) if study is not None else None)
        if step is None:
            break
        number, overrides, resumed = step
        if resumed and distributed.is_main_process():
            print(f"[search] trial #{number} was interrupted: running it again (resume=auto)", file=sys.stderr)
        if resumed and not any(o.startswith("resume=") for o in overrides):
            overrides = overrides + ["resume=auto"]
        set_validation_listener(study.reporter(number, metric) if study is not None else (lambda e, m: False))
        try:
            entry = sweep.run(number, overrides, extra={"trial": number})
        finally:
            set_validation_listener(None)
        failed += entry["status"] == "failed"
        if study is not None:
            study.tell(number, entry)
            if entry.get("error", "").startswith("the objective is"):
                sweep.record(entry)
    if study is not None:
        results = study.results()
        atomic_write_text(os.path.join(sweep.sweep_dir, "optimization_results.yaml"), to_yaml(results))
        log.info("best %s = %s with %s", metric, results["best_value"], results["best_params"])
        print(f"[search] best {metric} = {results['best_value']} with {results['best_params']} "
              f"({sweep.sweep_dir}/optimization_results.yaml)", file=sys.stderr)
    return 1 if failed else 0
