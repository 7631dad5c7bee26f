"""The logger and callbacks groups: wandb / mlflow (fake modules, nothing installed or sent), a
missing package refused before training, logger=many_loggers, and callbacks.lr_monitor."""
import json
import os
import sys
import types

import pytest
import torch

import main_pretrain
from builders import demo_data_fixture, pretrain_argv  # tests/ is on sys.path
from util import cli
from util.config import compose
from util.errors import ConfigError
from util.run_logger import RunLogger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 2 epochs of 3 training batches and 1 validation batch, every step logged
SHORT = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
         "trainer.log_every_n_steps=1"]
WANDB = {"project": "p", "name": "r1", "save_dir": None, "offline": True, "tags": ["dev"], "group": "g",
         "prefix": "exp/"}
MLFLOW = {"experiment_name": "e", "run_name": "r1", "tracking_uri": None, "tags": {"owner": "me"}, "prefix": "exp/"}


data_dir = demo_data_fixture()


def pretrain(data_dir, run_dir, *overrides):
    argv = pretrain_argv(data_dir, run_dir, *SHORT, *overrides)
    return cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py")


def rows(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def composed(*overrides):
    os.environ.setdefault("PROJECT_ROOT", REPO)
    return compose(os.path.join(REPO, "configs"), "pretrain", list(overrides))


@pytest.fixture(autouse=True)
def restore_anomaly_mode():
    yield
    torch.autograd.set_detect_anomaly(False)  # debug=default switches it on for the process


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = types.SimpleNamespace(init=None, logged=[], finished=0)

    class Run:
        def log(self, data, step=None):
            calls.logged.append((dict(data), step))

        def finish(self):
            calls.finished += 1

    def init(**kwargs):
        calls.init = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return calls


@pytest.fixture
def fake_mlflow(monkeypatch):
    calls = []
    module = types.SimpleNamespace(**{name: (lambda name: lambda *a, **k: calls.append((name, a, k)))(name) for name in
                                      ("set_tracking_uri", "set_experiment", "start_run", "log_params", "log_metrics",
                                       "end_run")})
    monkeypatch.setitem(sys.modules, "mlflow", module)
    return calls


def test_wandb_gets_every_scalar_with_its_step_and_prefix_offline_and_the_run_finishes(fake_wandb, tmp_path):
    logger = RunLogger({"wandb": {**WANDB, "save_dir": str(tmp_path / "w")}}, str(tmp_path),
                       run_config={"model": {"size": "pluto"}})
    assert fake_wandb.init == {"project": "p", "name": "r1", "dir": str(tmp_path / "w"), "mode": "offline",
                               "tags": ["dev"], "group": "g", "config": {"model": {"size": "pluto"}}}
    logger.log({"train/loss": 0.5, "train/note": "not a number"}, step=3, epoch=1)
    logger.log({"val/loss": 0.25}, step=7)
    assert fake_wandb.logged == [({"epoch": 1.0, "exp/train/loss": 0.5}, 3), ({"exp/val/loss": 0.25}, 7)]
    assert fake_wandb.finished == 0
    logger.close()
    logger.close()
    assert fake_wandb.finished == 1
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [3, 7]


def test_wandb_online_only_when_asked(fake_wandb, tmp_path):
    RunLogger({"wandb": {**WANDB, "save_dir": str(tmp_path), "offline": False}}, str(tmp_path)).close()
    assert fake_wandb.init["mode"] == "online"


def test_mlflow_gets_the_flat_config_as_params_and_every_scalar_with_its_step_and_prefix(fake_mlflow, tmp_path):
    config = {"model": {"size": "pluto", "patch_size": [1, 50]}, "many": {f"k{i}": i for i in range(150)}}
    logger = RunLogger({"mlflow": {**MLFLOW, "tracking_uri": f"file:{tmp_path}/mlruns"}}, str(tmp_path),
                       run_config=config)
    logger.log({"train/loss": 0.5}, step=3, epoch=1)
    logger.close()
    logger.close()
    names = [c[0] for c in fake_mlflow]
    assert names == ["set_tracking_uri", "set_experiment", "start_run", "log_params", "log_params", "log_metrics",
                     "end_run"]
    assert fake_mlflow[0][1] == (f"file:{tmp_path}/mlruns",) and fake_mlflow[1][1] == ("e",)
    assert fake_mlflow[2][2] == {"run_name": "r1", "tags": {"owner": "me"}}
    params = {**fake_mlflow[3][1][0], **fake_mlflow[4][1][0]}
    assert max(len(fake_mlflow[3][1][0]), len(fake_mlflow[4][1][0])) <= 100  # MLflow's batch limit
    assert len(params) == 152 and params["model.size"] == "pluto" and params["model.patch_size"] == "[1, 50]"
    assert params["many.k149"] == "149"
    assert fake_mlflow[5][1] == ({"epoch": 1.0, "exp/train/loss": 0.5},) and fake_mlflow[5][2] == {"step": 3}


def test_loggers_are_rank_zero_only(fake_wandb, fake_mlflow, tmp_path):
    logger = RunLogger({"wandb": {**WANDB, "save_dir": str(tmp_path)}, "mlflow": {**MLFLOW, "tracking_uri": "x"}},
                       str(tmp_path), enabled=False)
    logger.log({"train/loss": 0.5}, step=1)
    logger.close()
    assert fake_wandb.init is None and fake_mlflow == []


@pytest.mark.parametrize("name, cfg", [("wandb", WANDB), ("mlflow", MLFLOW)])
def test_a_missing_package_is_one_message_saying_how_to_install_it_or_what_to_choose(name, cfg, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` fails as if it were not installed
    with pytest.raises(ConfigError) as err:
        RunLogger({name: {**cfg, "save_dir": str(tmp_path), "tracking_uri": "x"}}, str(tmp_path))
    message = str(err.value)
    assert f"logger={name} needs the {name} package" in message and f"pip install {name}" in message
    assert "logger=tensorboard, logger=csv or logger=many_loggers" in message


def test_a_missing_package_stops_the_command_with_exit_2_before_training(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert pretrain(data_dir, tmp_path / "run", "logger=mlflow") == 2
    err = capsys.readouterr().err
    assert "pip install mlflow" in err and "Traceback" not in err
    assert "trainable parameters" not in err  # refused with the config check: no model was built


def test_logger_wandb_in_a_run_logs_the_training_offline_into_the_run_dir(data_dir, tmp_path, fake_wandb):
    run_dir = tmp_path / "run"
    assert pretrain(data_dir, run_dir, "logger=wandb", "trainer.max_epochs=1") == 0
    assert fake_wandb.init["mode"] == "offline" and fake_wandb.init["dir"] == str(run_dir)
    config = fake_wandb.init["config"]  # the composed config, its tags the run's (the experiment's)
    assert config["task_name"] == "pretrain" and fake_wandb.init["tags"] == config["tags"] == ["demo", "mae", "ecg"]
    steps = [step for data, step in fake_wandb.logged if "train/grad_norm" in data]
    assert steps == [1, 2, 3] and fake_wandb.finished == 1
    assert any("val/loss" in data for data, _ in fake_wandb.logged)


def test_many_loggers_composes_to_csv_and_tensorboard_and_a_run_writes_both(data_dir, tmp_path):
    assert list(composed("logger=many_loggers").logger) == ["csv", "tensorboard"]
    # the documented way to add an optional logger to them
    assert list(composed("logger=[many_loggers,wandb]").logger) == ["csv", "tensorboard", "wandb"]
    run_dir = tmp_path / "run"
    assert pretrain(data_dir, run_dir, "logger=many_loggers", "trainer.max_epochs=1") == 0
    header, *lines = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert {"step", "epoch", "train/loss", "val/loss"} <= set(header.split(",")) and len(lines) == 4
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir / "tensorboard"))


def test_lr_monitor_logs_the_lr_every_step_by_default_or_once_per_epoch_at_its_last_value(data_dir, tmp_path):
    assert composed().callbacks.lr_monitor == {"logging_interval": "step"}  # callbacks/default.yaml
    assert pretrain(data_dir, tmp_path / "step") == 0
    assert pretrain(data_dir, tmp_path / "epoch", "callbacks.lr_monitor.logging_interval=epoch") == 0
    by_step = rows(tmp_path / "step")
    step_rows = [r for r in by_step if "train/grad_norm" in r]
    assert len(step_rows) == 6 and all("train/lr" in r for r in step_rows)
    assert not any("train/lr" in r for r in by_step if "val/loss" in r)
    by_epoch = rows(tmp_path / "epoch")
    assert not any("train/lr" in r for r in by_epoch if "train/grad_norm" in r)
    epoch_lr = [r["train/lr"] for r in by_epoch if "val/loss" in r]
    assert epoch_lr == [step_rows[2]["train/lr"], step_rows[5]["train/lr"]] and epoch_lr[0] != epoch_lr[1]


# callbacks=none: the demo experiment sets callbacks.early_stopping.patience, so that key goes too;
# debug=default: `callbacks: null`
@pytest.mark.parametrize("overrides", [["~callbacks.lr_monitor"], ["callbacks=none", "~callbacks.early_stopping"],
                                       ["debug=default"]])
def test_without_lr_monitor_no_lr_is_logged(data_dir, tmp_path, overrides):
    assert pretrain(data_dir, tmp_path, *overrides, "trainer.max_epochs=1") == 0
    logged = rows(tmp_path)
    assert not any("train/lr" in r for r in logged)
    assert sum("train/grad_norm" in r for r in logged) == 3 and any("val/loss" in r for r in logged)


def test_the_lr_monitor_interval_is_checked(data_dir, tmp_path, capsys):
    assert pretrain(data_dir, tmp_path, "callbacks.lr_monitor.logging_interval=batch") == 2
    err = capsys.readouterr().err
    assert "callbacks.lr_monitor.logging_interval" in err and "one of step, epoch" in err
