"""Does multimodal (ECG <-> CMR) pretraining help the ECG encoder? The paper's pipeline on the demo:
MAE -> MMCL -> fine-tuning with a fraction of the labels, against fine-tuning the MAE-only encoder,
over several fine-tuning seeds (the same labelled records each time). A benchmark, not a test.

    python bench/mmcl_gain.py [--fraction 0.1] [--finetune-epochs 10] [--seeds 0 1 2] [--work-dir DIR]

Runs in a work folder (a temp one unless --work-dir; nothing is written to the checkout), as a user:
`python main_pretrain.py` (the demo MAE; exports signal_encoder_demo.pth),
`python main_pretrain.py experiment=pre_training/cmr_demo` (the CMR SimCLR; image_encoder_demo.pth),
`python main_pretrain.py experiment=pre_training/mmcl_demo` (exports signal_encoder_mmcl_demo.pth),
then `python main_finetune.py model.pretrained_weights=<each> data.train_fraction=F seed=S` for each
seed. Prints the MMCL run's validation retrieval against chance, the test macro AUROC of every
fine-tuning run, and the mean and standard deviation per encoder.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretraining_gain import run  # noqa: E402  (one way to run a main and fail loudly)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fraction", type=float, default=0.1, help="fraction of the training labels")
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work-dir", help="reuse this folder (data, runs) instead of a temp one")
    args = ap.parse_args()

    work = args.work_dir or tempfile.mkdtemp(prefix="mmcl-gain-")
    data, logs = os.path.join(work, "data"), os.path.join(work, "logs")
    weights = os.path.join(data, "model_weights")
    common = [f"paths.data_dir={data}", "extras.print_config=false", "trainer.enable_progress_bar=false"]
    times = {}
    if not os.path.exists(os.path.join(weights, "signal_encoder_demo.pth")):
        times["MAE"] = run("main_pretrain.py", common + [f"hydra.run.dir={logs}/mae"])
    if not os.path.exists(os.path.join(weights, "image_encoder_demo.pth")):
        times["CMR SimCLR"] = run("main_pretrain.py", common + ["experiment=pre_training/cmr_demo",
                                                                f"hydra.run.dir={logs}/simclr"])
    if not os.path.exists(os.path.join(weights, "signal_encoder_mmcl_demo.pth")):
        times["MMCL"] = run("main_pretrain.py", common + ["experiment=pre_training/mmcl_demo",
                                                          f"hydra.run.dir={logs}/mmcl"])
    results: dict = {"MAE": [], "MAE -> MMCL": []}
    for seed in args.seeds:
        for name, file in (("MAE", "signal_encoder_demo.pth"), ("MAE -> MMCL", "signal_encoder_mmcl_demo.pth")):
            run_dir = os.path.join(logs, f"finetune_{file[:-4]}_{seed}")
            if not os.path.exists(os.path.join(run_dir, "metrics.json")):
                run("main_finetune.py", common + [
                    f"hydra.run.dir={run_dir}", f"model.pretrained_weights={os.path.join(weights, file)}",
                    "model.pretrained_optional=false", f"data.train_fraction={args.fraction}", f"seed={seed}",
                    f"trainer.max_epochs={args.finetune_epochs}", "callbacks.early_stopping.patience=100"])
            with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
                results[name].append(json.load(f)["test"]["auroc_macro"])

    mmcl_metrics = os.path.join(logs, "mmcl", "metrics.json")
    if os.path.exists(mmcl_metrics):
        with open(mmcl_metrics, encoding="utf-8") as f:
            m = json.load(f)
        print(f"MMCL demo (last epoch, {m.get('val/samples', 0):.0f} val pairs): ECG->CMR top-1 "
              f"{m['val/ecg_to_cmr_top1']:.3f} top-5 {m['val/ecg_to_cmr_top5']:.3f}, CMR->ECG top-1 "
              f"{m['val/cmr_to_ecg_top1']:.3f} top-5 {m['val/cmr_to_ecg_top5']:.3f}; chance top-1 "
              f"{m['val/chance_top1']:.4f} top-5 {m['val/chance_top5']:.4f}")
    if times:
        print("pretraining times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"demo ECG fine-tuning, {args.fraction:.0%} of the training labels, {args.finetune_epochs} epochs, "
          f"test macro AUROC per seed {args.seeds}:")
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {name:<12} " + "  ".join(f"{v:.4f}" for v in values) +
              f"   mean {statistics.mean(values):.4f} +- {spread:.4f}")
    gain = [b - a for a, b in zip(results["MAE"], results["MAE -> MMCL"])]
    print("  gain per seed " + "  ".join(f"{g:+.4f}" for g in gain) + f"   mean {statistics.mean(gain):+.4f}")
    print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
