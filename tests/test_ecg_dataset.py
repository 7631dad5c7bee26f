"""ECGDataset crops and labels, per-sample determinism, the epoch sampler and the loaders that the one
data entry point (datasets.build_data) builds."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler

from datasets import build_data
from datasets.ecg import ECGDataset
from datasets.loading import EpochIndexSampler, train_subset
from datasets.store import STANDARD_LEADS, Store, StoreError, make_splits, write_store

N, T, STEPS = 32, 200, 50


def make_store(root, task_type="multilabel", n=N):
    rng = np.random.default_rng(0)
    signals = rng.standard_normal((n, 12, T)).astype(np.float32)
    labels, names = {
        "multilabel": ((rng.uniform(size=(n, 3)) < 0.5).astype(np.float32), ["a", "b", "c"]),
        "multiclass": (np.arange(n) % 3, ["a", "b", "c"]),
        "regression": (rng.standard_normal(n).astype(np.float32), ["age"]),
        None: (None, []),
    }[task_type]
    info = dict(modality="ecg", task_type=task_type, label_names=names, sampling_rate=100,
                lead_names=list(STANDARD_LEADS), provenance="test", synthetic=True)
    splits = make_splits(n, folds=2, val=0.25, test=0.25, train_subsample=0.5)
    return write_store(root, signals=signals, labels=labels, record_ids=[f"r{i}" for i in range(n)],
                       splits=splits, info=info)


@pytest.fixture
def store(tmp_path):
    return Store(make_store(tmp_path / "toy"))


def crop_start(full, x):
    """The start s with x == full[:, s:s + len]; asserts there is exactly one."""
    length = x.shape[-1]
    starts = [s for s in range(full.shape[-1] - length + 1) if np.array_equal(full[:, s:s + length], x)]
    assert len(starts) == 1
    return starts[0]


def add_noise(x, generator):
    return x + torch.randn(x.shape, generator=generator)


# ----------------------------------------------------------------------------------------------
# Dataset


def test_train_crops_in_bounds_and_eval_starts_at_zero(store):
    train = ECGDataset(store, "train", time_steps=STEPS, train=True)
    evaluation = ECGDataset(store, "train", time_steps=STEPS, train=False)
    starts = set()
    for i in range(len(train)):
        record = train.indices[i]
        x = train[(i, 0)]["ecg"]
        assert x.shape == (1, 12, STEPS) and x.dtype == torch.float32
        starts.add(crop_start(store.signals[record], x[0].numpy()))
        x_eval = evaluation[i]["ecg"]
        assert np.array_equal(x_eval[0].numpy(), store.signals[record][:, :STEPS])
    assert min(starts) >= 0 and max(starts) <= T - STEPS and len(starts) > 5


def test_lead_selection_by_name_and_index(store):
    by_name = ECGDataset(store, "val", time_steps=STEPS, leads=["V1", "I", "aVF"], train=False)
    by_index = ECGDataset(store, "val", time_steps=STEPS, leads=[6, 0, 5], train=False)
    x = by_name[0]["ecg"]
    assert x.shape == (1, 3, STEPS) and by_name.lead_names == ["V1", "I", "aVF"]
    assert np.array_equal(x[0].numpy(), store.signals[by_name.indices[0]][[6, 0, 5], :STEPS])
    assert torch.equal(x, by_index[0]["ecg"])
    with pytest.raises(StoreError, match=r"lead 'V7' is not in store.*'V6'"):
        ECGDataset(store, "val", time_steps=STEPS, leads=["V7"], train=False)


def test_refuses_time_steps_longer_than_records(store):
    with pytest.raises(StoreError, match=f"time_steps=500.*T={T}"):
        ECGDataset(store, "train", time_steps=500, train=True)
    assert ECGDataset(store, "train", time_steps=None, train=False)[0]["ecg"].shape == (1, 12, T)


def test_same_seed_epoch_index_same_sample_and_epochs_differ(store):
    a = ECGDataset(store, "train", time_steps=STEPS, train=True, transform=add_noise, seed=7)
    b = ECGDataset(store, "train", time_steps=STEPS, train=True, transform=add_noise, seed=7)
    for i in range(5):
        assert torch.equal(a[(i, 3)]["ecg"], b[(i, 3)]["ecg"]) and a[(i, 3)]["key"] == b[(i, 3)]["key"]
    assert all(not torch.equal(a[(i, 0)]["ecg"], a[(i, 1)]["ecg"]) for i in range(5))
    assert not torch.equal(a[(0, 0)]["ecg"], ECGDataset(store, "train", time_steps=STEPS, train=True,
                                                        transform=add_noise, seed=8)[(0, 0)]["ecg"])
    a.set_epoch(3)
    assert torch.equal(a[2]["ecg"], b[(2, 3)]["ecg"])  # a plain index uses the dataset's epoch
    assert a[2]["index"] == 2


def test_transform_gets_leads_by_time_and_a_generator(store):
    seen = []

    def transform(x, generator):
        seen.append((tuple(x.shape), x.dtype, isinstance(generator, torch.Generator)))
        return x * 2

    ds = ECGDataset(store, "val", time_steps=STEPS, leads=["I", "II"], train=True, transform=transform)
    x = ds[0]["ecg"]
    assert seen == [((2, STEPS), torch.float32, True)] and x.shape == (1, 2, STEPS)


def test_normalize_zscores_each_crop_per_lead_group_before_the_transform(store):
    seen = []
    ds = ECGDataset(store, "train", time_steps=STEPS, leads=["V1", "I", "II", "V2"], train=True,
                    normalize="group", transform=lambda x, g: seen.append(x.clone()) or x)
    x = ds[0]["ecg"][0].double()
    raw = ECGDataset(store, "train", time_steps=STEPS, leads=["V1", "I", "II", "V2"], train=True)[0]["ecg"][0]
    assert torch.equal(seen[0], x.float())
    limb, chest = x[[1, 2]], x[[0, 3]]  # grouped by name, whatever the order asked for
    for group in (limb, chest):
        assert abs(float(group.mean())) < 1e-5 and float(group.std(unbiased=False)) == pytest.approx(1, abs=1e-4)
    assert float(x[1].std()) != pytest.approx(1, abs=1e-3)  # one standard deviation per group, not per lead
    # the same crop: only the scale and offset of each group change
    ratio = (x[1] - x[1, 0]) / (raw[1] - raw[1, 0]).double()
    assert torch.allclose(ratio[1:], ratio[1:2].expand(STEPS - 1), rtol=1e-3)
    per_lead = ECGDataset(store, "train", time_steps=STEPS, train=True, normalize="lead")[0]["ecg"][0]
    assert torch.allclose(per_lead.std(dim=1, unbiased=False), torch.ones(12), atol=1e-4)


def test_normalize_is_part_of_the_contract_and_makes_the_units_standard_deviations(store):
    infos = {mode: build_data(data_cfg(store.root, normalize=mode), ("train",), seed=0).info
             for mode in ("none", "group")}
    assert infos["none"].contract["normalize"] == "none" and infos["none"].inputs["ecg"].units == "mV"
    assert infos["group"].contract["normalize"] == "group" and infos["group"].inputs["ecg"].units == "SD"
    from util import contract
    assert contract.mismatches(infos["group"].contract, infos["none"].contract) == [
        "normalize: 'group' (trained) vs 'none' (this data)"]


@pytest.mark.parametrize("task_type, dtype, shape", [
    ("multilabel", torch.float32, (3,)), ("multiclass", torch.int64, ()), ("regression", torch.float32, ()),
    (None, torch.float32, (0,)),
])
def test_labels(tmp_path, task_type, dtype, shape):
    store = Store(make_store(tmp_path / "s", task_type))
    ds = ECGDataset(store, "test", time_steps=STEPS, train=False)
    y = ds[1]["label"]
    assert y.dtype == dtype and tuple(y.shape) == shape
    if task_type is not None:
        assert np.allclose(y.numpy(), store.labels[ds.indices[1]])


def test_dataset_pickles_without_the_signals(store):
    ds = ECGDataset(store, "train", time_steps=STEPS, train=True)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 20_000
    assert torch.equal(clone[(3, 1)]["ecg"], ds[(3, 1)]["ecg"])


# ----------------------------------------------------------------------------------------------
# Sampler and loaders


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch():
    sampler = EpochIndexSampler(RandomSampler(range(20)), seed=5)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert {e for _, e in first} == {0} and {e for _, e in second} == {1}
    assert sorted(i for i, _ in second) == list(range(20)) and first != second
    fresh = EpochIndexSampler(RandomSampler(range(20)), seed=5)
    fresh.set_epoch(1)
    assert list(fresh) == second


def data_cfg(root, **kw):
    """Every key of configs/data/ecg.yaml (no code defaults), augmentations off unless asked."""
    cfg = dict(kind="ecg", data_root=str(root.parent), dataset_key=root.name, build_demo=False, batch_size=4,
               num_workers=0, pin_memory=False, persistent_workers=False, drop_last=True, use_train_subsample=False,
               fold=None, train_fraction=1.0, subset_seed=0, nonfinite="error", contract_mismatch="error",
               time_steps=STEPS,
               input_electrodes=None, expected_sampling_rate=None, expected_leads=None, normalize="none",
               augment=False, augment_device="cpu",
               ft_surr_phase_noise=0.1, ft_surr_p=0.5, jitter_sigma=0.25, jitter_mode="multiplicative",
               rescaling_sigma=0.5, time_flip_p=0.0, sign_flip_p=0.0)
    cfg.update(kw)
    return cfg


def build_ecg_loaders(cfg, splits=("train", "val"), seed=0, world_size=1, rank=0):
    return build_data(cfg, splits, seed=seed, world_size=world_size, rank=rank).loaders


def epoch_batches(loader, epoch):
    loader.epoch_sampler.set_epoch(epoch)
    return [(b["ecg"].clone(), b["label"].clone()) for b in loader]


def same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(batches_a, batches_b))


def test_loaders_identical_with_0_and_2_workers_and_after_resume(store):
    root = store.root
    plain = build_ecg_loaders(data_cfg(root, augment=True), seed=1)["train"]
    workers = build_ecg_loaders(data_cfg(root, augment=True, num_workers=2, persistent_workers=True), seed=1)["train"]
    straight = [epoch_batches(plain, e) for e in range(3)]
    assert same(straight[0], epoch_batches(workers, 0)) and same(straight[2], epoch_batches(workers, 2))
    assert not same(straight[0], straight[1])
    resumed = build_ecg_loaders(data_cfg(root, augment=True), seed=1)["train"]
    assert same(straight[2], epoch_batches(resumed, 2))  # a fresh process resuming at epoch 2
    x, y = straight[0][0]
    assert x.shape == (4, 1, 12, STEPS) and y.shape == (4, 3)


def test_loader_splits_folds_and_subsample(store):
    loaders = build_ecg_loaders(data_cfg(store.root), splits=("train", "val", "test"))
    assert [len(loaders[k].dataset) for k in ("train", "val", "test")] == [16, 8, 8]
    assert [i for (i, _) in loaders["val"].epoch_sampler] == list(range(8))  # eval: in order
    assert loaders["train"].drop_last and not loaders["val"].drop_last
    fold = build_ecg_loaders(data_cfg(store.root, fold=2))
    assert np.array_equal(fold["train"].dataset.indices, store.split("fold_2_train"))
    assert np.array_equal(fold["val"].dataset.indices, store.split("fold_2_val"))
    sub = build_ecg_loaders(data_cfg(store.root, use_train_subsample=True, input_electrodes=["II", "V1"]))
    assert np.array_equal(sub["train"].dataset.indices, store.split("train_subsample"))
    assert next(iter(sub["val"]))["ecg"].shape == (4, 1, 2, STEPS)


def test_distributed_sampler_covers_every_index_once(store):
    seen = []
    for rank in range(2):
        loaders = build_ecg_loaders(data_cfg(store.root, drop_last=False), splits=("train", "val"), seed=3,
                                    world_size=2, rank=rank)
        for name, loader in loaders.items():
            loader.epoch_sampler.set_epoch(4)
            seen += [(name, i) for i, epoch in loader.epoch_sampler]
            assert {epoch for _, epoch in loader.epoch_sampler} == {4}
    for name, n in (("train", 16), ("val", 8)):
        assert sorted(i for split, i in seen if split == name) == list(range(n))


def test_loader_refusals(store, tmp_path):
    with pytest.raises(StoreError, match="python -m datasets.demo --data-dir"):
        build_ecg_loaders(data_cfg(tmp_path / "demo_ecg"))
    with pytest.raises(StoreError, match="write_store"):
        build_ecg_loaders(data_cfg(tmp_path / "mine"))
    with pytest.raises(StoreError, match="500 Hz"):
        build_ecg_loaders(data_cfg(store.root, expected_sampling_rate=500))
    with pytest.raises(StoreError, match="expects"):
        build_ecg_loaders(data_cfg(store.root, expected_leads=["I", "II"]))
    build_ecg_loaders(data_cfg(store.root, expected_sampling_rate=100, expected_leads=list(STANDARD_LEADS)))
    with pytest.raises(StoreError, match="no split 'fold_9_train'"):
        build_ecg_loaders(data_cfg(store.root, fold=9))
    with pytest.raises(StoreError, match="batch_size"):
        build_ecg_loaders(data_cfg(store.root, batch_size=64))
    with pytest.raises(StoreError, match="lacks time_steps"):
        build_ecg_loaders(data_cfg(store.root, time_steps=None))


def test_train_fraction_is_a_fixed_subset_independent_of_the_run_seed():
    records = np.arange(100, 200)
    a = train_subset(records, 0.1, seed=0)
    assert len(a) == 10 and set(a) <= set(records) and list(a) == sorted(a)
    assert (train_subset(records, 0.1, seed=0) == a).all()
    assert not (train_subset(records, 0.1, seed=1) == a).all()
    assert train_subset(records, 1.0) is records
    with pytest.raises(StoreError):
        train_subset(records, -0.5)
