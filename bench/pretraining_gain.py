"""Does MAE pretraining help? Fine-tune the demo classifier with a fraction of the training labels
from the demo MAE encoder and from scratch, with the same seeds, and compare test macro AUROC.

    python bench/pretraining_gain.py [--fraction 0.1] [--finetune-epochs 10] [--seed 0]
        [--work-dir DIR] [--keep]

Runs, in a temp folder (nothing is written to the checkout): the demo data build, the demo
pretraining (`python main_pretrain.py`, 4 epochs of MAE-pluto; its encoder is exported to
<data>/model_weights/signal_encoder_demo.pth), then two fine-tuning runs that differ only in
`model.pretrained_weights`. Each fine-tuning run selects its best epoch on the validation macro
AUROC and reports the test split. A benchmark, not a test: it prints the figures.
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
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", help="reuse this folder (data, runs) instead of a temp one")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()

    work = args.work_dir or tempfile.mkdtemp(prefix="pretraining-gain-")
    data, logs = os.path.join(work, "data"), os.path.join(work, "logs")
    common = [f"paths.data_dir={data}", "extras.print_config=false", "trainer.enable_progress_bar=false",
              f"seed={args.seed}"]
    try:
        encoder = os.path.join(data, "model_weights", "signal_encoder_demo.pth")
        t_pre = 0.0
        if not os.path.exists(encoder):
            t_pre = run("main_pretrain.py", common + [f"hydra.run.dir={logs}/pretrain",
                                                      f"trainer.max_epochs={args.pretrain_epochs}"])
        results = {}
        for name, weights in (("pretrained", encoder), ("scratch", "null")):
            run_dir = os.path.join(logs, f"finetune_{name}")
            seconds = run("main_finetune.py", common + [
                f"hydra.run.dir={run_dir}", f"model.pretrained_weights={weights}", "model.pretrained_optional=false",
                f"data.train_fraction={args.fraction}", f"trainer.max_epochs={args.finetune_epochs}",
                "callbacks.early_stopping.patience=100"])
            with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
                results[name] = (json.load(f), seconds)
    finally:
        if not (args.keep or args.work_dir):
            shutil.rmtree(work, ignore_errors=True)

    print(f"demo ECGs, {args.fraction:.0%} of the training labels, {args.finetune_epochs} fine-tuning epochs, "
          f"seed {args.seed}" + (f"; pretraining {args.pretrain_epochs} epochs took {t_pre:.0f} s" if t_pre else ""))
    print(f"{'encoder':<12} {'train recs':>10} {'best ep':>8} {'val AUROC':>10} {'test AUROC':>11} "
          f"{'test AUPRC':>11} {'time s':>7}")
    for name, (res, seconds) in results.items():
        print(f"{name:<12} {res['train_records']:>10} {res['best_epoch']:>8} {res['val']['auroc_macro']:>10.4f} "
              f"{res['test']['auroc_macro']:>11.4f} {res['test']['auprc_macro']:>11.4f} {seconds:>7.0f}")
    gain = results["pretrained"][0]["test"]["auroc_macro"] - results["scratch"][0]["test"]["auroc_macro"]
    print(f"test macro AUROC gain from pretraining: {gain:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
