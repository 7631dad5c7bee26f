"""Are the ECG saliency maps faithful? A deletion test on the demo data.

    python bench/saliency_faithfulness.py [--data-dir data] [--epochs 5] [--steps 16] [--fraction 0.1]

Trains an ECG classifier from scratch on the demo data (half the training labels, ``main_finetune.py``),
loads its best checkpoint the way ``main_artifacts.py`` does, and for every test ECG and every ECG
method (integrated gradients, attention rollout, last-block attention) zeroes the ``fraction`` of
samples the map ranks highest, and, separately, a random ``fraction``. The score is the classifier's
probability of ``--target`` (BBB: a wide, notched QRS, a feature localised in time in every lead).
A faithful map lowers it more than the random deletion does. Prints, per method, the mean drop over
the whole test split and over the test ECGs that have the class, with the share of ECGs where the
top-ranked deletion hurt more than the random one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
import main_artifacts  # noqa: E402
import main_finetune  # noqa: E402
from datasets import build_data  # noqa: E402
from models.saliency import deletion_test  # noqa: E402
from util.checkpoint import load_checkpoint  # noqa: E402
from util.cli import run_cli  # noqa: E402
from util.config import Config, load_yaml  # noqa: E402


def train(data_dir: str, run_dir: str, epochs: int, fraction: float, seed: int) -> str:
    """A demo classifier from scratch on ``fraction`` of the training labels; returns its best checkpoint."""
    argv = [f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", f"paths.log_dir={run_dir}/logs",
            "model.pretrained_weights=null", f"data.train_fraction={fraction}", "data.batch_size=32",
            f"trainer.max_epochs={epochs}", "callbacks.early_stopping=null", "trainer.enable_progress_bar=false",
            "extras.print_config=false", f"seed={seed}", "tags=[bench]"]
    if run_cli(main_finetune.main, "finetune", argv=argv, prog="main_finetune.py") != 0:
        raise SystemExit("fine-tuning failed; see the log above")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    per_class = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in metrics["test"].items() if k.startswith("auroc/"))
    print(f"classifier: best epoch {metrics['best_epoch']}, test macro AUROC {metrics['test']['auroc_macro']:.3f} "
          f"({per_class})")
    return metrics["checkpoint"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="where the demo data is (built there when missing)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-fraction", type=float, default=0.5, help="of the demo's training labels")
    parser.add_argument("--steps", type=int, default=16, help="integrated-gradients steps")
    parser.add_argument("--fraction", type=float, default=0.1, help="fraction of each ECG's samples deleted")
    parser.add_argument("--target", default="BBB", help="the class whose probability is tested")
    parser.add_argument("--checkpoint", help="a demo classifier checkpoint to test instead of training one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or train(os.path.abspath(args.data_dir), os.path.join(tmp, "finetune"), args.epochs,
                                        args.train_fraction, args.seed)
        ckpt = load_checkpoint(path)
        data_cfg = Config(load_yaml(ckpt["config"])["data"], _node_path="data")
        data = build_data(data_cfg, ["test"], seed=args.seed, training=False)
        rt = engine.Runtime(torch.device("cpu"), engine.resolve_precision("32", torch.device("cpu")))
        objective = main_artifacts.load_model(Config({"model": None}), path, ckpt, data, rt).eval()
        names = [str(n) for n in objective.class_names]
        if args.target not in names:
            raise SystemExit(f"--target {args.target} is not a class of the classifier ({', '.join(names)})")
        target = names.index(args.target)

        def score(x: torch.Tensor) -> torch.Tensor:
            return objective.net(x).float().sigmoid()[:, target]

        methods = objective.saliency_methods
        drops = {m: {"top": [], "random": []} for m in methods}
        has_class, seconds = [], {m: 0.0 for m in methods}
        generator = torch.Generator().manual_seed(args.seed)
        for batch in data.loaders["test"]:
            label = batch["label"]
            has_class.append((label[:, target] > 0.5).numpy())
            for method in methods:
                t0 = time.perf_counter()
                (smap,) = objective.explain(batch, method, target, steps=args.steps)
                seconds[method] += time.perf_counter() - t0
                result = deletion_test(score, batch[objective.field], smap.maps, fraction=args.fraction,
                                       generator=generator)
                drops[method]["top"].append((result["original"] - result["top"]).numpy())
                drops[method]["random"].append((result["original"] - result["random"]).numpy())
    has_class = np.concatenate(has_class)
    n = len(has_class)
    print(f"\ndeletion test: {n} test ECGs ({int(has_class.sum())} with {args.target}); the {args.fraction:.0%} "
          f"of samples ranked highest vs a random {args.fraction:.0%} zeroed; drop of P({args.target})")
    print(f"{'method':<22}{'top (all)':>11}{'random (all)':>14}{'top (' + args.target + ')':>12}"
          f"{'random (' + args.target + ')':>15}{'top > random':>14}{'s / ECG':>9}")
    report = {"records": n, "with_class": int(has_class.sum()), "target": args.target, "fraction": args.fraction,
              "steps": args.steps, "checkpoint": path, "methods": {}}
    for method in methods:
        top, rand = (np.concatenate(drops[method][k]) for k in ("top", "random"))
        row = {"top_all": float(top.mean()), "random_all": float(rand.mean()),
               "top_class": float(top[has_class].mean()), "random_class": float(rand[has_class].mean()),
               "share_top_above_random": float((top > rand).mean()), "seconds_per_ecg": seconds[method] / n}
        report["methods"][method] = row
        print(f"{method:<22}{row['top_all']:>11.4f}{row['random_all']:>14.4f}{row['top_class']:>12.4f}"
              f"{row['random_class']:>15.4f}{row['share_top_above_random']:>14.1%}{row['seconds_per_ecg']:>9.3f}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
