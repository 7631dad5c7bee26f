"""Fine-tuning end to end on tiny stores: multiclass, multilabel and regression runs; selection on
val with val AND test metrics; eval-only; starting from a pretraining run's encoder; folds."""
import json
import os

import numpy as np
import pytest
import torch

import main_finetune
from builders import FINETUNE_TINY as TINY, tiny_store  # tests/ is on sys.path
from models.factory import build_network
from util import cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for task in ("multiclass", "multilabel", "regression"):
        tiny_store(root, task)
    return root


def finetune(data_dir, run_dir, task_type, *overrides):
    num = 2 if task_type == "regression" else 3
    argv = [f"paths.data_dir={data_dir}", f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}",
            f"modality.dataset_key=tiny_{task_type}", f"modality.task_type={task_type}",
            f"modality.num_classes={num}", "modality.sampling_rate=100", "~modality.build_demo", *TINY, *overrides]
    return cli.run_cli(main_finetune.main, "finetune", argv=argv, prog="main_finetune.py")


@pytest.mark.parametrize("task_type, monitor, main_metric", [
    ("multiclass", "val/auroc_macro", "accuracy"),
    ("multilabel", "val/auroc_macro", "auroc_micro"),
    ("regression", "val/loss", "rmse"),
])
def test_each_task_type_trains_selects_on_val_and_reports_val_and_test(data_dir, tmp_path, task_type, monitor,
                                                                        main_metric):
    mode = "min" if monitor == "val/loss" else "max"
    run_dir = tmp_path / task_type
    assert finetune(data_dir, run_dir, task_type, "trainer.max_epochs=3",
                    f"callbacks.model_checkpoint.monitor={monitor}", f"callbacks.model_checkpoint.mode={mode}",
                    f"callbacks.early_stopping.monitor={monitor}", f"callbacks.early_stopping.mode={mode}") == 0
    result = json.load(open(run_dir / "metrics.json"))
    assert set(result) >= {"val", "test", "checkpoint", "best_epoch"}
    assert result["checkpoint"].endswith(f"epoch_{result['best_epoch']:03d}.pt")
    assert main_metric in result["val"] and main_metric in result["test"]
    assert result["val"] != result["test"]  # two different splits, never the selection split twice
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    history = [r for r in rows if monitor in r]
    best = max(history, key=lambda r: r[monitor]) if mode == "max" else min(history, key=lambda r: r[monitor])
    assert best["epoch"] == result["best_epoch"]
    assert result["val"]["loss"] == pytest.approx(best["val/loss"], rel=1e-5)
    if task_type == "multiclass":
        assert result["test"]["accuracy"] > 0.6  # frequency classes are easy
    if task_type == "regression":
        assert result["test"]["pearson_r"] > 0.3


def test_eval_only_reproduces_the_selected_checkpoints_metrics(data_dir, tmp_path):
    assert finetune(data_dir, tmp_path / "train", "multiclass", "trainer.max_epochs=2") == 0
    trained = json.load(open(tmp_path / "train" / "metrics.json"))
    assert finetune(data_dir, tmp_path / "eval", "multiclass", "eval_only=true",
                    f"ckpt_path={trained['checkpoint']}") == 0
    evaluated = json.load(open(tmp_path / "eval" / "metrics_dict.json"))
    assert evaluated["test"]["auroc_macro"] == pytest.approx(trained["test"]["auroc_macro"], abs=1e-6)
    assert not (tmp_path / "eval" / "checkpoints").exists()
    assert finetune(data_dir, tmp_path / "bad", "multiclass", "eval_only=true") == 2  # no ckpt_path


def test_training_starts_from_a_pretrained_mae_encoder(data_dir, tmp_path, capsys):
    mae = build_network("signal_vit", "mae", "pluto", input_size=(12, 200), patch_size=(1, 50))
    torch.save({"model": mae.encoder_state_dict()}, tmp_path / "encoder.pth")
    assert finetune(data_dir, tmp_path / "ft", "multiclass", "trainer.max_epochs=1",
                    f"model.pretrained_weights={tmp_path}/encoder.pth") == 0
    result = json.load(open(tmp_path / "ft" / "metrics.json"))
    assert result["pretrained_weights"] == f"{tmp_path}/encoder.pth"
    # a missing required file is refused
    assert finetune(data_dir, tmp_path / "x", "multiclass", f"model.pretrained_weights={tmp_path}/nope.pth",
                    "model.pretrained_optional=false") == 2
    assert "does not exist" in capsys.readouterr().err
    # a file given on the command line must exist even when pretrained_optional (a typo must not train from scratch)
    assert finetune(data_dir, tmp_path / "y", "multiclass", "trainer.max_epochs=1",
                    f"model.pretrained_weights={tmp_path}/nope.pth", "model.pretrained_optional=true") == 2
    assert "does not exist" in capsys.readouterr().err
    # only the config's own default may be missing (the demo's encoder before the demo pretraining ran)
    argv = [f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}/z/logs", f"hydra.run.dir={tmp_path}/z",
            "modality.dataset_key=tiny_multiclass", "modality.task_type=multiclass", "modality.num_classes=3",
            "modality.sampling_rate=100", "~modality.build_demo", "trainer.max_epochs=1",
            *[o for o in TINY if not o.startswith("model.pretrained_weights=")]]
    assert cli.run_cli(main_finetune.main, "finetune", argv=argv, prog="main_finetune.py") == 0
    assert "no pretrained encoder at" in capsys.readouterr().err
    assert json.load(open(tmp_path / "z" / "metrics.json"))["pretrained_weights"] is None


def test_label_fraction_trains_on_a_fixed_subset(data_dir, tmp_path):
    assert finetune(data_dir, tmp_path / "frac", "multiclass", "trainer.max_epochs=1",
                    "data.train_fraction=0.5", "data.drop_last=false", "bootstrap=50") == 0
    result = json.load(open(tmp_path / "frac" / "metrics.json"))
    low, high = result["test_ci95"]["accuracy"]  # bootstrap intervals of the test metrics
    assert low <= result["test"]["accuracy"] <= high and result["test_ci95"]["n_boot_used/accuracy"] == 50
    full = len(json.load(open(data_dir / "tiny_multiclass" / "splits.json"))["train"])
    assert result["train_records"] == round(full * 0.5)


def test_fold_sweep_aggregates_mean_and_std_over_folds(data_dir, tmp_path):
    argv = ["-m", "+fold=1,2", f"hydra.sweep.dir={tmp_path}/cv", f"paths.data_dir={data_dir}",
            f"paths.log_dir={tmp_path}/logs", "modality.dataset_key=tiny_multiclass",
            "modality.task_type=multiclass", "modality.num_classes=3", "modality.sampling_rate=100",
            "~modality.build_demo", "trainer.max_epochs=1", *TINY]
    assert cli.run_cli(main_finetune.main, "finetune", argv=argv, prog="main_finetune.py") == 0
    summary = json.load(open(tmp_path / "cv" / "summary.json"))
    assert [j["overrides"][0] for j in summary["jobs"]] == ["+fold=1", "+fold=2"]
    splits = json.load(open(data_dir / "tiny_multiclass" / "splits.json"))
    folds = [json.load(open(tmp_path / "cv" / str(i) / "metrics.json"))["train_records"] for i in (0, 1)]
    assert folds == [len(splits["fold_1_train"]), len(splits["fold_2_train"])]
    agg = summary["aggregate"]["test/accuracy"]
    values = [j["metrics"]["test/accuracy"] for j in summary["jobs"]]
    assert agg["n"] == 2 and agg["mean"] == pytest.approx(np.mean(values))
    assert agg["std"] == pytest.approx(np.std(values, ddof=1))


@pytest.mark.slow
def test_two_process_training_reports_the_selected_checkpoint_and_exact_gathered_metrics(tmp_path):
    """torchrun with 2 gloo ranks on 101 records (uneven shards): the final val/test metrics are those of
    the selected checkpoint on every rank, and equal a single-process evaluation of that checkpoint."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    tiny_store(tmp_path, "multiclass", n=101)
    common = [f"paths.data_dir={tmp_path}", "modality.dataset_key=tiny_multiclass", "modality.task_type=multiclass",
              "modality.num_classes=3", "modality.sampling_rate=100", "~modality.build_demo", *TINY,
              "data.batch_size=4"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", os.path.join(repo, "main_finetune.py"),
                          f"hydra.run.dir={tmp_path}/ddp", f"paths.log_dir={tmp_path}/logs", "trainer.max_epochs=2",
                          *common], cwd=repo, capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = json.load(open(tmp_path / "ddp" / "metrics.json"))
    rows = [json.loads(line) for line in open(tmp_path / "ddp" / "metrics.jsonl")]
    logged = next(r for r in rows if r.get("epoch") == ddp["best_epoch"] and "val/loss" in r)
    assert ddp["val"]["loss"] == pytest.approx(logged["val/loss"], rel=1e-6)
    assert finetune(tmp_path, tmp_path / "single", "multiclass", "eval_only=true", "data.batch_size=4",
                    f"ckpt_path={ddp['checkpoint']}") == 0
    single = json.load(open(tmp_path / "single" / "metrics_dict.json"))
    for split in ("val", "test"):
        for key in ("accuracy", "auroc_macro", "f1_macro"):
            assert single[split][key] == ddp[split][key]
        assert single[split]["loss"] == pytest.approx(ddp[split]["loss"], rel=1e-6)
