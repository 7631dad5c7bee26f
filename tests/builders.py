"""Tiny data and overrides shared by the end-to-end tests (built in temp dirs, nothing downloaded)."""
import numpy as np

from datasets.store import STANDARD_LEADS, make_splits, write_store

T, LEADS = 400, STANDARD_LEADS

# a fine-tuning run that takes seconds: tiny classifier, 200-sample crops of tiny_store records
FINETUNE_TINY = ["model.size=pluto", "model.patch_size=[1,50]", "data.time_steps=200", "data.batch_size=8",
                 "data.num_workers=0", "data.augment=false", "trainer.enable_progress_bar=false",
                 "extras.print_config=false", "model.optim.warmup_epochs=1", "model.optim.lr=1e-3",
                 "model.pretrained_weights=null", "data.train_fraction=1.0"]

# a pretraining run on a 96-record demo store that takes seconds
PRETRAIN_TINY = ["model.size=pluto", "model.patch_size=[1,50]", "data.time_steps=500", "data.batch_size=8",
                 "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2",
                 "model.optim.warmup_epochs=1", "extras.print_config=false"]


def finetune_overrides(data_dir, task_type="multiclass"):
    """Point the demo fine-tuning experiment at ``tiny_store(data_dir, task_type)``."""
    num = 2 if task_type == "regression" else 3
    return [f"paths.data_dir={data_dir}", f"modality.dataset_key=tiny_{task_type}", f"modality.task_type={task_type}",
            f"modality.num_classes={num}", "modality.sampling_rate=100", "~modality.build_demo", *FINETUNE_TINY]


def tiny_store(root, task_type, n=96, seed=0):
    """ECGs whose frequency encodes the class (multiclass / multilabel) or the target (regression)."""
    rng = np.random.default_rng(seed)
    t = np.arange(T) / 100.0
    if task_type == "regression":
        targets = rng.uniform(0.5, 3.0, size=(n, 2)).astype(np.float32)
        freq, labels, names = targets[:, 0], targets, ["freq", "amp"]
        amp = targets[:, 1]
    else:
        cls = rng.integers(0, 3, size=n)
        freq, amp, names = 1.0 + cls, np.ones(n), ["slow", "mid", "fast"]
        labels = cls if task_type == "multiclass" else np.eye(3, dtype=np.float32)[cls]
    signals = (amp[:, None, None] * np.sin(2 * np.pi * freq[:, None, None] * t[None, None, :])
               + 0.05 * rng.standard_normal((n, 12, T))).astype(np.float32)
    splits = make_splits(n, labels if task_type != "regression" else None, val=0.2, test=0.2, folds=2, seed=0)
    write_store(root / f"tiny_{task_type}", signals=signals, labels=labels,
                record_ids=[f"r{i}" for i in range(n)], splits=splits,
                info={"modality": "ecg", "task_type": task_type, "label_names": names, "sampling_rate": 100,
                      "lead_names": LEADS, "units": "mV", "provenance": "test", "synthetic": True})
