"""The preprocessing contract and the pretraining-overlap check, end to end: an encoder or checkpoint
trained on data prepared one way is refused on data prepared another (or used with a warning when
the run allows it), and fine-tuning says when the encoder was pretrained on its test records. Plus
``python -m datasets.check_overlap`` on planted overlaps."""
import json

import numpy as np
import pytest
import torch

import main_finetune
import main_pretrain
from builders import FINETUNE_TINY, PRETRAIN_TINY
from datasets import check_overlap
from datasets.store import STANDARD_LEADS, Store, make_splits, write_store
from util import cli, contract
from util.errors import ConfigError

N, T = 60, 400


def ecg_store(root, *, rate=500, record_prefix="r", patients=None, seed=0, signals=None, splits=None, source=None):
    """A 3-class store of sines whose frequency is the class; ``patients``: one id per record."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, size=N)
    t = np.arange(T) / 100.0
    if signals is None:
        signals = (np.sin(2 * np.pi * (1.0 + cls)[:, None, None] * t) + 0.05 * rng.standard_normal((N, 12, T)))
    if splits is None:
        splits = make_splits(N, cls, groups=patients, val=0.2, test=0.2, folds=2, seed=0)
    return write_store(root, signals=np.asarray(signals, np.float32), labels=cls,
                       record_ids=[f"{record_prefix}{i}" for i in range(N)], splits=splits, patient_ids=patients,
                       info={"modality": "ecg", "task_type": "multiclass", "label_names": ["slow", "mid", "fast"],
                             "sampling_rate": rate, "lead_names": list(STANDARD_LEADS), "units": "mV",
                             "provenance": "test", "synthetic": True,
                             **({"ingest": {"source": source}} if source else {})})


def store_overrides(data, key, rate):
    return [f"paths.data_dir={data}", f"modality.dataset_key={key}", f"modality.sampling_rate={rate}",
            "~modality.build_demo"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An encoder pretrained (and a classifier fine-tuned) on the 500 Hz store ``p500``."""
    root = tmp_path_factory.mktemp("contract")
    data = root / "data"
    patients = [f"p{i // 2}" for i in range(N)]  # two records per patient
    ecg_store(data / "p500", patients=patients)
    ecg_store(data / "p250", rate=250, seed=1)
    argv = [*store_overrides(data, "p500", 500), f"paths.log_dir={root}/logs", f"hydra.run.dir={root}/pre",
            *PRETRAIN_TINY, "data.time_steps=200", "trainer.max_epochs=1", "modality.num_classes=3",
            "modality.task_type=multiclass"]
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 0
    argv = [*store_overrides(data, "p500", 500), "modality.task_type=multiclass", "modality.num_classes=3",
            *FINETUNE_TINY, f"paths.log_dir={root}/logs", f"hydra.run.dir={root}/ft", "trainer.max_epochs=1"]
    assert cli.run_cli(main_finetune.main, "finetune", argv=argv, prog="main_finetune.py") == 0
    return {"root": root, "data": data, "patients": patients, "encoder": root / "pre" / "encoder.pth",
            "checkpoint": root / "ft" / "checkpoints" / "last.pt"}


def finetune(trained, tmp_path, key, rate, *overrides):
    argv = [*store_overrides(trained["data"], key, rate), "modality.task_type=multiclass", "modality.num_classes=3",
            *FINETUNE_TINY, f"paths.log_dir={tmp_path}/logs", f"hydra.run.dir={tmp_path}/run", "trainer.max_epochs=1",
            *overrides]
    return cli.run_cli(main_finetune.main, "finetune", argv=argv, prog="main_finetune.py")


def test_mismatches_name_each_differing_field_and_ignore_unknown_ones():
    trained = {"sampling_rate": 500.0, "channel_names": ["I", "II"], "zscore": "none", "seconds": 10.0}
    given = {"sampling_rate": 250.0, "channel_names": ["I", "II"], "seconds": 5.0}  # zscore unknown here
    assert contract.mismatches(trained, given) == ["sampling_rate: 500.0 (trained) vs 250.0 (this data)"]
    assert contract.mismatches(None, given) == []


def test_paired_contracts_are_compared_per_modality():
    ecg = {"modality": "ecg", "sampling_rate": 500, "units": "mV"}
    cmr = {"modality": "cmr", "image_size": 128}
    paired = {"modality": "paired", "ecg": ecg, "cmr": cmr}
    contract.check(paired, {"modality": "paired", "ecg": dict(ecg), "cmr": dict(cmr)}, what="m", policy="error")
    with pytest.raises(ConfigError, match=r"m \(ecg\) was trained .*sampling_rate: 500 \(trained\) vs 250"):
        contract.check(paired, {"modality": "paired", "ecg": {**ecg, "sampling_rate": 250}, "cmr": cmr},
                       what="m", policy="error")


def test_the_encoder_file_records_its_contract_and_training_records(trained):
    payload = torch.load(trained["encoder"], weights_only=True)
    assert payload["contract"]["sampling_rate"] == 500.0
    assert payload["contract"]["channel_names"] == list(STANDARD_LEADS)
    assert payload["training_data"]["split"] == "train"
    assert payload["training_data"]["store"] == str(trained["data"] / "p500")
    assert payload["training_data"]["records"] == len(Store(trained["data"] / "p500").split("train"))


def test_an_encoder_pretrained_at_500_hz_is_refused_on_a_250_hz_store(trained, tmp_path, capsys):
    code = finetune(trained, tmp_path, "p250", 250, f"model.pretrained_weights={trained['encoder']}")
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and err.count("Error:") == 1, err[-2000:]
    assert "sampling_rate: 500.0 (trained) vs 250.0 (this data)" in err
    assert "data.contract_mismatch=warn" in err
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_contract_mismatch_warn_uses_the_encoder_and_logs_the_difference(trained, tmp_path, capsys):
    code = finetune(trained, tmp_path, "p250", 250, f"model.pretrained_weights={trained['encoder']}",
                    "data.contract_mismatch=warn")
    assert code == 0
    log = (tmp_path / "run" / "finetune.log").read_text()
    assert "data.contract_mismatch=warn" in log and "sampling_rate: 500.0 (trained) vs 250.0" in log
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["pretrained_weights"] == str(trained["encoder"])


def test_a_checkpoint_is_refused_for_evaluation_on_data_prepared_differently(trained, tmp_path, capsys):
    code = finetune(trained, tmp_path, "p250", 250, "eval_only=true", f"ckpt_path={trained['checkpoint']}")
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("Error:") == 1 and "checkpoint" in err and "sampling_rate: 500.0 (trained) vs 250.0" in err


def test_finetuning_warns_when_the_encoder_was_pretrained_on_its_test_patients(trained, tmp_path):
    """A second store shares one patient (under other record ids) with p500's train split: that
    patient's records are in the new store's test split, and the run says so and records it."""
    p500 = Store(trained["data"] / "p500")
    leaked = trained["patients"][int(p500.split("train")[0])]
    patients = [f"q{i}" for i in range(N)]
    patients[0] = leaked
    splits = make_splits(N, None, groups=patients, val=0.2, test=0.2, folds=2, seed=0)
    splits = {**splits, "train": [i for i in splits["train"] if i != 0], "val": [i for i in splits["val"] if i != 0],
              "test": sorted(set(splits["test"]) | {0})}
    ecg_store(trained["data"] / "leaky", record_prefix="other", patients=patients, seed=2, splits=splits)
    assert finetune(trained, tmp_path, "leaky", 500, f"model.pretrained_weights={trained['encoder']}") == 0
    log = (tmp_path / "run" / "finetune.log").read_text()
    assert "was trained on records this run evaluates on (its test split)" in log
    assert f"shared patients: 1 ({leaked})" in log
    overlap = json.loads((tmp_path / "run" / "metrics.json").read_text())["pretraining_overlap"]
    assert overlap == {"records": 0, "patients": 1}


def test_finetuning_on_the_pretraining_store_finds_no_overlap(trained, tmp_path):
    assert finetune(trained, tmp_path, "p500", 500, f"model.pretrained_weights={trained['encoder']}") == 0
    assert "evaluates on" not in (tmp_path / "run" / "finetune.log").read_text()
    overlap = json.loads((tmp_path / "run" / "metrics.json").read_text())["pretraining_overlap"]
    assert overlap == {"records": 0, "patients": 0}


# ---- python -m datasets.check_overlap ---------------------------------------------------------------------
def test_check_overlap_finds_a_planted_shared_patient(tmp_path, capsys):
    a = [f"a{i}" for i in range(N)]
    b = [f"b{i}" for i in range(N)]
    b[7] = a[3]
    ecg_store(tmp_path / "A", patients=a, record_prefix="x", seed=0)
    ecg_store(tmp_path / "B", patients=b, record_prefix="y", seed=1)
    assert check_overlap.main([str(tmp_path / "A"), str(tmp_path / "B")]) == 1
    out = capsys.readouterr().out
    assert "shared record ids: 0" in out and "shared patients: 1 (a3)" in out
    assert "identical records under other ids: 0" in out


def test_check_overlap_finds_the_same_record_under_another_id(tmp_path, capsys):
    store = ecg_store(tmp_path / "A", seed=0)
    signals = np.array(Store(store).signals, dtype=np.float32)
    copy = np.random.default_rng(5).standard_normal(signals.shape).astype(np.float32)
    copy[11] = signals[4]  # the same ECG, renamed
    ecg_store(tmp_path / "B", record_prefix="z", signals=copy)
    assert check_overlap.main([str(tmp_path / "A"), str(tmp_path / "B")]) == 1
    assert "identical records under other ids: 1 (r4=z11)" in capsys.readouterr().out


def test_check_overlap_of_disjoint_splits_of_one_store_is_clean(tmp_path, capsys):
    patients = [f"p{i // 3}" for i in range(N)]
    root = ecg_store(tmp_path / "A", patients=patients)
    assert check_overlap.main([f"{root}:train", f"{root}:test"]) == 0
    out = capsys.readouterr().out
    assert "shared patients: 0" in out and ":train" in out


def test_check_overlap_of_a_missing_store_is_one_error(tmp_path, capsys):
    ecg_store(tmp_path / "A")
    assert check_overlap.main([str(tmp_path / "A"), str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.count("Error:") == 1


def test_check_overlap_compares_ids_only_within_one_source(tmp_path, capsys):
    """Record 'r3' of PTB-XL and 'r3' of CODE-15% are different ECGs: stores of two sources are
    compared by content only."""
    patients = [f"p{i}" for i in range(N)]
    ecg_store(tmp_path / "A", patients=patients, source="ptbxl")
    ecg_store(tmp_path / "B", patients=patients, source="code15", seed=1)
    assert check_overlap.main([str(tmp_path / "A"), str(tmp_path / "B")]) == 0
    out = capsys.readouterr().out
    assert "not compared (sources ptbxl and code15" in out and "shared patients" not in out
    ecg_store(tmp_path / "C", patients=patients, source="ptbxl", seed=1)
    assert check_overlap.main([str(tmp_path / "A"), str(tmp_path / "C")]) == 1
    assert f"shared record ids: {N}" in capsys.readouterr().out
