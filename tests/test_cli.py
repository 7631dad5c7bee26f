"""The shared command line of the three entry points: printing, run and sweep directories,
refusals, --job-index, --config, and one run directory under torchrun."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from util import cli
from util.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(script, *args, env=None, timeout=120):
    full_env = dict(os.environ)
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


NOOP_MAIN = """\
import json, os, sys, time
sys.path.insert(0, {repo!r})
from util.cli import run_cli

if os.environ.get("SLOW_RANK0_MKDIR") and os.environ.get("RANK") == "0":  # rank 0 creates the run dir late
    _makedirs = os.makedirs
    os.makedirs = lambda *a, **k: (time.sleep(1.0), _makedirs(*a, **k))[1]

def main(cfg):
    with open(os.path.join(cfg.paths.output_dir, "seen.json"), "a") as f:
        f.write(json.dumps({{"rank": os.environ.get("RANK", "0"), "epochs": cfg.trainer.max_epochs}}) + "\\n")
    return {{}}

sys.exit(run_cli(main, primary="finetune", prog="main_finetune.py"))
"""


def run_noop(tmp_path, *args, launcher=(), env=None, timeout=170):
    """The real command line (a subprocess, argv parsing, exit codes) around a main that trains nothing."""
    script = tmp_path / "noop_main.py"
    script.write_text(NOOP_MAIN.format(repo=REPO))
    full_env = dict(os.environ)
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    cmd = [*launcher, str(script)] if launcher else [sys.executable, str(script)]
    return subprocess.run([*cmd, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def only_dir(path):
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    assert len(entries) == 1, entries
    return os.path.join(path, entries[0])


@pytest.mark.parametrize("script", ["main_pretrain.py", "main_finetune.py", "main_artifacts.py"])
def test_cfg_job_prints_the_composed_job_config(script):
    res = run_main(script, "--cfg", "job", "trainer.max_epochs=7")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["trainer"]["max_epochs"] == 7
    assert cfg["task_name"] == script[5:-3]
    assert "hydra" not in cfg
    assert cfg["paths"]["output_dir"] == "${hydra:runtime.output_dir}"  # unresolved without --resolve


def test_cfg_resolve_and_hydra_part():
    res = run_main("main_finetune.py", "--cfg", "job", "--resolve", "paths.log_dir=/somewhere/logs")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["paths"]["root_dir"] == REPO
    assert cfg["callbacks"]["model_checkpoint"]["dirpath"].startswith("/somewhere/logs/finetune/runs/")
    res = run_main("main_finetune.py", "--cfg", "hydra")
    hydra = yaml.safe_load(res.stdout)["hydra"]
    assert hydra["run"]["dir"].startswith("${paths.log_dir}/${task_name}/runs/")


def test_info_defaults_lists_files_in_merge_order():
    res = run_main("main_finetune.py", "--info", "defaults", "debug=fdr")
    assert res.returncode == 0, res.stderr
    rows = [line.split("|")[1].strip() for line in res.stdout.splitlines() if line.startswith("| ")][1:]
    assert rows[0] == "finetune"
    assert rows.index("trainer/default") < rows.index("debug/default") < rows.index("debug/fdr")


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_epoch=3", "Could not override 'trainer.max_epoch'"),
    ("trainer=nope", "Could not find 'trainer/nope'"),
    ("trainer.max_epochs=1,2", "Ambiguous value for argument"),
    ("+debug=default", "Multiple values for debug"),
    ("debug=default debug.log_level=DEBUG", "Could not override 'debug.log_level'"),
])
def test_refusals_exit_2_with_one_message_and_no_traceback(override, expected):
    res = run_main("main_finetune.py", "--cfg", "job", *override.split())
    assert res.returncode == 2
    assert res.stdout == ""
    assert expected in res.stderr
    assert "Traceback" not in res.stderr


def test_full_error_env_shows_the_traceback():
    res = run_main("main_finetune.py", "--cfg", "job", "trainer.max_epoch=3", env={"HYDRA_FULL_ERROR": "1"})
    assert res.returncode != 0
    assert "Traceback" in res.stderr and "ConfigError" in res.stderr


def test_single_run_writes_its_run_directory(tmp_path):
    res = run_noop(tmp_path, f"paths.log_dir={tmp_path}/logs", f"paths.data_dir={tmp_path}/data",
                   "debug=default")
    assert res.returncode == 0, res.stderr
    run_dir = only_dir(tmp_path / "logs" / "debug" / "runs")
    job = yaml.safe_load(open(os.path.join(run_dir, ".hydra", "config.yaml")))
    assert job["task_name"] == "debug" and job["trainer"]["max_epochs"] == 1
    hydra = yaml.safe_load(open(os.path.join(run_dir, ".hydra", "hydra.yaml")))["hydra"]
    assert hydra["runtime"]["output_dir"] == run_dir
    assert hydra["runtime"]["choices"]["debug"] == "default"
    overrides = yaml.safe_load(open(os.path.join(run_dir, ".hydra", "overrides.yaml")))
    assert overrides == [f"paths.log_dir={tmp_path}/logs", f"paths.data_dir={tmp_path}/data", "debug=default"]
    assert os.path.getsize(os.path.join(run_dir, "debug.log")) > 0
    assert sorted(os.listdir(tmp_path)) == ["logs", "noop_main.py"]  # nothing written outside log_dir


def test_multirun_makes_one_directory_per_job_and_a_summary(tmp_path):
    res = run_noop(tmp_path, "-m", f"paths.log_dir={tmp_path}", "trainer.max_epochs=1,2")
    assert res.returncode == 0, res.stderr
    sweep_dir = only_dir(tmp_path / "finetune" / "multiruns")
    assert sorted(os.listdir(sweep_dir)) == [".results", "0", "1", "multirun.yaml", "summary.csv", "summary.json"]
    summary = json.load(open(os.path.join(sweep_dir, "summary.json")))
    assert [j["overrides"] for j in summary["jobs"]] == [
        [f"paths.log_dir={tmp_path}", "trainer.max_epochs=1"],
        [f"paths.log_dir={tmp_path}", "trainer.max_epochs=2"]]
    assert all(j["status"] == "ok" and j["metrics"] == {} for j in summary["jobs"])
    for num in ("0", "1"):
        job = yaml.safe_load(open(os.path.join(sweep_dir, num, ".hydra", "config.yaml")))
        assert job["trainer"]["max_epochs"] == int(num) + 1


def _objective(cfg):
    return {"val/score": cfg.trainer.max_epochs * 10, "lr": cfg.trainer.gradient_clip_val}


def test_sweep_summary_holds_each_jobs_returned_metrics_and_job_index_runs_one(tmp_path, monkeypatch):
    argv = ["-m", f"paths.log_dir={tmp_path}", "trainer.max_epochs=range(1,4)",
            "hydra.sweep.dir=" + str(tmp_path / "sweep")]
    assert cli.run_cli(_objective, "finetune", argv=argv, prog="main_finetune.py") == 0
    summary = json.load(open(tmp_path / "sweep" / "summary.json"))
    assert [j["metrics"]["val/score"] for j in summary["jobs"]] == [10, 20, 30]
    assert summary["aggregate"]["val/score"] == {"mean": 20.0, "std": 10.0, "n": 3}
    # a SLURM array task reruns only its own job and updates that job's entry
    shutil.rmtree(tmp_path / "sweep" / "1")
    argv_one = argv[:2] + ["trainer.max_epochs=range(1,4)", "trainer.gradient_clip_val=0.5",
                           "hydra.sweep.dir=" + str(tmp_path / "sweep"), "--job-index", "1"]
    assert cli.run_cli(_objective, "finetune", argv=argv_one, prog="main_finetune.py") == 0
    assert sorted(os.listdir(tmp_path / "sweep")) == [".results", "0", "1", "2", "multirun.yaml",
                                                      "summary.csv", "summary.json"]
    summary = json.load(open(tmp_path / "sweep" / "summary.json"))
    assert [j["metrics"]["lr"] for j in summary["jobs"]] == [None, 0.5, None]
    argv_bad = argv + ["--job-index", "3"]
    assert cli.run_cli(_objective, "finetune", argv=argv_bad, prog="main_finetune.py") == 2


def test_optimized_metric_selects_the_value_a_sweep_records_per_job(tmp_path, capsys):
    argv = ["-m", f"paths.log_dir={tmp_path}", "trainer.max_epochs=1,2", f"hydra.sweep.dir={tmp_path}/s",
            "optimized_metric=val/score"]
    assert cli.run_cli(_objective, "finetune", argv=argv, prog="main_finetune.py") == 0
    jobs = json.load(open(tmp_path / "s" / "summary.json"))["jobs"]
    assert [j["objective"] for j in jobs] == [10, 20]
    # a metric the main does not return fails the job with the names it does return
    argv = argv[:3] + [f"hydra.sweep.dir={tmp_path}/t", "optimized_metric=val/auroc"]
    assert cli.run_cli(_objective, "finetune", argv=argv, prog="main_finetune.py") == 1
    jobs = json.load(open(tmp_path / "t" / "summary.json"))["jobs"]
    assert all(j["status"] == "failed" and "optimized_metric 'val/auroc'" in j["error"] and "val/score" in j["error"]
               for j in jobs)


def _failing_objective(cfg):
    if cfg.trainer.max_epochs == 2:
        raise RuntimeError("diverged")
    return {"ok": 1}


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    argv = ["-m", f"paths.log_dir={tmp_path}", "trainer.max_epochs=1,2,3", f"hydra.sweep.dir={tmp_path}/s"]
    assert cli.run_cli(_failing_objective, "finetune", argv=argv, prog="main_finetune.py") == 1
    jobs = json.load(open(tmp_path / "s" / "summary.json"))["jobs"]
    assert [j["status"] for j in jobs] == ["ok", "failed", "ok"]
    assert "diverged" in jobs[1]["error"]


@pytest.fixture()
def config_copy(tmp_path):
    """A copy of configs/ with a sweep config, an experiment and hydra.mode: MULTIRUN."""
    configs = tmp_path / "configs"
    shutil.copytree(os.path.join(REPO, "configs"), configs)
    (configs / "experiment").mkdir(exist_ok=True)
    (configs / "experiment" / "short.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /trainer: cpu
        trainer:
          max_epochs: 3
        tags: [short]
        """))
    (configs / "hparams_search").mkdir(exist_ok=True)
    (configs / "hparams_search" / "epochs.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        hydra:
          mode: MULTIRUN
          sweeper:
            params:
              trainer.max_epochs: 4,5
              seed: 1,2
        """))
    return configs


def test_config_flag_takes_a_primary_or_an_experiment_file(config_copy, capsys):
    assert cli.run_cli(_objective, "finetune", ["--config", str(config_copy / "experiment" / "short.yaml"),
                                                 "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["max_epochs"] == 3 and cfg["trainer"]["accelerator"] == "cpu"
    assert cfg["tags"] == ["short"] and cfg["task_name"] == "finetune"
    assert cli.run_cli(_objective, "finetune", ["--config", str(config_copy / "pretrain.yaml"), "--cfg",
                                                 "job"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["task_name"] == "pretrain"
    with pytest.raises(ConfigError, match="trainer=cpu"):
        cli.locate_config(str(config_copy / "trainer" / "cpu.yaml"), "finetune")
    assert cli.run_cli(_objective, "finetune", ["--config", str(config_copy / "nope.yaml")]) == 2


def test_sweeper_params_and_mode_from_config_start_a_sweep(config_copy, tmp_path):
    argv = ["--config", str(config_copy / "finetune.yaml"), "hparams_search=epochs", "seed=7",
            f"hydra.sweep.dir={tmp_path}/hp", f"paths.log_dir={tmp_path}"]
    assert cli.run_cli(_objective, "finetune", argv=argv) == 0  # no -m: hydra.mode says MULTIRUN
    jobs = json.load(open(tmp_path / "hp" / "summary.json"))["jobs"]
    # config params first (first key slowest); the command-line seed replaces the swept one in place
    assert [j["overrides"] for j in jobs] == [
        ["trainer.max_epochs=4", "seed=7", "hparams_search=epochs", f"paths.log_dir={tmp_path}"],
        ["trainer.max_epochs=5", "seed=7", "hparams_search=epochs", f"paths.log_dir={tmp_path}"]]
    assert [j["metrics"]["val/score"] for j in jobs] == [40, 50]


def test_torchrun_ranks_share_one_run_directory(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    env = dict(os.environ, OMP_NUM_THREADS="1", SLOW_RANK0_MKDIR="1")  # rank 1 must wait for the directory
    res = run_noop(tmp_path, f"paths.log_dir={tmp_path}", launcher=(torchrun, "--standalone", "--nproc_per_node=2"),
                   env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = only_dir(tmp_path / "finetune" / "runs")
    assert os.path.isfile(os.path.join(run_dir, ".hydra", "config.yaml"))
    seen = [json.loads(line) for line in open(os.path.join(run_dir, "seen.json"))]
    assert sorted(r["rank"] for r in seen) == ["0", "1"]  # both ranks ran main in the same directory


def test_enforce_tags_refuses_an_untagged_run(tmp_path):
    res = run_noop(tmp_path, f"paths.log_dir={tmp_path}", "tags=[]")
    assert res.returncode == 2
    assert "tags are empty" in res.stderr and "Traceback" not in res.stderr
    res = run_noop(tmp_path, f"paths.log_dir={tmp_path}", "tags=[]", "extras.enforce_tags=false")
    assert res.returncode == 0, res.stderr


def test_flags_may_follow_overrides(tmp_path, capsys):
    argv = ["trainer.max_epochs=3", "--cfg", "job", "tags=[x]"]
    assert cli.run_cli(_objective, "finetune", argv=argv, prog="main_finetune.py") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["max_epochs"] == 3 and cfg["tags"] == ["x"]
