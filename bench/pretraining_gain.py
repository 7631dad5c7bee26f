"""Does MAE pretraining help? Fine-tune the demo classifier with a fraction of the training labels
from the demo MAE encoder and from scratch, with the same seeds, and compare test macro AUROC.

    python bench/pretraining_gain.py [--fraction 0.1] [--finetune-epochs N] [--seeds 0 1 2]
        [--work-dir DIR] [--keep] [-- key=value ...]

Runs, in a temp folder (nothing is written to the checkout): the demo data build, the demo
pretraining (`python main_pretrain.py`, MAE-pluto; its encoder is exported to
<data>/model_weights/signal_encoder_demo.pth), then two fine-tuning runs that differ only in
`model.pretrained_weights`, for each fine-tuning seed (the one pretraining uses the first); the
`key=value` overrides go to both fine-tuning runs (e.g. `model.global_pool=attention_pool`). Each
fine-tuning run selects its best epoch on the validation macro AUROC and reports the test split;
with several seeds the mean and standard deviation of the gain follow. A benchmark, not a test: it
prints the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script: str, overrides: list[str]) -> float:
    start = time.time()
    cmd = [sys.executable, os.path.join(REPO, script), *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{script} failed ({proc.returncode}): {' '.join(overrides)}")
    return time.time() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fraction", type=float, default=0.1, help="fraction of the training labels")
    ap.add_argument("--finetune-epochs", type=int, help="default: the demo fine-tuning's own")
    ap.add_argument("--pretrain-epochs", type=int, help="default: the demo pretraining's own")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds")
    ap.add_argument("--work-dir", help="reuse this folder (data, runs) instead of a temp one")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides of the fine-tuning runs")
    args = ap.parse_args()

    work = args.work_dir or tempfile.mkdtemp(prefix="pretraining-gain-")
    data, logs = os.path.join(work, "data"), os.path.join(work, "logs")
    common = [f"paths.data_dir={data}", "extras.print_config=false", "trainer.enable_progress_bar=false"]
    try:
        encoder = os.path.join(data, "model_weights", "signal_encoder_demo.pth")
        t_pre = 0.0
        if not os.path.exists(encoder):
            epochs = [f"trainer.max_epochs={args.pretrain_epochs}"] if args.pretrain_epochs else []
            t_pre = run("main_pretrain.py", common + [f"seed={args.seeds[0]}", f"hydra.run.dir={logs}/pretrain",
                                                      *epochs])
        results = {}
        for seed, (name, weights) in ((s, arm) for s in args.seeds
                                      for arm in (("pretrained", encoder), ("scratch", "null"))):
            run_dir = os.path.join(logs, f"finetune_{name}_seed{seed}")
            seconds = run("main_finetune.py", common + [f"seed={seed}",
                f"hydra.run.dir={run_dir}", f"model.pretrained_weights={weights}", "model.pretrained_optional=false",
                f"data.train_fraction={args.fraction}",
                *([f"trainer.max_epochs={args.finetune_epochs}"] if args.finetune_epochs else []),
                "callbacks.early_stopping.patience=100", *args.overrides])
            with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
                results[(seed, name)] = (json.load(f), seconds)
    finally:
        if not (args.keep or args.work_dir):
            shutil.rmtree(work, ignore_errors=True)

    epochs = args.finetune_epochs or "the demo's"
    print(f"demo ECGs, {args.fraction:.0%} of the training labels, {epochs} fine-tuning epochs, "
          f"seeds {', '.join(map(str, args.seeds))}" +
          (f"; the demo pretraining took {t_pre:.0f} s" if t_pre else ""))
    print(f"{'seed':>4} {'encoder':<12} {'train recs':>10} {'best ep':>8} {'val AUROC':>10} {'test AUROC':>11} "
          f"{'test AUPRC':>11} {'time s':>7}")
    for (seed, name), (res, seconds) in results.items():
        print(f"{seed:>4} {name:<12} {res['train_records']:>10} {res['best_epoch']:>8} "
              f"{res['val']['auroc_macro']:>10.4f} {res['test']['auroc_macro']:>11.4f} "
              f"{res['test']['auprc_macro']:>11.4f} {seconds:>7.0f}")
    test = {key: res["test"]["auroc_macro"] for key, (res, _) in results.items()}
    gains = np.array([test[(seed, "pretrained")] - test[(seed, "scratch")] for seed in args.seeds])
    for name in ("pretrained", "scratch"):
        values = np.array([test[(seed, name)] for seed in args.seeds])
        print(f"test macro AUROC {name:<10} mean {values.mean():.4f}  std {values.std(ddof=min(1, len(values) - 1)):.4f}")
    print(f"test macro AUROC gain from pretraining: mean {gains.mean():+.4f}  std "
          f"{gains.std(ddof=min(1, len(gains) - 1)):.4f}  (per seed: {', '.join(f'{g:+.4f}' for g in gains)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
