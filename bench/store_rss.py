"""Benchmark: memory of the ECG loaders does not grow with the size of the store (not a test).

Builds ECG stores of --n (default 50,000) and --small-n (default 5,000) records of 12 x 5000
float16 (about 6 GB and 0.6 GB on disk) with StoreWriter in a temp dir, then, in a fresh process
per store, iterates --batches (200) batches of the train loader of datasets.build_data (batch 64, time_steps 2500,
2 workers, random crops) and reports:

    main at start      RSS of the main process before the first batch (mostly torch itself)
    main peak RSS      VmHWM of the main process
    main+workers RSS   the largest sampled sum of RSS over the main process and its workers
                       (counts pages shared between them, e.g. torch's, once per process)
    main+workers PSS   the same as PSS (shared pages split between processes), at the end
    build / iterate    seconds to write the store / to read the batches

Target: every figure < 1.5 GB and the same for both sizes. Uses psutil when installed, else /proc.

    python bench/store_rss.py [--n 50000] [--small-n 5000] [--batches 200] [--tmp-dir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

LEADS, LENGTH = 12, 5000
MiB = 2 ** 20


# ----------------------------------------------------------------------------------------------
# Memory readings


def _status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes (0 when it is gone)."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in open(f"/proc/{pid}/status"):
            key = line.split(":")[0]
            if key in out:
                out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _pss(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        kids = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                kids += [int(k) for k in open(f"/proc/{pid}/task/{task}/children").read().split()]
            except OSError:
                pass
        return kids


def _rss(pid: int) -> int:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        return _status(pid)["VmRSS"]
    except Exception:  # noqa: BLE001 - the worker just exited
        return 0


# ----------------------------------------------------------------------------------------------
# The two phases


def build(root: Path, n: int) -> float:
    """Write an n-record store of 12 x 5000 float16 at root (streaming); seconds taken."""
    import numpy as np

    from datasets.store import STANDARD_LEADS, StoreWriter, make_splits

    began = time.perf_counter()
    block = np.random.default_rng(0).standard_normal((256, LEADS, LENGTH)).astype(np.float16)
    with StoreWriter(root, n, (LEADS, LENGTH), np.float16) as writer:
        for start in range(0, n, len(block)):
            writer.write_batch(start, block[:min(len(block), n - start)])
        labels = np.zeros((n, 5), dtype=np.float32)
        writer.finish(labels=labels, record_ids=[f"r{i:07d}" for i in range(n)], splits=make_splits(n, folds=0),
                      info=dict(task_type="multilabel", label_names=list("abcde"), sampling_rate=500,
                                lead_names=list(STANDARD_LEADS), units="mV", provenance="bench/store_rss.py",
                                synthetic=True))
    return time.perf_counter() - began


def measure(root: Path, batches: int, batch_size: int, time_steps: int, workers: int) -> dict:
    """Iterate the train loader of the store at root; memory and time (run in a fresh process)."""
    import torch

    from datasets import build_data

    torch.set_num_threads(1)
    cfg = dict(kind="ecg", data_root=str(root.parent), dataset_key=root.name, build_demo=False, batch_size=batch_size,
               num_workers=workers, pin_memory=False, persistent_workers=True, drop_last=True,
               use_train_subsample=False, fold=None, train_fraction=1.0, subset_seed=0, nonfinite="error",
               time_steps=time_steps,
               input_electrodes=None, expected_sampling_rate=None, expected_leads=None, normalize="none", augment=False,
               augment_device="cpu", ft_surr_phase_noise=0.1, ft_surr_p=0.5, jitter_sigma=0.25,
               jitter_mode="multiplicative", rescaling_sigma=0.5, time_flip_p=0.0, sign_flip_p=0.0)
    loader = build_data(cfg, ("train",), seed=0).loaders["train"]
    me = os.getpid()
    start_rss = _status(me)["VmRSS"]  # torch and the loader, before any batch
    peak_sum, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak_sum[0] = max(peak_sum[0], _rss(me) + sum(_rss(c) for c in _children(me)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began, seen, epoch, checksum = time.perf_counter(), 0, 0, 0.0
    while seen < batches:
        loader.epoch_sampler.set_epoch(epoch)
        for batch in loader:
            x = batch["ecg"]
            checksum += float(x[:, :, :, :8].sum())
            seen += 1
            if seen == batches:
                break
        epoch += 1
    seconds = time.perf_counter() - began
    kids = _children(me)
    pss = _pss(me) + sum(_pss(c) for c in kids)
    stop.set()
    sampler.join()
    return dict(start_rss=start_rss, main_hwm=_status(me)["VmHWM"], sum_rss=peak_sum[0], sum_pss=pss,
                workers=len(kids), iterate_s=seconds, batches=seen, shape=list(x.shape))


# ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="records in the large store (default 50000)")
    parser.add_argument("--small-n", type=int, default=5_000, help="records in the small store (default 5000)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--time-steps", type=int, default=2500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tmp-dir", default=None, help="where to build the stores (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the stores (for a rerun with --reuse DIR)")
    parser.add_argument("--reuse", default=None, help="measure stores already built in DIR by --keep")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()

    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.batches, args.batch_size, args.time_steps, args.workers)))
        return 0

    sizes = sorted({args.small_n, args.n})
    need = sum(n * LEADS * LENGTH * 2 for n in sizes)
    work = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="store_rss_", dir=args.tmp_dir))
    free = shutil.disk_usage(work).free
    if not args.reuse and free < need * 1.1:
        shutil.rmtree(work)
        print(f"not enough free space in {work.parent}: the stores need {need / 2**30:.1f} GiB, "
              f"{free / 2**30:.1f} GiB free; use --n / --small-n to shrink, or --tmp-dir elsewhere", file=sys.stderr)
        return 2
    print(f"stores in {work}: {', '.join(f'{n:,} records' for n in sizes)} ({need / 2**30:.1f} GiB); "
          f"{args.batches} batches of {args.batch_size} x 12 x {args.time_steps}, {args.workers} workers")
    rows = []
    try:
        for n in sizes:
            root = work / f"ecg_{n}"
            build_s = 0.0 if args.reuse else build(root, n)
            res = subprocess.run([sys.executable, __file__, "--measure", str(root), "--batches", str(args.batches),
                                  "--batch-size", str(args.batch_size), "--time-steps", str(args.time_steps),
                                  "--workers", str(args.workers)], capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                return 1
            rows.append(dict(n=n, build_s=build_s, disk=n * LEADS * LENGTH * 2, **json.loads(res.stdout)))
    finally:
        if not args.keep and not args.reuse:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'records':>8} {'on disk':>9} {'main at start':>14} {'main peak RSS':>14} {'main+workers RSS':>17} "
          f"{'main+workers PSS':>17} {'build':>7} {'iterate':>8}")
    for r in rows:
        print(f"{r['n']:>8,} {r['disk'] / 2**30:>7.2f} G {r['start_rss'] / MiB:>11.0f} MB "
              f"{r['main_hwm'] / MiB:>11.0f} MB {r['sum_rss'] / MiB:>14.0f} MB "
              f"{r['sum_pss'] / MiB:>14.0f} MB {r['build_s']:>6.1f}s {r['iterate_s']:>7.1f}s")
    worst = max(max(r["main_hwm"], r["sum_rss"]) for r in rows)
    print(f"\nlargest figure {worst / MiB:.0f} MB (target < 1536 MB); "
          f"{rows[-1]['batches']} batches of {rows[-1]['shape']} per store; psutil "
          f"{'used' if _has_psutil() else 'absent, read /proc'}")
    return 0


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
