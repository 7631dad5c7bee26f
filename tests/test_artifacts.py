"""main_artifacts.py: embeddings of every split that equal what fine-tuning evaluation computes (1
process and 2 gloo processes), saliency maps of chosen records (ECG classifier, CMR classifier, MMCL)
with their figures and index, encoder files, and one clear error for a bad record id or a file of the
wrong kind."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import engine
import main_artifacts
import main_finetune
import main_pretrain
from datasets import build_data
from datasets.demo import build_demo
from datasets.store import open_store
from util.checkpoint import load_checkpoint
from util.config import Config, load_yaml

from builders import run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = ["trainer.enable_progress_bar=false", "extras.print_config=false"]
ECG_FINETUNE = ["experiment=fine_tuning/ecg_demo", "model.size=pluto", "model.patch_size=[1,50]", "data.time_steps=500",
                "data.batch_size=8", "data.num_workers=0", "model.pretrained_weights=null", "model.optim.lr=1e-3",
                "data.train_fraction=0.5", "trainer.max_epochs=1", *QUIET]
# the demo embeddings experiment on the 96-record store (its encoder files come from the tests)
ECG_DATA = ["data.time_steps=500", "data.batch_size=8", "data.num_workers=0", "model.size=pluto",
            "model.patch_size=[1,50]"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A 96-record demo (ECG + CMR) and an ECG classifier fine-tuned on it for one epoch."""
    root = tmp_path_factory.mktemp("artifacts")
    build_demo(str(root / "data"), n_records=96, seed=0, include_real=False)
    run_dir = root / "finetune"
    assert run_main(main_finetune.main, "finetune", [f"paths.data_dir={root}/data", f"paths.log_dir={root}/logs",
                                                     f"hydra.run.dir={run_dir}", *ECG_FINETUNE]) == 0
    ckpt = json.loads((run_dir / "metrics.json").read_text())["checkpoint"]
    return root, ckpt


def artifacts(root, run_dir, *extra):
    return run_main(main_artifacts.main, "artifacts", [f"paths.data_dir={root}/data", f"paths.log_dir={root}/logs",
                                                        f"hydra.run.dir={run_dir}", *QUIET, *extra])


def fine_tuning_features(ckpt_path, split="test"):
    """The encoder features (the head's input) that fine-tuning evaluation computes on ``split``."""
    ckpt = load_checkpoint(ckpt_path)
    stored = Config(load_yaml(ckpt["config"]))
    rt = engine.Runtime(torch.device("cpu"), engine.resolve_precision("32", torch.device("cpu")))
    data = build_data(stored.data, ("train", "val", "test"), seed=stored.seed)
    objective = engine.build_objective(stored, data.info, rt)
    main_finetune.load_weights(objective, data, ckpt_path)
    seen = []
    objective.net.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    engine.evaluate(objective, data.loaders[split], rt)
    return torch.cat(seen).numpy(), data


def test_embeddings_of_every_split_equal_the_features_of_fine_tuning_evaluation(demo, tmp_path):
    root, ckpt = demo
    assert artifacts(root, tmp_path, f"ckpt_path={ckpt}", *ECG_DATA[:3], "saliency.first_n=0") == 0
    written = torch.load(tmp_path / "demo_ecg_embeddings.pt", weights_only=True)
    assert sorted(written) == ["test", "train", "val"]
    store = open_store(str(root / "data"), "demo_ecg")
    features, data = fine_tuning_features(ckpt)
    for split, payload in written.items():
        records = store.split(split)  # the whole split (fine-tuning trained on half of train), in store order
        assert payload["record_ids"] == [store.record_ids[i] for i in records]
        assert payload["embeddings"].shape == (len(records), 256)
        np.testing.assert_array_equal(payload["labels"].numpy(), np.asarray(store.labels[records], dtype=np.float32))
        copy = np.load(tmp_path / "embeddings" / f"demo_ecg_{split}_embeddings.npy")
        np.testing.assert_array_equal(copy, payload["embeddings"].numpy())
    assert np.abs(written["test"]["embeddings"].numpy() - features).max() <= 1e-5
    assert len(data.loaders["train"].dataset) < len(written["train"]["record_ids"])
    index = json.loads((tmp_path / "artifacts.json").read_text())
    files = {entry["file"] for entry in index["files"]}
    assert {"demo_ecg_embeddings.pt", "figures/embedding_map_ecg_test.png"} <= files
    assert all((tmp_path / f).is_file() for f in files)
    assert index["test/records"] == len(store.split("test"))


@pytest.mark.slow
def test_two_gloo_processes_write_the_embeddings_of_one_process(demo, tmp_path):
    root, ckpt = demo
    one, two = tmp_path / "one", tmp_path / "two"
    common = [f"paths.data_dir={root}/data", f"paths.log_dir={root}/logs", f"ckpt_path={ckpt}", *ECG_DATA[:3],
              "saliency.first_n=0", "figures.embedding_map=false", "+fold=2", "splits=[train,val]", *QUIET]
    assert artifacts(root, one, *common[2:]) == 0
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    ddp = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", os.path.join(REPO, "main_artifacts.py"),
                          f"hydra.run.dir={two}", *common], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = torch.load(one / "demo_ecg_embeddings.pt", weights_only=True)
    b = torch.load(two / "demo_ecg_embeddings.pt", weights_only=True)
    # fold 2: 61 train and 15 val records, uneven shards: padded by the sampler, then dropped again
    assert [len(a[split]["record_ids"]) for split in ("train", "val")] == [61, 15]
    for split in a:
        assert a[split]["record_ids"] == b[split]["record_ids"]
        assert (a[split]["embeddings"] - b[split]["embeddings"]).abs().max() <= 1e-5


def test_saliency_of_one_record_by_id_with_batch_size_1(demo, tmp_path):
    root, ckpt = demo
    store = open_store(str(root / "data"), "demo_ecg")
    rid = store.record_ids[int(store.split("val")[3])]
    assert artifacts(root, tmp_path, f"ckpt_path={ckpt}", *ECG_DATA[:3], f"record_id={rid}", "data.batch_size=1",
                     "splits=[val]",
                     "embeddings=false", "saliency.targets=all", "saliency.steps=4", "figures.ecg_layout=3x4") == 0
    entries = json.loads((tmp_path / "artifacts.json").read_text())["files"]
    maps = [e for e in entries if e["kind"] == "saliency_map"]
    # integrated gradients per class (5), the attention maps once each (they do not depend on the class)
    assert sorted((e["method"], e.get("target")) for e in maps) == sorted(
        [("integrated_gradients", c) for c in ("NORM", "SBRAD", "STACH", "AFIB", "BBB")]
        + [("attention_rollout", "the pooled features"), ("last_block_attention", "the pooled features")])
    for entry in maps:
        assert entry["record_id"] == rid and entry["split"] == "val" and entry["field"] == "ecg"
        assert np.load(tmp_path / entry["file"]).shape == (1, 12, 500)
        assert (tmp_path / entry["file"].replace(".npy", ".png")).is_file()
    assert not any(e["kind"] == "embeddings" for e in entries)


def test_an_unknown_record_id_is_one_error_that_says_where_valid_ids_are(demo, tmp_path, capsys):
    root, ckpt = demo
    assert artifacts(root, tmp_path, f"ckpt_path={ckpt}", *ECG_DATA[:3], "record_id=[nope]", "embeddings=false") == 2
    err = capsys.readouterr().err
    assert "record_id nope is not in the" in err and "record_ids.txt" in err and "Traceback" not in err


def test_an_mae_checkpoint_embeds_the_mean_encoder_token_and_has_no_saliency(demo, tmp_path, capsys):
    root, _ = demo
    run = tmp_path / "mae"
    assert run_main(main_pretrain.main, "pretrain", [f"paths.data_dir={root}/data", f"paths.log_dir={root}/logs",
                                                     f"hydra.run.dir={run}", "model.size=pluto",
                                                     "model.patch_size=[1,50]", "data.time_steps=500",
                                                     "data.batch_size=8", "data.num_workers=0",
                                                     "trainer.max_epochs=1", *QUIET]) == 0
    ckpt = sorted((run / "checkpoints").glob("epoch_*.pt"))[-1]
    out = tmp_path / "out"
    assert artifacts(root, out, f"ckpt_path={ckpt}", *ECG_DATA[:3], "splits=[test]", "figures.embedding_map=false",
                     "saliency.first_n=2") == 0  # auto: nothing to explain, so no maps
    test = torch.load(out / "demo_ecg_embeddings.pt", weights_only=True)["test"]
    assert test["embeddings"].shape == (len(test["record_ids"]), 256) and torch.isfinite(test["embeddings"]).all()
    assert not any(e["kind"] == "saliency_map" for e in json.loads((out / "artifacts.json").read_text())["files"])
    assert artifacts(root, tmp_path / "x", f"ckpt_path={ckpt}", *ECG_DATA[:3], "saliency.methods=[grad_cam]") == 2
    assert "MAEPretraining has no saliency maps" in capsys.readouterr().err


def test_an_encoder_file_embeds_with_its_model_config_and_has_no_saliency(demo, tmp_path, capsys):
    root, ckpt = demo
    encoder = tmp_path / "encoder.pth"
    state = {k[len("net."):]: v for k, v in load_checkpoint(ckpt)["model"].items() if k.startswith("net.")}
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith(("head.", "attention_pool."))}}, encoder)
    out = tmp_path / "run"
    assert artifacts(root, out, f"ckpt_path={encoder}", *ECG_DATA, "splits=[test]", "saliency.first_n=0") == 0
    test = torch.load(out / "demo_ecg_embeddings.pt", weights_only=True)["test"]
    assert test["embeddings"].shape[1] == 256 and torch.isfinite(test["embeddings"]).all()
    # asking an encoder for saliency maps, or reading an encoder file as a classifier: one message each
    assert artifacts(root, tmp_path / "x", f"ckpt_path={encoder}", *ECG_DATA, "record_id=[x]") == 2
    assert "has no saliency maps" in capsys.readouterr().err
    assert artifacts(root, tmp_path / "y", f"ckpt_path={encoder}", *ECG_DATA[:3], "model=ecg_classifier",
                     "model.size=pluto", "model.patch_size=[1,50]") == 2
    assert "is an encoder file" in capsys.readouterr().err


def test_a_file_of_another_model_is_refused_with_one_message(demo, tmp_path, capsys):
    root, _ = demo
    from models.resnet import ResNetEncoder

    image_encoder = tmp_path / "image.pth"
    torch.save({"model": ResNetEncoder(depth=18).encoder_state_dict()}, image_encoder)
    assert artifacts(root, tmp_path / "run", f"ckpt_path={image_encoder}", *ECG_DATA) == 2
    err = capsys.readouterr().err
    assert "belong to another model" in err and "Traceback" not in err
    assert artifacts(root, tmp_path / "run2", f"ckpt_path={tmp_path}/missing.pt") == 2
    assert "does not exist" in capsys.readouterr().err


def test_cmr_classifier_grad_cam_and_mmcl_similarity_maps(demo, tmp_path):
    root, _ = demo
    base = [f"paths.data_dir={root}/data", f"paths.log_dir={root}/logs", "data.batch_size=8", "data.num_workers=0",
            "data.train_fraction=1.0", "trainer.max_epochs=1", *QUIET]
    cmr_run = tmp_path / "cmr"
    assert run_main(main_finetune.main, "finetune", [*base, f"hydra.run.dir={cmr_run}",
                                                     "experiment=fine_tuning/cmr_demo",
                                                     "data.img_size=32", "model.size=resnet18",
                                                     "model.pretrained_weights=null"]) == 0
    ckpt = json.loads((cmr_run / "metrics.json").read_text())["checkpoint"]
    out = tmp_path / "cmr_artifacts"
    assert artifacts(root, out, f"ckpt_path={ckpt}", "experiment=embeddings/cmr_demo", "data.img_size=32",
                     "saliency.first_n=1", "saliency.steps=4", "splits=[test]") == 0
    entries = json.loads((out / "artifacts.json").read_text())["files"]
    cams = [e for e in entries if e["kind"] == "saliency_map" and e["method"] == "grad_cam"]
    assert cams and all(np.load(out / e["file"]).shape == (1, 32, 32) for e in cams)
    from_classifier = torch.load(out / "demo_cmr_embeddings.pt", weights_only=True)["test"]
    assert from_classifier["embeddings"].shape[1] == 512
    # its encoder as an encoder file (torchvision names): the same vectors through model=cmr_embedding
    state = {k[len("net."):]: v for k, v in load_checkpoint(ckpt)["model"].items()
             if k.startswith("net.") and not k.startswith("net.head.")}
    torch.save({"model": state}, tmp_path / "image_encoder.pth")
    out = tmp_path / "cmr_encoder_artifacts"
    assert artifacts(root, out, f"ckpt_path={tmp_path}/image_encoder.pth", "experiment=embeddings/cmr_demo",
                     "data.img_size=32", "splits=[test]", "figures.embedding_map=false") == 0
    from_file = torch.load(out / "demo_cmr_embeddings.pt", weights_only=True)["test"]
    assert from_file["record_ids"] == from_classifier["record_ids"]
    assert (from_file["embeddings"] - from_classifier["embeddings"]).abs().max() <= 1e-5

    # a SimCLR checkpoint (trained on two views) embeds the plain frames
    simclr_run = tmp_path / "simclr"
    assert run_main(main_pretrain.main, "pretrain", [*base, f"hydra.run.dir={simclr_run}",
                                                     "experiment=pre_training/cmr_demo", "data.img_size=32",
                                                     "model.size=resnet18", "model.projection_hidden_dim=32",
                                                     "model.projection_dim=16", "model.knn_k=5",
                                                     "model.probe_folds=2"]) == 0
    simclr = sorted((simclr_run / "checkpoints").glob("epoch_*.pt"))[-1]
    out = tmp_path / "simclr_artifacts"
    assert artifacts(root, out, f"ckpt_path={simclr}", "experiment=embeddings/cmr_demo", "data.img_size=32",
                     "splits=[val]", "figures.embedding_map=false") == 0
    val = torch.load(out / "demo_cmr_embeddings.pt", weights_only=True)["val"]
    assert val["embeddings"].shape == (len(val["record_ids"]), 512)

    mmcl_run = tmp_path / "mmcl"
    assert run_main(main_pretrain.main, "pretrain", [*base, f"hydra.run.dir={mmcl_run}",
                                                     "experiment=pre_training/mmcl_demo",
                                                     "data.ecg.time_steps=500", "data.cmr.img_size=32",
                                                     "model.ecg_encoder.patch_size=[1,50]", "model.ecg_weights=null",
                                                     "model.cmr_weights=null", "model.projection_dim=16",
                                                     "model.knn_k=5", "model.probe_folds=2"]) == 0
    ckpt = sorted((mmcl_run / "checkpoints").glob("epoch_*.pt"))[-1]
    out = tmp_path / "mmcl_artifacts"
    assert artifacts(root, out, f"ckpt_path={ckpt}", "~experiment", "saliency.first_n=2", "splits=[val]") == 0
    entries = json.loads((out / "artifacts.json").read_text())["files"]
    maps = {(e["record_id"], e["field"]): np.load(out / e["file"]) for e in entries if e["kind"] == "saliency_map"}
    assert len(maps) == 4 and {f for _, f in maps} == {"ecg", "cmr"}
    assert all(m.shape == ((1, 12, 500) if f == "ecg" else (1, 32, 32)) for (_, f), m in maps.items())
    ecg = torch.load(out / "demo_ecg_ecg_embeddings.pt", weights_only=True)["val"]
    cmr = torch.load(out / "demo_ecg_cmr_embeddings.pt", weights_only=True)["val"]
    assert ecg["record_ids"] == cmr["record_ids"] and ecg["embeddings"].shape[1] == 256
