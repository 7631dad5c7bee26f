"""Multimodal ECG <-> CMR pretraining: the CLIP loss (the formula; 2 gloo ranks against 1 process),
retrieval metrics, the paired data kind, the exports in the released layouts (and a published-layout
file loading back for continued training), and runs through main_pretrain, with resume after a kill."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import main_finetune
import main_pretrain
from datasets.demo import build_demo
from datasets.paired import PairedSource
from datasets.store import StoreError, write_store
from models.losses import clip_loss
from models.objectives import retrieval_metrics
from models.resnet import ResNetEncoder
from models.weights import load_pretrained

from builders import assert_a_kill_and_resume_equals_a_straight_run, run_main as run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["experiment=pre_training/mmcl_demo", "data.batch_size=8", "data.num_workers=0", "data.train_fraction=1.0",
        "data.ecg.time_steps=500", "data.cmr.img_size=32", "model.ecg_encoder.patch_size=[1,50]",
        "model.ecg_weights=null", "model.projection_dim=16", "model.knn_k=5", "model.probe_folds=2",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "extras.print_config=false"]


# ---- the loss -----------------------------------------------------------------------------------------
def clip_by_the_formula(a, b, t):
    a = a.double() / a.double().norm(dim=1, keepdim=True)
    b = b.double() / b.double().norm(dim=1, keepdim=True)
    n, total = len(a), 0.0
    for i in range(n):  # row i: a_i against every b; column i: b_i against every a
        row = [math.exp(float(a[i] @ b[k]) / t) for k in range(n)]
        col = [math.exp(float(b[i] @ a[k]) / t) for k in range(n)]
        total += 0.5 * -math.log(row[i] / sum(row)) + 0.5 * -math.log(col[i] / sum(col))
    return total / n


@pytest.mark.parametrize("n, t", [(1, 0.1), (4, 0.1), (6, 0.7)])
def test_clip_loss_equals_the_formula(n, t):
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    assert abs(float(clip_loss(a, b, t)) - clip_by_the_formula(a, b, t)) < 1e-6
    learnable = torch.tensor(math.log(t), requires_grad=True)
    clip_loss(a, b, learnable.exp()).backward()
    assert learnable.grad is not None and torch.isfinite(learnable.grad)


def _heads():
    torch.manual_seed(0)
    return torch.nn.Linear(6, 4).double(), torch.nn.Linear(3, 4).double()


def _rank(rank, world, init_file, xa, xb, out_dir):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    fa, fb = _heads()
    part = slice(rank * len(xa) // world, (rank + 1) * len(xa) // world)
    loss = clip_loss(fa(xa[part]), fb(xb[part]), 0.1)
    loss.backward()
    grads = {}
    for name, head in (("a", fa), ("b", fb)):
        for k, p in head.named_parameters():
            torch.distributed.all_reduce(p.grad)  # DDP's mean over the ranks
            grads[f"{name}.{k}"] = p.grad / world
    losses = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
    torch.distributed.all_gather(losses, loss.detach())
    if rank == 0:
        torch.save({"loss": float(torch.stack(losses).mean()), "grads": grads}, os.path.join(out_dir, "ranks.pt"))
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_give_the_clip_loss_and_gradients_of_one_process(tmp_path):
    g = torch.Generator().manual_seed(3)
    xa, xb = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    fa, fb = _heads()
    loss = clip_loss(fa(xa), fb(xb), 0.1)
    loss.backward()
    grads = {f"{n}.{k}": p.grad for n, h in (("a", fa), ("b", fb)) for k, p in h.named_parameters()}
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), xa, xb, str(tmp_path)), nprocs=2, join=True)
    ranks = torch.load(tmp_path / "ranks.pt", weights_only=True)
    assert abs(ranks["loss"] - float(loss.detach())) < 1e-6
    for k, grad in grads.items():
        assert (ranks["grads"][k] - grad).abs().max() < 1e-6, k


def test_retrieval_counts_the_own_partner_among_the_top_k():
    keys = np.eye(6)
    queries = np.eye(6)[[0, 1, 2, 4, 3, 5]] + 0.1 * np.eye(6)  # rows 3 and 4 prefer each other's partner
    assert retrieval_metrics(queries, keys, ks=(1, 5)) == {"top1": 4 / 6, "top5": 1.0}
    tied = np.ones((3, 2))  # all equally similar: ties count against
    assert retrieval_metrics(tied, tied, ks=(1,)) == {"top1": 0.0}


# ---- the paired data kind -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    build_demo(str(root), n_records=96, seed=0, include_real=False)
    return root


def paired_cfg(root, cmr_key="demo_cmr"):
    from util.config import compose
    from util.cli import CONFIG_DIR

    cfg = compose(CONFIG_DIR, "pretrain", [*TINY, f"paths.data_dir={root}", f"data.cmr.dataset_key={cmr_key}"])
    return cfg.data


def test_pairs_join_on_record_id_and_lonely_records_are_left_out_with_a_count(data, tmp_path, caplog):
    source = PairedSource(paired_cfg(data), seed=0)
    sample = source.dataset(source.split("train"), train=True)[(0, 0)]
    assert sample["ecg"].shape == (1, 12, 500) and sample["cmr"].shape == (1, 32, 32) and sample["label"].shape == (5,)
    info = source.info(source.split("train"))
    assert set(info.inputs) == {"ecg", "cmr"} and info.contract["ecg"]["modality"] == "ecg"

    from datasets.store import Store
    images = Store(data / "demo_cmr")
    keep = np.arange(0, 96, 2)  # every other record has an image
    write_store(data / "half_cmr", images=np.asarray(images.images)[keep], labels=None,
                record_ids=[images.record_ids[i] for i in keep], splits={"train": np.arange(len(keep)), "val": [],
                                                                         "test": []},
                info=dict(task_type=None, label_names=[], units="intensity (uint8)", provenance="test",
                          synthetic=True))
    caplog.clear()
    half = PairedSource(paired_cfg(data, "half_cmr"), seed=0)
    assert "48 of 96 ECG records" in caplog.text and "have no image" in caplog.text
    assert all(half.partner[r] >= 0 for r in half.split("train"))
    write_store(data / "other_cmr", images=np.asarray(images.images)[:4], labels=None, record_ids=list("abcd"),
                splits={"train": [0, 1, 2, 3], "val": [], "test": []},
                info=dict(task_type=None, label_names=[], units="intensity (uint8)", provenance="test",
                          synthetic=True))
    with pytest.raises(StoreError, match="share no record id"):
        PairedSource(paired_cfg(data, "other_cmr"), seed=0)


# ---- through the main -------------------------------------------------------------------------------------------
def test_mmcl_trains_reports_retrieval_and_exports_both_encoders_in_the_released_layouts(data, tmp_path):
    out = tmp_path / "mmcl"
    argv = [*TINY, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={out}",
            f"export_encoder={tmp_path}/ecg.pth"]
    assert run(main_pretrain.main, "pretrain", argv) == 0
    metrics = json.load(open(out / "metrics.json"))
    for key in ("val/loss", "val/ecg_to_cmr_top1", "val/ecg_to_cmr_top5", "val/cmr_to_ecg_top5", "val/chance_top5",
                "val/ecg_knn_auroc_macro"):
        assert key in metrics, sorted(metrics)
    n = metrics["val/samples"]
    assert metrics["val/chance_top1"] == pytest.approx(1 / n)

    ecg = torch.load(out / "encoder.pth", weights_only=True)
    image = torch.load(out / "image_encoder.pth", weights_only=True)
    assert set(ecg) >= {"model", "contract"} and ecg["contract"]["modality"] == "ecg"
    assert list(image["state_dict"])[0].startswith("encoder_imaging.0.")
    # the ECG encoder fine-tunes with 0 missing encoder keys; the image file loads strictly into a ResNet
    argv = ["data.num_workers=0", "data.time_steps=500", "model.patch_size=[1,50]", "trainer.max_epochs=1",
            f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/ft",
            f"model.pretrained_weights={tmp_path}/ecg.pth", "data.train_fraction=0.5",
            "trainer.enable_progress_bar=false", "extras.print_config=false"]
    assert run(main_finetune.main, "finetune", argv) == 0
    log = open(tmp_path / "ft" / "finetune.log").read()
    assert "missing 0" in log
    resnet = ResNetEncoder(depth=18, in_chans=1)
    report = load_pretrained(resnet, out / "image_encoder.pth")
    assert report.format == "mmcl_image" and report.missing == [] and report.unexpected == []

    # files in the published layouts start a new MMCL run (continued training)
    published_ecg = tmp_path / "published_ecg.pth"
    torch.save({"model": {k: v for k, v in ecg["model"].items() if not k.startswith("fc_norm")}}, published_ecg)
    argv = [*TINY, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/again",
            f"model.ecg_weights={published_ecg}", f"model.cmr_weights={out}/image_encoder.pth", "export_encoder=null",
            "trainer.fast_dev_run=1"]
    assert run(main_pretrain.main, "pretrain", argv) == 0
    log = open(tmp_path / "again" / "pretrain.log").read()
    assert "initialised the ECG encoder" in log and "initialised the CMR encoder" in log


def test_mmcl_on_unpaired_data_is_one_message(data, tmp_path, capsys):
    argv = [*TINY, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", "data=ecg", "modality=ecg/demo",
            "~data.ecg", "~data.cmr"]
    code = run(main_pretrain.main, "pretrain", argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("Error:") == 1, err[-2000:]


def test_a_missing_weights_file_is_scratch_only_when_configured_and_optional(data, tmp_path, capsys):
    base = [*TINY, f"paths.data_dir={data}", f"paths.log_dir={tmp_path}", "trainer.fast_dev_run=1", "export_encoder=null"]
    assert run(main_pretrain.main, "pretrain", [*base, f"hydra.run.dir={tmp_path}/a"]) == 0  # cmr_weights: no file yet
    assert "no pretrained CMR encoder at" in open(tmp_path / "a" / "pretrain.log").read()
    assert run(main_pretrain.main, "pretrain", [*base, f"model.cmr_weights={tmp_path}/nope.pth"]) == 2
    err = capsys.readouterr().err
    assert err.count("Error:") == 1 and "model.cmr_weights" in err and "does not exist" in err


@pytest.mark.slow
def test_mmcl_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path):
    def command(run_dir, *extra):
        return [sys.executable, os.path.join(REPO, "main_pretrain.py"), *TINY, f"paths.data_dir={data}",
                f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}", "trainer.max_epochs=3",
                "export_encoder=null", *extra]

    assert_a_kill_and_resume_equals_a_straight_run(command, tmp_path, REPO)


@pytest.mark.slow
def test_retrieval_on_two_ranks_equals_one_process_exactly(data, tmp_path):
    """Retrieval is computed once on the whole validation split gathered from every rank, in dataset
    order: with the same weights (an lr of 1e-30 leaves them bitwise unchanged; the frozen ResNet keeps
    its BN statistics) and each sample embedded alone (batch 1), 2 ranks report exactly 1 process's."""
    import shutil

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    common = [os.path.join(REPO, "main_pretrain.py"), *TINY, f"paths.data_dir={data}", "data.batch_size=1",
              "model.optim.lr=1e-30", "model.freeze_cmr=true", "trainer.limit_train_batches=2", "export_encoder=null"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results = {}
    for name, launcher in (("one", [sys.executable]), ("two", [torchrun, "--standalone", "--nproc_per_node=2"])):
        res = subprocess.run([*launcher, *common, f"hydra.run.dir={tmp_path}/{name}", f"paths.log_dir={tmp_path}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        results[name] = json.load(open(tmp_path / name / "metrics.json"))
    keys = [k for k in results["one"] if "_top" in k or k == "val/samples"]
    assert len(keys) == 7
    assert {k: results["two"][k] for k in keys} == {k: results["one"][k] for k in keys}
