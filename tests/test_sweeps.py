"""Sweeps and searches (util/sweeps.py, util/search.py): resuming a sweep, the summary table, tags,
and the Optuna search (seeded, exact trial counts over processes sharing a study, failed and pruned
trials, resuming an interrupted trial)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from builders import finetune_overrides, tiny_store  # tests/ is on sys.path
from util import cli, sweeps
from util.errors import Preempted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["extras.print_config=false"]


def sweep(main, tmp_path, *args, name="s"):
    argv = ["-m", f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/{name}", *BASE, *args]
    return cli.run_cli(main, "finetune", argv=argv, prog="main_finetune.py")


def jobs_of(path):
    return json.load(open(os.path.join(path, "summary.json")))["jobs"]


class Recorder:
    """A main that records which jobs ran (and with which resume setting); ``stop_at`` preempts one."""

    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def __call__(self, cfg):
        epochs = cfg.trainer.max_epochs
        self.calls.append((epochs, cfg.resume))
        if epochs == self.stop_at:
            self.stop_at = None
            raise Preempted("SIGTERM: checkpoint written")
        return {"val/score": epochs * 10.0}


def test_a_resumed_sweep_skips_finished_jobs_and_reruns_the_interrupted_one(tmp_path):
    main = Recorder(stop_at=3)
    assert sweep(main, tmp_path, "trainer.max_epochs=1,2,3,4") == 75  # preempted in job #2
    assert [j["status"] for j in jobs_of(tmp_path / "s")] == ["ok", "ok", "preempted"]
    main.calls.clear()
    assert sweep(main, tmp_path, "trainer.max_epochs=1,2,3,4", "resume=auto") == 0
    assert main.calls == [(3, "auto"), (4, "auto")]  # jobs 0 and 1 are not run again
    jobs = jobs_of(tmp_path / "s")
    assert [j["status"] for j in jobs] == ["ok"] * 4
    assert [j["metrics"]["val/score"] for j in jobs] == [10, 20, 30, 40]
    # once more: nothing left to run
    main.calls.clear()
    assert sweep(main, tmp_path, "trainer.max_epochs=1,2,3,4", "resume=auto") == 0 and main.calls == []


def test_resume_needs_the_sweep_directory_and_the_same_command(tmp_path, capsys):
    main = Recorder()
    argv = ["-m", f"paths.log_dir={tmp_path}", *BASE, "trainer.max_epochs=1,2", "resume=auto"]
    assert cli.run_cli(main, "finetune", argv=argv, prog="main_finetune.py") == 2
    assert "hydra.sweep.dir=" in capsys.readouterr().err and main.calls == []
    assert sweep(main, tmp_path, "trainer.max_epochs=1,2") == 0
    main.calls.clear()
    assert sweep(main, tmp_path, "trainer.max_epochs=5,6", "resume=auto") == 2
    err = capsys.readouterr().err
    assert "already holds job #0 with other overrides" in err and main.calls == []


def test_the_summary_table_has_a_column_per_swept_key_and_metric(tmp_path):
    main = Recorder()
    assert sweep(main, tmp_path, "trainer.max_epochs=1,2", "seed=3,4") == 0
    rows = list(csv.DictReader(open(tmp_path / "s" / "summary.csv")))
    assert [(r["num"], r["status"], r["trainer.max_epochs"], r["seed"], r["val/score"]) for r in rows] == [
        ("0", "ok", "1", "3", "10.0"), ("1", "ok", "1", "4", "10.0"), ("2", "ok", "2", "3", "20.0"),
        ("3", "ok", "2", "4", "20.0")]
    assert all(float(r["seconds"]) >= 0 and r["output_dir"].endswith(r["num"]) for r in rows)


def test_an_untagged_sweep_is_refused_before_any_job(tmp_path, capsys):
    main = Recorder()
    assert sweep(main, tmp_path, "trainer.max_epochs=1,2", "tags=[]") == 2
    assert "tags=[" in capsys.readouterr().err and main.calls == []
    assert not (tmp_path / "s").exists()


# --- Optuna search ----------------------------------------------------------------------------------

SEARCH = ["hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "optimized_metric=val/score",
          "hydra.sweeper.sampler.n_startup_trials=3",
          "++hydra.sweeper.params={trainer.gradient_clip_val:'interval(0.0, 1.0)',"
          "trainer.max_epochs:'choice(1, 2, 3)',data.batch_size:7}"]


def peaked(cfg):
    """The score peaks at gradient_clip_val 0.3 and max_epochs 2."""
    x, e = cfg.trainer.gradient_clip_val, cfg.trainer.max_epochs
    assert cfg.data.batch_size == 7  # a fixed param reaches every trial
    return {"val/score": -(x - 0.3) ** 2 - 0.1 * abs(e - 2)}


def test_a_search_runs_n_trials_writes_the_best_and_repeats_with_its_seed(tmp_path):
    assert sweep(peaked, tmp_path, *SEARCH, "hydra.sweeper.n_trials=6", name="a") == 0
    assert sweep(peaked, tmp_path, *SEARCH, "hydra.sweeper.n_trials=6", name="b") == 0
    a, b = jobs_of(tmp_path / "a"), jobs_of(tmp_path / "b")
    assert [j["num"] for j in a] == list(range(6)) and all(j["status"] == "ok" for j in a)
    assert [j["overrides"] for j in a] == [j["overrides"] for j in b]  # seeded: the same trials
    assert len({j["overrides"][0] for j in a}) == 6
    best = yaml.safe_load(open(tmp_path / "a" / "optimization_results.yaml"))
    assert best["best_value"] == max(j["objective"] for j in a)
    assert best["states"] == {"complete": 6} and set(best["best_params"]) == {"trainer.gradient_clip_val",
                                                                              "trainer.max_epochs"}
    for j in a:
        cfg = yaml.safe_load(open(tmp_path / "a" / str(j["num"]) / ".hydra" / "config.yaml"))
        assert 0.0 <= cfg["trainer"]["gradient_clip_val"] <= 1.0 and cfg["trainer"]["max_epochs"] in (1, 2, 3)


def fails_when_short(cfg):
    if cfg.trainer.max_epochs == 1:
        raise RuntimeError("diverged")
    return peaked(cfg)


def test_a_failed_trial_is_recorded_and_the_study_goes_on(tmp_path):
    assert sweep(fails_when_short, tmp_path, *SEARCH, "hydra.sweeper.n_trials=8") == 1
    jobs = jobs_of(tmp_path / "s")
    assert len(jobs) == 8
    failed = [j for j in jobs if j["status"] == "failed"]
    assert failed and all("diverged" in j["error"] and "trainer.max_epochs=1" in j["overrides"] for j in failed)
    best = yaml.safe_load(open(tmp_path / "s" / "optimization_results.yaml"))
    assert best["states"]["fail"] == len(failed) and best["n_trials"] == 8


def reports_every_epoch(cfg):
    """A training-like main: reports a validation value per epoch as the engine does."""
    x = cfg.trainer.gradient_clip_val
    for epoch in range(4):
        sweeps.after_validation(epoch, {"val/score": -abs(x - 0.3) * (epoch + 1), "val/loss": 1.0})
    return {"val/score": -abs(x - 0.3) * 4}


def test_a_pruner_stops_bad_trials_from_their_validation_values(tmp_path):
    pruner = "++hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:2,n_warmup_steps:0}"
    assert sweep(reports_every_epoch, tmp_path, *SEARCH, "hydra.sweeper.n_trials=10", pruner) == 0
    jobs = jobs_of(tmp_path / "s")
    pruned = [j for j in jobs if j["status"] == "pruned"]
    assert pruned and len(jobs) == 10
    best = yaml.safe_load(open(tmp_path / "s" / "optimization_results.yaml"))
    assert best["states"]["pruned"] == len(pruned)
    assert sweeps._validation_listener is None  # nothing left behind for the next run in this process


def test_a_search_is_refused_without_its_metric_or_space(tmp_path, capsys):
    assert sweep(peaked, tmp_path, *SEARCH[:2], "hydra.sweeper.n_trials=2") == 2
    assert "optimized_metric" in capsys.readouterr().err
    assert sweep(peaked, tmp_path, *SEARCH[:3], "hydra.sweeper.n_trials=2", "++hydra.sweeper.params={}") == 2
    assert "nothing to search" in capsys.readouterr().err
    assert sweep(peaked, tmp_path, *SEARCH, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2") == 2
    assert "n_jobs" in capsys.readouterr().err
    assert sweep(peaked, tmp_path, *SEARCH, "hydra.sweeper.n_trials=2", "hydra.sweeper.storage=sqlite:////x.db") == 2
    assert "study_name" in capsys.readouterr().err


WORKER = """\
import os, sys, time
sys.path.insert(0, {repo!r})
from util.cli import run_cli

def main(cfg):
    time.sleep(0.3)
    return {{"val/score": -(cfg.trainer.gradient_clip_val - 0.3) ** 2}}

sys.exit(run_cli(main, primary="finetune", prog="main_finetune.py"))
"""


def test_two_processes_sharing_one_study_run_exactly_n_trials_together(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=REPO))
    args = ["-m", f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/shared", *BASE, *SEARCH,
            "hydra.sweeper.n_trials=7", f"hydra.sweeper.storage=sqlite:///{tmp_path}/study.db",
            "hydra.sweeper.study_name=shared"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=170)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    jobs = jobs_of(tmp_path / "shared")
    assert [j["num"] for j in jobs] == list(range(7)) and all(j["status"] == "ok" for j in jobs)
    import optuna

    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path}/study.db")
    assert len(study.trials) == 7 and all(t.state.name == "COMPLETE" for t in study.trials)


# --- the acceptance run: a real fine-tuning sweep killed in job 3, then resumed --------------------

@pytest.mark.slow
def test_a_killed_finetuning_sweep_resumes_to_the_metrics_of_an_uninterrupted_one(tmp_path):
    tiny_store(tmp_path, "multiclass")
    base = [sys.executable, os.path.join(REPO, "main_finetune.py"), "-m", "seed=0,1,2,3",
            "trainer.max_epochs=3", f"paths.log_dir={tmp_path}/logs", *finetune_overrides(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(name, *extra):
        return [*base, f"hydra.sweep.dir={tmp_path}/{name}", *extra]

    straight = subprocess.run(command("straight"), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    proc = subprocess.Popen(command("killed"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    third = tmp_path / "killed" / "2" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not third.exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: job 3 ends without a record
    proc.wait(timeout=60)
    assert third.exists()
    finished = {n: os.path.getmtime(tmp_path / "killed" / n / "metrics.json") for n in ("0", "1")}
    resumed = subprocess.run(command("killed", "resume=auto"), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "#0 ended ok before: skipped" in resumed.stderr and "#1 ended ok before: skipped" in resumed.stderr
    assert {n: os.path.getmtime(tmp_path / "killed" / n / "metrics.json") for n in ("0", "1")} == finished
    assert "resumed from" in (tmp_path / "killed" / "2" / "finetune.log").read_text()
    a, b = jobs_of(tmp_path / "straight"), jobs_of(tmp_path / "killed")
    assert [j["status"] for j in b] == ["ok"] * 4
    for x, y in zip(a, b):
        for key, value in x["metrics"].items():
            if isinstance(value, float):
                assert y["metrics"][key] == pytest.approx(value, abs=1e-6), (x["num"], key)


# --- the report -----------------------------------------------------------------------------------

def by_fraction(cfg):
    f, seed = cfg.data.train_fraction, cfg.seed
    return {"test": {"auroc_macro": 0.5 + 0.4 * f + 0.01 * seed, "loss": 1 - f}, "best_checkpoint": "x.pt"}


def test_the_report_groups_by_swept_keys_averages_seeds_and_plots(tmp_path, capsys):
    from util.report import bootstrap_mean_ci, main as report_main

    assert sweep(by_fraction, tmp_path, "data.train_fraction=0.1,1.0,0.01", "seed=0,1,2", "model=ecg_classifier,linear_probe") == 0
    assert report_main([str(tmp_path / "s")]) == 0
    text = (tmp_path / "s" / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and " [" in line]
    assert len(rows) == 6  # 3 fractions x 2 models, seeds averaged
    assert rows[0].startswith("| 0.01 | ecg_classifier | 0.514 ± 0.010 [")  # mean over seeds 0,1,2
    assert rows[-1].startswith("| 1.0 | linear_probe | 0.910 ± 0.010 [") and rows[-1].endswith(" | 3 |")
    assert "| ecg_classifier | 0.514 ± 0.010 | 0.550 ± 0.010 | 0.910 ± 0.010 |" in text  # the paper's table
    assert "Averaged over `seed`" in text and "![report_test_auroc_macro.png]" in text
    assert os.path.getsize(tmp_path / "s" / "report_test_auroc_macro.png") > 10_000
    low, high = bootstrap_mean_ci([0.5, 0.51, 0.52])
    assert 0.5 <= low < 0.51 < high <= 0.52
    assert report_main([str(tmp_path / "s"), "--metric", "test/nope"]) == 2
    assert "test/auroc_macro" in capsys.readouterr().err  # the metrics it does have
    assert report_main([str(tmp_path / "empty")]) == 2
    from util.report import SweepTable, is_bookkeeping

    assert is_bookkeeping("resume") and is_bookkeeping("++resume") and not is_bookkeeping("data.train_fraction")
    assert SweepTable(str(tmp_path / "s")).swept == ["data.train_fraction", "seed", "model"]


# --- the seed's documented commands, in their working form (README table) ---------------------------

SEED_COMMANDS = [
    ("finetune", ["-m", "hparams_search=cmr_classifier"]),
    ("finetune", ["experiment=fine_tuning/cmr_acdc", "eval_only=true", "ckpt_path=path/to/best_model.pt"]),
    ("pretrain", ["-m", "model.mask_ratio=0.65,0.75,0.85"]),
    ("finetune", ["-m", "eval_only=true", "ckpt_path=path/to/ckpt1.pt,path/to/ckpt2.pt"]),
    ("artifacts", ["-m", "ckpt_path=path/to/ckpt1.pt,path/to/ckpt2.pt"]),
    ("pretrain", ["experiment=pre_training/ecg_arrhythmia", "trainer.max_epochs=200", "data.batch_size=32"]),
    ("finetune", ["experiment=fine_tuning/ecg_arrhythmia", "eval_only=true", "ckpt_path=path/to/model.pt",
                  "data.batch_size=64"]),
    ("artifacts", ["experiment=embeddings/ecg_arrhythmia", "ckpt_path=x.pt", "trainer=gpu", "splits=[train,test]"]),
    ("pretrain", ["debug=default"]),
    ("finetune", ["debug=default"]),
    ("artifacts", ["debug=default"]),
    ("finetune", ["experiment=fine_tuning/ecg_label_efficiency"]),
    ("pretrain", ["-m", "hparams_search=mae"]),
]


@pytest.mark.parametrize("primary,args", SEED_COMMANDS, ids=[" ".join(a) for _, a in SEED_COMMANDS])
def test_the_seeds_documented_commands_compose_in_their_working_form(primary, args, capsys):
    assert cli.run_cli(Recorder(), primary, argv=["--cfg", "job", *args], prog=f"main_{primary}.py") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["task_name"] in (primary, "debug", "hparams_search")


def test_the_label_efficiency_sweep_has_27_jobs_of_three_protocols(tmp_path):
    seen = []

    def record(cfg):
        seen.append((cfg.model.linear_probe, cfg.model.pretrained_weights is None, cfg.data.train_fraction,
                     cfg.seed, cfg.data.subset_seed))
        return {}
    assert sweep(record, tmp_path, "experiment=fine_tuning/ecg_label_efficiency") == 0
    assert len(seen) == 27 and all(s[3] == s[4] for s in seen)  # each seed draws its own label subset
    protocols = {(probe, random) for probe, random, *_ in seen}
    assert protocols == {(False, False), (True, False), (True, True)}
    assert sorted({s[2] for s in seen}) == [0.01, 0.1, 1.0]


def test_the_engine_reports_every_validation_to_a_search(tmp_path):
    from builders import run_main

    import main_finetune

    tiny_store(tmp_path, "multiclass")
    heard = []
    sweeps.set_validation_listener(lambda epoch, metrics: heard.append((epoch, metrics["val/loss"])) or False)
    try:
        argv = [*finetune_overrides(tmp_path), f"paths.log_dir={tmp_path}/logs", f"hydra.run.dir={tmp_path}/run",
                "trainer.max_epochs=2"]
        assert run_main(main_finetune.main, "finetune", argv) == 0
    finally:
        sweeps.set_validation_listener(None)
    assert [epoch for epoch, _ in heard] == [0, 1] and all(loss > 0 for _, loss in heard)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["val/loss"] for r in rows if "val/loss" in r] == [loss for _, loss in heard]
