"""The dataset store: round trips, every refusal, atomic writes, deterministic splits."""
import json
import os
import pickle

import numpy as np
import pytest

from datasets.store import STANDARD_LEADS, Store, StoreError, StoreWriter, make_splits, write_store
from util.config import ConfigError

N, T = 20, 64


def ecg_info(**extra):
    info = dict(modality="ecg", task_type="multilabel", label_names=["a", "b", "c"], sampling_rate=100,
                lead_names=list(STANDARD_LEADS), units="mV", provenance="test", synthetic=True)
    info.update(extra)
    return info


def toy(n=N, leads=12, length=T, seed=0):
    rng = np.random.default_rng(seed)
    signals = rng.standard_normal((n, leads, length)).astype(np.float32)
    labels = np.zeros((n, 3), dtype=np.float32)
    labels[np.arange(n), np.arange(n) % 3] = 1
    return signals, labels, [f"rec{i:03d}" for i in range(n)]


@pytest.fixture
def store_dir(tmp_path):
    signals, labels, ids = toy()
    root = write_store(tmp_path / "toy", signals=signals, labels=labels, record_ids=ids,
                       splits=make_splits(N, labels, folds=2), info=ecg_info(), dtype=np.float16)
    return root


def no_leftovers(folder):
    return [p for p in os.listdir(folder) if p.startswith(".")] == []


# ----------------------------------------------------------------------------------------------
# Round trips


def test_write_store_round_trip(tmp_path):
    signals, labels, ids = toy()
    splits = make_splits(N, labels, folds=2)
    root = write_store(tmp_path / "toy", signals=signals, labels=labels, record_ids=ids, splits=splits,
                       info=ecg_info(extras={"note": 1}), dtype=np.float16)
    store = Store(root)
    assert len(store) == N and store.shape == (N, 12, T) and store.dtype == np.float16
    assert np.array_equal(store.signals, signals.astype(np.float16))
    assert np.array_equal(store.labels, labels)
    assert store.record_ids == ids
    assert store.info["format_version"] == 1 and store.info["extras"] == {"note": 1}
    assert store.lead_names == list(STANDARD_LEADS) and store.sampling_rate == 100
    for name, idx in splits.items():
        assert store.split(name).tolist() == idx and store.split(name).dtype == np.int64
    assert sorted(os.listdir(tmp_path)) == ["toy"]  # no temp folder left beside it


def test_read_returns_only_the_window(store_dir):
    store = Store(store_dir)
    full = np.asarray(store.signals)
    assert np.array_equal(store.read(3), full[3])
    assert np.array_equal(store.read(3, 10, 40), full[3, :, 10:40])
    assert np.array_equal(store.read(7, 5, 9, [11, 0, 4]), full[7, [11, 0, 4], 5:9])
    with pytest.raises(IndexError):
        store.read(N)


def test_stream_writer_round_trip_and_cmr_store(tmp_path):
    images = np.random.default_rng(1).integers(0, 255, (N, 1, 16, 16), dtype=np.uint8)
    classes = np.arange(N) % 4
    with StoreWriter(tmp_path / "cmr", N, (1, 16, 16), np.uint8, kind="images") as writer:
        writer.write_batch(0, images[:8])
        for i in range(8, N):
            writer[i] = images[i]
        writer.finish(labels=classes, record_ids=[f"r{i}" for i in range(N)], splits=make_splits(N, classes),
                      info=dict(task_type="multiclass", label_names=list("wxyz"), units="intensity",
                                provenance="test", synthetic=True))
    store = Store(tmp_path / "cmr")
    assert store.modality == "cmr" and store.shape == (N, 1, 16, 16)
    assert np.array_equal(store.images, images) and np.array_equal(store.read(5), images[5])
    assert np.array_equal(store.labels, classes)
    with pytest.raises(StoreError, match="cmr store"):
        store.signals


def test_store_pickles_without_its_arrays(store_dir):
    store = Store(store_dir)
    store.signals  # open the memmap
    store.read(0)  # open the descriptor
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 20_000  # the arrays are not in it
    assert np.array_equal(clone.read(2, 0, 8), store.read(2, 0, 8))


# ----------------------------------------------------------------------------------------------
# Refusals: each is a StoreError (a ConfigError) whose message says what and how


def corrupt(root, name, content):
    path = os.path.join(root, name)
    if isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        with open(path, "w") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))


def refused(root, *words):
    with pytest.raises(StoreError) as err:
        Store(root)
    assert isinstance(err.value, ConfigError)
    for word in words:
        assert word in str(err.value), str(err.value)
    return str(err.value)


def test_refuses_n_mismatch(store_dir):
    corrupt(store_dir, "labels.npy", np.zeros((N - 1, 3), dtype=np.float32))
    refused(store_dir, "labels.npy", f"N={N - 1}", f"N={N}")


def test_refuses_record_id_count_mismatch(store_dir):
    corrupt(store_dir, "record_ids.txt", "".join(f"x{i}\n" for i in range(N + 2)))
    refused(store_dir, f"{N + 2} ids", f"N={N}")


def test_refuses_duplicate_ids(store_dir):
    corrupt(store_dir, "record_ids.txt", "".join(f"x{i % 7}\n" for i in range(N)))
    refused(store_dir, "duplicate", "x0", "unique")


@pytest.mark.parametrize("bad, words", [
    ({"train": [0, N], "val": [], "test": []}, [f"index {N}", "outside"]),
    ({"train": [0, -1], "val": [], "test": []}, ["index -1"]),
    ({"train": [0, 1.5], "val": [], "test": []}, ["integer"]),
    ({"train": [0, 1], "val": [1], "test": []}, ["'train' and 'val'", "disjoint"]),
    ({"train": [0, 1], "val": []}, ["lacks", "test"]),
    ({"train": [0, 0], "val": [], "test": []}, ["more than once"]),
])
def test_refuses_bad_splits(store_dir, bad, words):
    corrupt(store_dir, "splits.json", bad)
    refused(store_dir, *words)


def test_refuses_lead_count_mismatch(store_dir):
    info = json.load(open(os.path.join(store_dir, "info.json")))
    corrupt(store_dir, "info.json", dict(info, lead_names=["I", "II"]))
    refused(store_dir, "12 leads", "lead_names", "2")


@pytest.mark.parametrize("change, words", [
    ({"task_type": "multiclass"}, ["multiclass", "(N,)"]),
    ({"task_type": None}, ["task_type is null"]),
    ({"task_type": "segmentation"}, ["task_type", "segmentation"]),
    ({"label_names": ["a", "b"]}, ["(N, 2)"]),
    ({"units": "uV"}, ["millivolts", "uV"]),
    ({"sampling_rate": 0}, ["sampling_rate"]),
    ({"format_version": 2}, ["format_version"]),
])
def test_refuses_inconsistent_info(store_dir, change, words):
    info = json.load(open(os.path.join(store_dir, "info.json")))
    corrupt(store_dir, "info.json", dict(info, **change))
    refused(store_dir, *words)


def test_refuses_missing_info_key_and_missing_file(store_dir):
    info = json.load(open(os.path.join(store_dir, "info.json")))
    del info["sampling_rate"]
    corrupt(store_dir, "info.json", info)
    refused(store_dir, "sampling_rate")
    os.remove(os.path.join(store_dir, "record_ids.txt"))
    corrupt(store_dir, "info.json", dict(info, sampling_rate=100))
    refused(store_dir, "missing record_ids.txt", "rebuild")


def test_refuses_non_binary_multilabel(store_dir):
    corrupt(store_dir, "labels.npy", np.full((N, 3), 0.5, dtype=np.float32))
    refused(store_dir, "0/1")


def test_refuses_missing_folder(tmp_path):
    msg = refused(tmp_path / "nope", "does not exist")
    assert "python -m datasets.demo" in msg


def test_unknown_split_lists_the_available_ones(store_dir):
    with pytest.raises(StoreError, match=r"no split 'tets'.*'test'"):
        Store(store_dir).split("tets")


def test_check_compatible(store_dir):
    store = Store(store_dir)
    store.check_compatible(lead_names=list(STANDARD_LEADS), sampling_rate=100.0)
    with pytest.raises(StoreError) as err:
        store.check_compatible(sampling_rate=500)
    assert "100 Hz" in str(err.value) and "500 Hz" in str(err.value)
    with pytest.raises(StoreError) as err:
        store.check_compatible(lead_names=["I", "II", "V1"])
    assert "['I', 'II', 'V1']" in str(err.value) and "'aVR'" in str(err.value)
    with pytest.raises(StoreError, match="expects"):  # same names, other order
        store.check_compatible(lead_names=list(reversed(STANDARD_LEADS)))


# ----------------------------------------------------------------------------------------------
# Atomic writes


def test_exception_inside_writer_leaves_no_store(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s", N, (12, T), np.float16) as writer:
            writer.write_batch(0, np.zeros((5, 12, T)))
            raise RuntimeError("interrupted")
    assert not (tmp_path / "s").exists() and no_leftovers(tmp_path)


def test_writer_dropped_without_finish_leaves_nothing(tmp_path):
    writer = StoreWriter(tmp_path / "s", N, (12, T), np.float16)
    writer[0] = np.ones((12, T))
    del writer
    assert os.listdir(tmp_path) == []


def test_inconsistent_data_is_never_published(tmp_path):
    signals, labels, ids = toy()
    with pytest.raises(StoreError, match="duplicate"):
        write_store(tmp_path / "s", signals=signals, labels=labels, record_ids=["same"] * N,
                    splits=make_splits(N), info=ecg_info())
    with pytest.raises(StoreError, match="12 leads"):
        write_store(tmp_path / "s", signals=signals, labels=labels, record_ids=ids,
                    splits=make_splits(N), info=ecg_info(lead_names=["I"]))
    assert os.listdir(tmp_path) == []


def test_writer_refuses_a_dtype_before_writing(tmp_path):
    with pytest.raises(StoreError, match=r"int16.*float16"):
        StoreWriter(tmp_path / "s", N, (12, T), np.int16)
    assert os.listdir(tmp_path) == []


def test_refuses_overwrite_unless_asked(store_dir):
    signals, labels, ids = toy(seed=5)
    with pytest.raises(StoreError, match="already exists.*overwrite"):
        write_store(store_dir, signals=signals, labels=labels, record_ids=ids, splits=make_splits(N), info=ecg_info())
    write_store(store_dir, signals=signals, labels=labels, record_ids=ids, splits=make_splits(N), info=ecg_info(),
                overwrite=True)
    assert np.array_equal(Store(store_dir).signals, signals)
    assert no_leftovers(os.path.dirname(store_dir))


# ----------------------------------------------------------------------------------------------
# Splits


def test_make_splits_disjoint_complete_and_deterministic():
    labels = np.zeros((1000, 4), dtype=np.float32)
    labels[np.arange(1000), np.arange(1000) % 4] = 1
    splits = make_splits(1000, labels, val=0.1, test=0.2, folds=5, train_subsample=0.1, seed=3)
    train, val, test = (set(splits[k]) for k in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    assert not (train & val or train & test or val & test) and train | val | test == set(range(1000))
    assert set(splits["train_subsample"]) <= train and len(splits["train_subsample"]) == 70
    folds = [set(splits[f"fold_{k}_val"]) for k in range(1, 6)]
    assert set().union(*folds) == train and sum(map(len, folds)) == len(train)
    for k in range(1, 6):
        assert set(splits[f"fold_{k}_train"]) == train - folds[k - 1]
    for name in ("val", "test", "fold_1_val"):  # stratified: each class a quarter
        assert np.bincount(labels[splits[name]].argmax(1), minlength=4).tolist() == [len(splits[name]) // 4] * 4
    assert make_splits(1000, labels, test=0.2, seed=3) == make_splits(1000, labels, test=0.2, seed=3)
    assert make_splits(1000, labels, seed=3)["val"] != make_splits(1000, labels, seed=4)["val"]
    assert make_splits(50)["test"] == make_splits(50)["test"]  # unlabelled works too


def test_make_splits_by_group_keep_each_group_in_one_split_fold_and_subsample():
    groups = [f"patient{i // 4}" for i in range(400)]  # 100 patients, 4 records each
    labels = np.arange(400) // 4 % 2
    splits = make_splits(400, labels, groups=groups, val=0.1, test=0.2, folds=3, train_subsample=0.5, seed=1)

    def patients(name):
        return {groups[i] for i in splits[name]}
    assert (len(patients("train")), len(patients("val")), len(patients("test"))) == (70, 10, 20)
    assert not (patients("train") & patients("val") or patients("train") & patients("test")
                or patients("val") & patients("test"))
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(400))
    for k in (1, 2, 3):
        assert not patients(f"fold_{k}_train") & patients(f"fold_{k}_val")
    assert len(splits["train_subsample"]) == 4 * 35  # 35 whole patients
    assert patients("train_subsample") <= patients("train")


def test_make_splits_keep_official_splits_and_draw_the_ones_the_source_lacks():
    official = ["train"] * 80 + ["val"] * 10 + ["test"] * 10
    splits = make_splits(100, official=official, folds=2, seed=0)
    assert splits["train"] == list(range(80)) and splits["val"] == list(range(80, 90))
    assert splits["test"] == list(range(90, 100))
    # ACDC: an official test set only; val is drawn from the others, grouped
    official = [None] * 100 + ["test"] * 50
    groups = [f"p{i // 2}" for i in range(150)]
    splits = make_splits(150, groups=groups, official=official, val=0.1, folds=0, train_subsample=0)
    assert splits["test"] == list(range(100, 150))
    assert len(splits["val"]) == 10 and len(splits["train"]) == 90
    assert not {groups[i] for i in splits["val"]} & {groups[i] for i in splits["train"]}
    # a record whose official split is none of the three is in none
    splits = make_splits(4, official=["train", "exclude", "val", "test"], folds=0, train_subsample=0)
    assert (splits["train"], splits["val"], splits["test"]) == ([0], [2], [3])


def test_stores_record_patient_ids_and_content_hashes_that_find_identical_records(tmp_path):
    signals, labels, ids = toy()
    signals[5] = signals[2]
    root = write_store(tmp_path / "toy", signals=signals, labels=labels, record_ids=ids,
                       splits=make_splits(N, labels, folds=2), info=ecg_info(), dtype=np.float16,
                       patient_ids=[f"p{i // 2}" for i in range(N)])
    store = Store(root)
    assert store.patient_ids == [f"p{i // 2}" for i in range(N)]
    hashes = store.content_hashes()
    assert hashes[5] == hashes[2] and len(set(hashes)) == N - 1
    (root / "content_hashes.txt").unlink()  # a store without the file: hashed from its array, alike
    assert Store(root).content_hashes() == hashes
    (root / "patient_ids.txt").write_text("p0\n")
    with pytest.raises(StoreError, match="patient_ids.txt has 1 lines"):
        Store(root)


def test_store_contract_is_its_info_contract_over_what_every_store_states(store_dir):
    store = Store(store_dir)
    assert store.contract == {"modality": "ecg", "units": "mV", "sampling_rate": 100.0,
                              "channel_names": list(STANDARD_LEADS)}
    info = json.loads((store_dir / "info.json").read_text())
    info["contract"] = {"zscore": "group", "source": "ptbxl"}
    (store_dir / "info.json").write_text(json.dumps(info))
    assert Store(store_dir).contract["zscore"] == "group" and Store(store_dir).contract["sampling_rate"] == 100.0
