"""Benchmark: does SimCLR pretraining make the CMR encoder's embeddings more informative than the same
encoder at initialisation? (a benchmark, not a test)

Runs the CMR demo pretraining as a user does,

    python main_pretrain.py experiment=pre_training/cmr_demo trainer.max_epochs=E ...

then embeds the plain (unaugmented) images of the demo CMR store's val and test splits with

- the pretrained encoder (the run's exported ``encoder.pth``, the selected epoch), and
- the same architecture at initialisation, for ``--init-seeds`` seeds,

and prints the kNN (leave-one-out, k 20) and logistic-regression probe (5-fold cross-validation)
macro AUROC of the demo labels on each split (``util.metrics.embedding_monitors``, the monitors that
SimCLR logs every validation). The test split is never used for checkpoint selection.

Run from the repository root:
    python bench/simclr_probe.py [--epochs 4] [--dir /tmp/simclr_bench] [--init-seeds 3] [override ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datasets.cmr import CMRDataset  # noqa: E402
from datasets.demo import ensure_demo  # noqa: E402
from datasets.store import Store  # noqa: E402
from models.resnet import ResNetEncoder  # noqa: E402
from util.metrics import embedding_monitors  # noqa: E402

IMG_SIZE, DEPTH = 64, 18  # the cmr_demo experiment's


@torch.no_grad()
def embed(encoder: torch.nn.Module, store: Store, split: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = CMRDataset(store, split, img_size=IMG_SIZE, train=False)
    encoder.eval()
    features, labels = [], []
    for start in range(0, len(dataset), 64):
        samples = [dataset[i] for i in range(start, min(start + 64, len(dataset)))]
        features.append(encoder(torch.stack([s["cmr"] for s in samples])).numpy())
        labels.append(torch.stack([s["label"] for s in samples]).numpy())
    return np.concatenate(features), np.concatenate(labels)


def monitors(encoder, store) -> dict:
    out = {}
    for split in ("val", "test"):
        x, y = embed(encoder, store, split)
        for k, v in embedding_monitors(store.task_type, x, y).items():
            out[f"{split}/{k}"] = v
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs (the demo's 4)")
    parser.add_argument("--dir", default="/tmp/simclr_bench", help="data and run folder")
    parser.add_argument("--init-seeds", type=int, default=3, help="initialisations to evaluate")
    parser.add_argument("overrides", nargs="*", help="more config overrides of the pretraining run")
    args = parser.parse_args()
    root = Path(args.dir)
    tag = "_".join([str(args.epochs), *args.overrides]).replace("/", "-").replace("=", "-")
    data, run = root / "data", root / f"run_{tag}"
    ensure_demo(str(data))
    store = Store(data / "demo_cmr")

    start = time.time()
    cmd = [sys.executable, str(REPO / "main_pretrain.py"), "experiment=pre_training/cmr_demo",
           f"trainer.max_epochs={args.epochs}", f"paths.data_dir={data}", f"paths.log_dir={root}/logs",
           f"hydra.run.dir={run}", "export_encoder=null", "trainer.enable_progress_bar=false",
           "extras.print_config=false", *args.overrides]
    if not (run / "encoder.pth").exists():
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    minutes = (time.time() - start) / 60

    results = {}
    for seed in range(args.init_seeds):
        torch.manual_seed(seed)
        results[f"init seed {seed}"] = monitors(ResNetEncoder(depth=DEPTH, in_chans=1), store)
    pretrained = ResNetEncoder(depth=DEPTH, in_chans=1)
    state = torch.load(run / "encoder.pth", weights_only=True)["model"]
    pretrained.load_state_dict(state)
    results["SimCLR"] = monitors(pretrained, store)

    keys = list(results["SimCLR"])
    print(f"SimCLR demo pretraining: {args.epochs} epochs {' '.join(args.overrides)} ({minutes:.1f} min incl. "
          f"start-up; run {run}), ResNet-{DEPTH} at {IMG_SIZE} x {IMG_SIZE}, demo CMR labels ({store.task_type})")
    print(f"{'encoder':<14}" + "".join(f"{k:>24}" for k in keys))
    for name, values in results.items():
        print(f"{name:<14}" + "".join(f"{values[k]:>24.4f}" for k in keys))
    init = {k: statistics.median(results[f"init seed {s}"][k] for s in range(args.init_seeds)) for k in keys}
    print(f"{'init median':<14}" + "".join(f"{init[k]:>24.4f}" for k in keys))
    print(f"{'gain':<14}" + "".join(f"{results['SimCLR'][k] - init[k]:>+24.4f}" for k in keys))
    (root / f"result_{tag}.json").write_text(json.dumps({"results": results, "init_median": init}, indent=2))


if __name__ == "__main__":
    main()
