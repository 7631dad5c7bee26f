"""Bad input and faults, as a new user meets them: bad config values, bad data, bad checkpoints and
weights, signals and a full disk. Each case checks the exit code, that stderr holds one message that
names the fault and no traceback, and that nothing that existed before was damaged (the stores still
validate, the checkpoints still load with the same bytes)."""
import datetime as dt
import fcntl
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import engine
import main_finetune
import main_pretrain
from builders import PRETRAIN_TINY, finetune_overrides, tiny_store  # tests/ is on sys.path
from datasets.demo import build_demo
from datasets.store import STANDARD_LEADS, Store, make_splits, write_store
from models.classifier import ECGClassifier
from util import cli
from util.checkpoint import load_checkpoint
from util.errors import ConfigError
from util.files import temp_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- what exists before every case, and must be intact after it ------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    data = root / "data"
    build_demo(str(data), n_records=96, seed=0, include_real=False)
    tiny_store(data, "multiclass")
    tiny_store(data, "regression")
    bad = nan_store(data / "tiny_nan", bad_train=[3], bad_val=[1])
    runs = root / "runs"
    argv = [f"paths.data_dir={data}", f"paths.log_dir={runs}", f"hydra.run.dir={runs}/pre", *PRETRAIN_TINY,
            "trainer.max_epochs=1"]
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 0
    argv = [*finetune_overrides(data), f"paths.log_dir={runs}", f"hydra.run.dir={runs}/ft", "trainer.max_epochs=1"]
    assert cli.run_cli(main_finetune.main, "finetune", argv=argv, prog="main_finetune.py") == 0
    files = {"pretrain_ckpt": runs / "pre" / "checkpoints" / "last.pt",
             "finetune_ckpt": runs / "ft" / "checkpoints" / "last.pt", "encoder": runs / "pre" / "encoder.pth"}
    stores = [data / "demo_ecg", data / "tiny_multiclass", data / "tiny_regression", bad]
    sums = {k: hashlib.sha256(v.read_bytes()).hexdigest() for k, v in files.items()}
    return {"data": data, "runs": runs, "stores": stores, "sums": sums, **files}


@pytest.fixture(autouse=True)
def nothing_is_damaged(assets):
    yield
    for store in assets["stores"]:
        Store(store)  # still validates
    for key, digest in assets["sums"].items():
        assert hashlib.sha256(assets[key].read_bytes()).hexdigest() == digest, f"{key} changed"
    for key in ("pretrain_ckpt", "finetune_ckpt"):
        load_checkpoint(str(assets[key]))


def nan_store(root, bad_train=(), bad_val=(), bad_label=(), n=64):
    """A multiclass store whose listed train / val positions hold a NaN sample (or a NaN label)."""
    rng = np.random.default_rng(1)
    signals = rng.standard_normal((n, 12, 400)).astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    splits = make_splits(n, labels, val=0.25, test=0.25, folds=0, seed=0)
    for split, positions in (("train", bad_train), ("val", bad_val)):
        for p in positions:
            signals[splits[split][p], 3, 10] = np.nan
    return write_store(root, signals=signals, labels=labels, record_ids=[f"rec{i:03d}" for i in range(n)],
                       splits=splits, info={"modality": "ecg", "task_type": "multiclass", "label_names": ["a", "b", "c"],
                                            "sampling_rate": 100, "lead_names": list(STANDARD_LEADS), "units": "mV",
                                            "provenance": "test", "synthetic": True})


def one_message(err, *needles):
    """stderr holds one error message, no traceback, and every needle."""
    assert "Traceback" not in err, err[-3000:]
    assert err.count("Error:") + err.count("Preempted:") + err.count("Interrupted:") == 1, err[-3000:]
    missing = [n for n in needles if n not in err]
    assert not missing, f"{missing} not in:\n{err[-3000:]}"


def pretrain(assets, tmp_path, *overrides, data=None):
    argv = [f"paths.data_dir={data or assets['data']}", f"paths.log_dir={tmp_path}/logs",
            f"hydra.run.dir={tmp_path}/run", *PRETRAIN_TINY, "trainer.max_epochs=1", *overrides]
    return cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py")


def finetune(assets, tmp_path, *overrides, task="multiclass", data=None):
    argv = [*finetune_overrides(data or assets["data"], task), f"paths.log_dir={tmp_path}/logs",
            f"hydra.run.dir={tmp_path}/run", "trainer.max_epochs=1", *overrides]
    return cli.run_cli(main_finetune.main, "finetune", argv=argv, prog="main_finetune.py")


# ---- config values: checked before any work, all at once, with where they were set ----------------------
@pytest.mark.parametrize("override, needles", [
    ("trainer.max_epochs=abc", ["trainer.max_epochs = 'abc'", "whole number >= 1", "the override trainer.max_epochs=abc"]),
    ("data.batch_size=-4", ["data.batch_size = -4", "whole number >= 1"]),
    ("trainer.precision=bf17", ["trainer.precision", "did you mean bf16?"]),
    ("model.mask_ratio=1.5", ["model.mask_ratio = 1.5", "[0, 1)"]),
    ("+model.mask_rato=0.5", ["model.mask_rato", "did you mean mask_ratio"]),
    ("model.optim.betas=[0.9]", ["model.optim.betas", "list of 2 items"]),
    ("callbacks.early_stopping.mode=maximum", ["callbacks.early_stopping.mode", "one of min, max"]),
    ("data.augment_device=gpu", ["data.augment_device", "one of auto, cpu, device"]),
    ("data.normalize=minmax", ["data.normalize = 'minmax'", "one of none, lead, group"]),
    ("trainer.limit_train_batches=-1", ["trainer.limit_train_batches"]),
    ("trainer.accumulate_grad_batches=0", ["trainer.accumulate_grad_batches"]),
    ("resume=always", ["resume = 'always'", "auto"]),
    ("data.train_fraction=1.5", ["data.train_fraction = 1.5", "(0, 1]"]),
    ("model.size=huge", ["model.size = 'huge'", "pluto, tiny"]),
    ("data.kind=nope", ["data.kind = 'nope'", "one of ecg"]),
    ("~model.optim.lr_batch_divisor", ["model.optim.lr_batch_divisor: is missing"]),
    ("trainer.profiler=fancy", ["trainer.profiler", "simple, pytorch"]),
])
def test_a_bad_config_value_is_one_message_naming_the_key_value_and_source(assets, tmp_path, capsys, override, needles):
    assert pretrain(assets, tmp_path, override) == 2
    one_message(capsys.readouterr().err, *needles)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_all_bad_values_are_reported_at_once(assets, tmp_path, capsys):
    assert finetune(assets, tmp_path, "trainer.max_epochs=0", "data.batch_size=x", "bootstrap=-1",
                    "model.global_pool=max") == 2
    # model.optim.epochs follows trainer.max_epochs, and says so
    one_message(capsys.readouterr().err, "5 config values are invalid", "trainer.max_epochs", "data.batch_size",
                "bootstrap", "model.global_pool", "as ${trainer.max_epochs}, which the override trainer.max_epochs=0 sets")


def test_values_that_do_not_go_together_are_one_message_before_any_work(assets, tmp_path, capsys):
    assert finetune(assets, tmp_path, "model.global_pool=cls", "model.head_norm=batch") == 2
    one_message(capsys.readouterr().err, "head_norm='batch'", "global_pool 'avg' and 'attention_pool'")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_batchnorm_model_is_refused_batches_of_one_record_before_training(assets, tmp_path, capsys):
    assert finetune(assets, tmp_path, "model.global_pool=avg", "model.head_norm=batch", "data.batch_size=1") == 2
    one_message(capsys.readouterr().err, "data.batch_size=1", "BatchNorm (net.fc_norm)", "raise data.batch_size")
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the last batch of an epoch, when drop_last is off
    for head_norm, drop_last, refused in (("batch", False, True), ("batch", True, False), ("layer", False, False)):
        model = ECGClassifier(input_size=(4, 50), patch_size=(1, 10), embed_dim=32, depth=1, num_heads=4,
                              num_classes=3, global_pool="avg", head_norm=head_norm)
        loader = DataLoader(list(range(17)), batch_size=8, drop_last=drop_last)
        if refused:
            with pytest.raises(ConfigError, match=r"last training batch has one record \(17 records"):
                engine.check_batch_norm_batches(model, loader)
        else:
            engine.check_batch_norm_batches(model, loader)


def test_a_bad_value_in_a_config_file_names_the_file(assets, tmp_path, capsys):
    configs = tmp_path / "configs"
    shutil.copytree(os.path.join(REPO, "configs"), configs)
    path = configs / "trainer" / "default.yaml"
    path.write_text(path.read_text().replace("max_nonfinite_steps: 5", "max_nonfinite_steps: lots"))
    argv = ["--config", str(configs / "pretrain.yaml"), f"paths.data_dir={assets['data']}",
            f"paths.log_dir={tmp_path}/logs", *PRETRAIN_TINY]
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 2
    one_message(capsys.readouterr().err, "trainer.max_nonfinite_steps = 'lots'", "trainer/default.yaml")


@pytest.mark.parametrize("override, needles", [
    ("trainer.max_epoch=3", ["Could not override 'trainer.max_epoch'", "Did you mean trainer.max_epochs"]),
    ("experiment=pre_training/nope", ["Could not find 'experiment/pre_training/nope'", "pre_training/ecg_demo",
                                      "fine_tuning/ecg_ptbxl"]),
    ("experiment=fine_tuning/ecg_ptbx", ["Did you mean experiment=fine_tuning/ecg_ptbxl"]),
    ("paths.log_dir=${oc.env:SURELY_NOT_SET_VAR}", ["SURELY_NOT_SET_VAR"]),
])
def test_unknown_keys_options_and_variables_are_named_with_suggestions(assets, tmp_path, capsys, override, needles):
    argv = [f"paths.data_dir={assets['data']}", override]
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 2
    one_message(capsys.readouterr().err, *needles)


# ---- data -------------------------------------------------------------------------------------------------
def test_a_missing_store_says_how_to_build_it(assets, tmp_path, capsys):
    assert finetune(assets, tmp_path, "modality.dataset_key=nowhere") == 2
    one_message(capsys.readouterr().err, "nowhere does not exist", "write_store")


def test_empty_splits_are_refused_when_the_loaders_are_built_not_after_training(assets, tmp_path, capsys):
    data = tmp_path / "data"
    signals = np.random.default_rng(0).standard_normal((40, 12, 400)).astype(np.float32)
    labels = np.arange(40) % 3
    splits = {"train": list(range(30)), "val": list(range(30, 40)), "test": []}
    write_store(data / "tiny_multiclass", signals=signals, labels=labels, record_ids=[f"r{i}" for i in range(40)],
                splits=splits, info={"modality": "ecg", "task_type": "multiclass", "label_names": ["a", "b", "c"],
                                     "sampling_rate": 100, "lead_names": list(STANDARD_LEADS), "provenance": "t",
                                     "synthetic": True})
    assert finetune(assets, tmp_path, data=data) == 2
    one_message(capsys.readouterr().err, "the 'test' split", "is empty")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


@pytest.mark.parametrize("split", ["train", "val"])
def test_records_with_nan_are_named_with_store_split_and_ids(assets, tmp_path, capsys, split):
    data = tmp_path / "data"
    nan_store(data / "tiny_multiclass", **{f"bad_{split}": [2]})
    assert finetune(assets, tmp_path, data=data) == 2
    one_message(capsys.readouterr().err, f"1 record(s) of the '{split}' split", "tiny_multiclass", "NaN or inf",
                "rec0", "data.nonfinite=skip")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_nonfinite_skip_leaves_the_named_records_out_and_trains(assets, tmp_path, capsys):
    assert finetune(assets, tmp_path, "modality.dataset_key=tiny_nan", "data.nonfinite=skip") == 0
    err = capsys.readouterr().err
    assert "leaving out 1 record(s) of the 'train' split" in err and "leaving out 1 record(s) of the 'val' split" in err
    result = json.load(open(tmp_path / "run" / "metrics.json"))
    assert np.isfinite(result["val"]["loss"]) and result["train_records"] == 31


def test_nan_labels_are_named_too(assets, tmp_path, capsys):
    data = tmp_path / "data"
    tiny_store(data, "regression")
    labels = np.load(data / "tiny_regression" / "labels.npy")
    labels[5, 1] = np.nan
    info = json.load(open(data / "tiny_regression" / "info.json"))
    write_store(data / "tiny_regression", signals=np.load(data / "tiny_regression" / "signals.npy"), labels=labels,
                record_ids=(data / "tiny_regression" / "record_ids.txt").read_text().split(),
                splits=json.load(open(data / "tiny_regression" / "splits.json")), info=info, overwrite=True)
    assert finetune(assets, tmp_path, task="regression", data=data) == 2
    one_message(capsys.readouterr().err, "NaN or inf", "r5")


def test_a_store_recorded_at_another_rate_is_refused(assets, tmp_path, capsys):
    assert finetune(assets, tmp_path, "modality.sampling_rate=500") == 2
    one_message(capsys.readouterr().err, "sampled at 100 Hz", "500")


@pytest.mark.parametrize("damage, needle", [
    ("info", "is not valid JSON"),
    ("truncate", "is truncated"),
    ("ids", "record_ids.txt has"),
])
def test_a_damaged_store_is_refused_with_what_is_wrong(assets, tmp_path, capsys, damage, needle):
    data = tmp_path / "data"
    shutil.copytree(assets["data"] / "tiny_multiclass", data / "tiny_multiclass")
    store = data / "tiny_multiclass"
    if damage == "info":
        (store / "info.json").write_text("{not json")
    elif damage == "truncate":
        with open(store / "signals.npy", "r+b") as f:
            f.truncate(os.path.getsize(store / "signals.npy") // 2)
    else:
        (store / "record_ids.txt").write_text("r0\nr1\n")
    assert finetune(assets, tmp_path, data=data) == 2
    one_message(capsys.readouterr().err, needle)


def test_a_crop_longer_than_the_records_is_refused(assets, tmp_path, capsys):
    assert finetune(assets, tmp_path, "data.time_steps=4000") == 2
    one_message(capsys.readouterr().err, "time_steps=4000 does not fit", "T=400")


def test_a_data_dir_that_cannot_be_created_names_the_path(assets, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    argv = [f"paths.data_dir={tmp_path}/a_file/data", f"paths.log_dir={tmp_path}/logs", f"hydra.run.dir={tmp_path}/run",
            *PRETRAIN_TINY]
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 2
    one_message(capsys.readouterr().err, "a_file", "is a file, not a folder")


# ---- checkpoints and weights ------------------------------------------------------------------------------
def bad_file(tmp_path, kind, assets):
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("not a checkpoint at all\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = assets["pretrain_ckpt"].read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "numpy":
        np.save(str(path)[:-3] + ".npy", np.zeros(3))
        os.replace(str(path)[:-3] + ".npy", path)
    elif kind == "pickled":
        import argparse

        torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, path)
    return path


@pytest.mark.parametrize("kind, needle", [
    ("text", "it is a text file"), ("empty", "the file is empty"), ("truncated", "truncated or corrupted"),
    ("numpy", "NumPy"), ("pickled", "pickled Python objects"),
])
def test_an_unreadable_checkpoint_says_what_the_file_is(assets, tmp_path, capsys, kind, needle):
    path = bad_file(tmp_path, kind, assets)
    assert pretrain(assets, tmp_path, f"ckpt_path={path}") == 2
    err = capsys.readouterr().err
    one_message(err, "cannot read checkpoint", needle)
    assert "weights_only=False will likely succeed" not in err and "file an issue" not in err


def test_eval_only_with_a_pretraining_checkpoint_says_what_it_is(assets, tmp_path, capsys):
    assert finetune(assets, tmp_path, "eval_only=true", f"ckpt_path={assets['pretrain_ckpt']}") == 2
    one_message(capsys.readouterr().err, "it is a MAEPretraining checkpoint", "model.pretrained_weights=")


def test_eval_only_with_a_checkpoint_of_other_data_says_so(assets, tmp_path, capsys):
    assert finetune(assets, tmp_path, "eval_only=true", f"ckpt_path={assets['finetune_ckpt']}",
                    "data.time_steps=100") == 2
    one_message(capsys.readouterr().err, "trained for input shapes", "[1, 12, 200]", "[1, 12, 100]")


def test_resuming_a_checkpoint_of_another_objective_is_refused(assets, tmp_path, capsys):
    assert pretrain(assets, tmp_path, f"ckpt_path={assets['finetune_ckpt']}") == 2
    one_message(capsys.readouterr().err, "cannot resume", "Classification checkpoint")


@pytest.mark.parametrize("weights, needle", [
    ("missing", "does not exist"), ("text", "not a PyTorch checkpoint"), ("other_size", "different shapes"),
])
def test_bad_pretrained_weights_are_one_message(assets, tmp_path, capsys, weights, needle):
    if weights == "missing":
        path = tmp_path / "typo_encoder.pth"
    elif weights == "text":
        path = bad_file(tmp_path, "text", assets)
    else:
        path = assets["encoder"]  # a pluto encoder with 1 x 50 patches into a tiny model
    extra = ["model.size=tiny"] if weights == "other_size" else []
    assert finetune(assets, tmp_path, f"model.pretrained_weights={path}", "model.pretrained_optional=true",
                    *extra) == 2
    one_message(capsys.readouterr().err, needle)


def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(assets, tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain(assets, tmp_path, "trainer.max_epochs=2") == 0
    (run / "checkpoints" / "last.pt").write_bytes(b"\0" * 100)  # a corrupt last.pt
    assert pretrain(assets, tmp_path, "trainer.max_epochs=3", "resume=auto") == 0
    err = capsys.readouterr().err
    assert "last.pt is unreadable; continuing from" in err and "epoch_" in err
    assert load_checkpoint(str(run / "checkpoints" / "last.pt"))["epoch"] == 2


def test_resume_auto_uses_an_epoch_checkpoint_when_last_was_never_written(assets, tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain(assets, tmp_path, "trainer.max_epochs=1", "callbacks.model_checkpoint.save_last=false") == 0
    assert not (run / "checkpoints" / "last.pt").exists()
    assert pretrain(assets, tmp_path, "trainer.max_epochs=2", "resume=auto") == 0
    assert "last.pt is missing; continuing from" in capsys.readouterr().err


def test_stale_temp_files_of_killed_writes_are_removed(assets, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = temp_path(folder / "last.pt").rsplit(".", 1)[0] + f".{dead.pid}"
    open(stale, "wb").write(b"x" * 1000)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a writer still running
    live = temp_path(folder / "epoch_007.pt").rsplit(".", 1)[0] + f".{writer.pid}"
    open(live, "wb").write(b"y")
    try:
        assert pretrain(assets, tmp_path) == 0
    finally:
        writer.kill()
    assert not os.path.exists(stale) and os.path.exists(live)


# ---- run directories ------------------------------------------------------------------------------------
def test_two_runs_started_in_the_same_second_never_share_a_directory(assets, tmp_path, monkeypatch):
    fixed = dt.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(cli, "_agreed_now", lambda: fixed)
    argv = [f"paths.data_dir={assets['data']}", f"paths.log_dir={tmp_path}/logs", *PRETRAIN_TINY, "debug=fdr"]
    for _ in range(2):
        assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 0
    runs = sorted(os.listdir(tmp_path / "logs" / "debug" / "runs"))
    assert runs == ["2026-01-02_03-04-05", "2026-01-02_03-04-05_1"]
    for run in runs:  # each run's metrics are its own
        rows = [json.loads(line) for line in open(tmp_path / "logs" / "debug" / "runs" / run / "metrics.jsonl")]
        assert [r["epoch"] for r in rows if "val/loss" in r] == [0]


def test_a_run_directory_in_use_is_refused(assets, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".run.lock", "a+") as held:  # another process resuming the same run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345 on somewhere since earlier\n")
        held.flush()
        assert pretrain(assets, tmp_path, "resume=auto") == 2
    one_message(capsys.readouterr().err, "is in use by pid 12345", "two runs cannot share a run directory")


# ---- signals and the disk (real processes) --------------------------------------------------------------
SLOW = ["data.batch_size=2", "data.num_workers=2", "data.persistent_workers=true", "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1000"]


def command(assets, run_dir, *extra):
    return [sys.executable, os.path.join(REPO, "main_pretrain.py"), f"paths.data_dir={assets['data']}",
            f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}", *PRETRAIN_TINY, *SLOW, *extra]


def wait_until_training(proc, log_file, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log_file.exists() and "effective batch" in log_file.read_text():
            time.sleep(1.0)
            return
        time.sleep(0.05)
    pytest.fail(f"training did not start: {proc.communicate()[1][-3000:]}")


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory):
    """The weights of the SLOW run without interruption."""
    run = tmp_path_factory.mktemp("straight")
    res = subprocess.run(command(assets, run), cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return load_checkpoint(str(run / "checkpoints" / "last.pt"))["model"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 75), (signal.SIGINT, 130)])
def test_a_signal_to_the_process_group_checkpoints_and_resumes_exactly(assets, uninterrupted, tmp_path, sig, code):
    """With 2 DataLoader workers, SIGTERM (or Ctrl-C) to the whole process group: the workers leave the
    signal to the main process, which writes last.pt and exits 75 (130); resuming ends with the weights
    of an uninterrupted run."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(command(assets, stopped), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_until_training(proc, stopped / "pretrain.log")
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-3000:]
    one_message(err, "wrote", "last.pt", "resume=auto")
    assert load_checkpoint(str(stopped / "checkpoints" / "last.pt"))["batch_in_epoch"] > 0
    resumed = subprocess.run(command(assets, stopped, "resume=auto"), cwd=REPO, env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    b = load_checkpoint(str(stopped / "checkpoints" / "last.pt"))["model"]
    assert max((uninterrupted[k] - b[k]).abs().max().item() for k in b) <= 1e-6


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_names_the_path_and_keeps_the_previous_one(assets, tmp_path):
    run = tmp_path / "run"
    assert pretrain(assets, tmp_path, "trainer.max_epochs=1") == 0
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert len(before) > 2_000_000  # the next save cannot fit under the limit
    res = subprocess.run(command(assets, run, "trainer.max_epochs=2", "resume=auto", "data.num_workers=0"),
                         cwd=REPO, capture_output=True, text=True, preexec_fn=_limit_file_size,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 2, res.stderr[-3000:]
    one_message(res.stderr, "could not write the checkpoint", str(run / "checkpoints"), "free there",
                "are intact")
    assert last.read_bytes() == before and load_checkpoint(str(last))["epoch"] == 0
    assert not [f for f in os.listdir(run / "checkpoints") if ".tmp." in f]  # no partial file left
