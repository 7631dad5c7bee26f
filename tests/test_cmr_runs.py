"""CMR through the mains: SimCLR pretraining exports an encoder that CMR fine-tuning starts from, with
eval-only, bootstrap intervals and folds as for ECG; on-device augmentation; resume after a kill
equals an uninterrupted run; 2 ranks equal 1 process (slow)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import main_finetune
import main_pretrain
from datasets.demo import build_demo
from datasets.store import Store
from util.checkpoint import load_checkpoint

from builders import assert_a_kill_and_resume_equals_a_straight_run, run_main as run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["data.img_size=32", "data.batch_size=8", "data.num_workers=0", "data.train_fraction=1.0",
        "model.size=resnet18", "trainer.enable_progress_bar=false", "extras.print_config=false"]
SIMCLR = ["experiment=pre_training/cmr_demo", *TINY, "model.projection_hidden_dim=32", "model.projection_dim=16",
          "model.knn_k=5", "model.probe_folds=2", "trainer.max_epochs=1"]
CLASSIFIER = ["experiment=fine_tuning/cmr_demo", *TINY, "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmr_data")
    build_demo(str(root), n_records=96, seed=0, include_real=False)
    return root


def test_simclr_pretraining_exports_an_encoder_that_cmr_fine_tuning_starts_from(data, tmp_path):
    pre = tmp_path / "pre"
    argv = [*SIMCLR, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={pre}",
            f"export_encoder={tmp_path}/image_encoder.pth"]
    assert run(main_pretrain.main, "pretrain", argv) == 0
    metrics = json.load(open(pre / "metrics.json"))
    for key in ("train/loss", "val/loss", "val/knn_auroc_macro", "val/probe_auroc_macro"):
        assert key in metrics, sorted(metrics)
    assert os.path.isfile(pre / "figures" / "views_epoch000.png")
    encoder = torch.load(tmp_path / "image_encoder.pth", weights_only=True)
    assert set(encoder) >= {"model", "contract", "training_data"}
    assert not any(k.startswith("projector") for k in encoder["model"]) and "layer4.1.bn2.weight" in encoder["model"]
    assert encoder["contract"]["modality"] == "cmr" and encoder["training_data"]["split"] == "train"

    ft = tmp_path / "ft"
    argv = [*CLASSIFIER, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={ft}",
            f"model.pretrained_weights={tmp_path}/image_encoder.pth", "bootstrap=20"]
    assert run(main_finetune.main, "finetune", argv) == 0
    result = json.load(open(ft / "metrics.json"))
    assert result["pretrained_weights"] == f"{tmp_path}/image_encoder.pth"
    assert "auroc_macro" in result["val"] and "auroc_macro" in result["test"] and "auroc_macro" in result["test_ci95"]
    # the demo's pretraining split is the fine-tuning train split: no overlap with val / test
    assert result["pretraining_overlap"] == {"records": 0, "patients": None}

    again = tmp_path / "eval"
    argv = [*CLASSIFIER, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={again}",
            "eval_only=true", f"ckpt_path={result['checkpoint']}", "model.pretrained_weights=null"]
    assert run(main_finetune.main, "finetune", argv) == 0
    evaluated = json.load(open(again / "metrics_dict.json"))
    assert evaluated["test"]["auroc_macro"] == pytest.approx(result["test"]["auroc_macro"], abs=1e-9)


def test_a_fold_trains_on_its_fold_and_on_device_augmentation_trains(data, tmp_path):
    argv = [*CLASSIFIER, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/f",
            "+fold=2", "model.pretrained_weights=null", "trainer.fast_dev_run=2"]
    assert run(main_finetune.main, "finetune", argv) == 0
    assert json.load(open(tmp_path / "f" / "metrics.json"))["train_records"] == \
        len(Store(data / "demo_cmr").split("fold_2_train"))
    argv = [*SIMCLR, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/d",
            "data.augment_device=device", "trainer.fast_dev_run=2", "export_encoder=null"]
    assert run(main_pretrain.main, "pretrain", argv) == 0
    assert "val/knn_auroc_macro" in json.load(open(tmp_path / "d" / "metrics.json"))


@pytest.mark.parametrize("override, needle", [
    ("data.views=1", "data.views=2"),
    ("data.views=3", "data.views = 3: must be one of 1, 2"),
    ("data.random_crop_scale=[0.9,0.5]", "low <= high"),
    ("data.manual_crop={top:0.8,left:0.0,height:0.5,width:0.5}", "reaches outside"),
    ("model.size=resnet34", "must be one of resnet18, resnet50"),
    ("model.temperature=0", "model.temperature = 0"),
])
def test_a_bad_cmr_value_is_one_message(data, tmp_path, capsys, override, needle):
    argv = [*SIMCLR, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", override]
    assert run(main_pretrain.main, "pretrain", argv) == 2
    err = capsys.readouterr().err
    assert err.count("Error:") == 1 and needle in err, err[-2000:]


# ---- real processes --------------------------------------------------------------------------------------
def command(data, run_dir, *extra, script="main_pretrain.py", launcher=()):
    return [*launcher, *(() if launcher else (sys.executable,)), os.path.join(REPO, script), *SIMCLR,
            f"paths.data_dir={data}", f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}",
            "trainer.max_epochs=3", "export_encoder=null", *extra]


@pytest.mark.slow
def test_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path):
    assert_a_kill_and_resume_equals_a_straight_run(lambda run_dir, *extra: command(data, run_dir, *extra), tmp_path,
                                                   REPO)


@pytest.mark.slow
def test_two_process_simclr_matches_one_process_with_the_same_global_batch(data, tmp_path):
    """Negatives from both ranks and batch norm over the global batch: 2 ranks x batch 4 train as
    1 process x batch 8 (up to float summation order and what Adam makes of it)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["trainer.max_epochs=1", "trainer.limit_train_batches=4"]
    one = subprocess.run(command(data, tmp_path / "one", *common, "data.batch_size=8"), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(command(data, tmp_path / "two", *common, "data.batch_size=4",
                                 launcher=(torchrun, "--standalone", "--nproc_per_node=2")),
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "batch norms synchronised over the 2 ranks" in open(tmp_path / "two" / "pretrain.log").read()
    a = load_checkpoint(str(tmp_path / "one" / "checkpoints" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "two" / "checkpoints" / "last.pt"))
    assert a["step"] == b["step"] == 4
    # Adam turns float noise in a (nearly) zero gradient into an lr-sized step (lr 9.4e-5 here), so a
    # few elements may differ by that much (0.1% on an AVX2-only CPU, fewer with AVX-512); without
    # synchronised batch norm a third of them do
    keys = [k for k in a["model"] if a["model"][k].is_floating_point()]
    diffs = {k: (a["model"][k].double() - b["model"][k].double()).abs() for k in keys}
    count = sum(d.numel() for d in diffs.values())
    assert sum(float((d > 1e-5).sum()) for d in diffs.values()) / count < 1e-2
    assert sum(float(d.sum()) for d in diffs.values()) / count < 1e-6
    assert max(float(d.max()) for d in diffs.values()) < 5e-4
