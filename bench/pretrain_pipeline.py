"""Benchmark: MAE pretraining throughput from the store to the optimizer step (a benchmark, not a test).

Setup: a store of --records synthetic ECGs (12 leads x --length samples at 500 Hz, --dtype, no labels)
written with datasets.store.StoreWriter into a temp dir, and for each model size the config that
`python main_pretrain.py` composes (util.config.compose on configs/), pointed at that store:
  pluto  the README demo (experiment=pre_training/ecg_demo): MAE pluto (256/2/8, decoder 160/1/8),
         the demo's 2-s crops (1000), batch (16) and num_workers;
  tiny   the paper's pretraining model (experiment=pre_training/ecg_arrhythmia): MAE tiny
         (384/3/6, decoder 256/2/8), patch (1, 100), crop 2500, mask 0.8, batch 64 (the experiment
         says 128), num_workers from configs/data/default.yaml (auto: none on a CPU, more on a GPU);
  base   the same experiment with a ViT-base-sized MAE (768/12/12, decoder 512/8/16).
--batch / --workers / --crop / --augment-device override what the config gives; --batch max (CUDA)
takes the largest batch that fits, found as trainer.find_batch_size=true finds it (at most
--records: give it a store large enough). Everything else
(augmentations, pin_memory, persistent workers, precision `auto`, optimizer) is the config's.

Measured in ONE run; per size, rounds of (a) -> (d) -> (b) -> (c), so load from other processes
hits them alike; rates are medians over --rounds rounds of --steps-per-round optimizer steps:
  (a) end-to-end   datasets.build_data(cfg.data, ("train",), training=True) -> its train loader (the
                   config's workers, pin_memory, CPU augmentation) -> engine.train_one_epoch, the
                   engine's own step loop (to_device, on-device transforms, autocast forward + loss,
                   GradScaler backward, unscale, clip_grad_norm_, optimizer step, the finite-loss
                   check), called on the next --steps-per-round batches of the loader
                   (engine.Loop / LoopSettings / build_optimizer / make_scaler as engine.fit builds
                   them; no run logger, no checkpoints, no validation). No synchronisation inside.
  (b) model only   the same engine.train_one_epoch on ONE batch taken from that loader, moved to the
                   device and augmented once beforehand, repeated (no loader, no augmentation).
  (c) reference    the reference's pipeline: per-sample CPU transforms in DataLoader workers (the
                   re-implementation in bench/augment_throughput.py, imported: numpy crop start,
                   complex128 FT surrogate, jitter, rescaling, with the config's parameters) on whole
                   records read with Store.read (the reference keeps whole records), default
                   collate, the same worker count, pin_memory and persistence, feeding
                   bench/mae_step.py's ReferenceMAE (imported; the same size, patch and mask ratio;
                   its loss is the reference's MSE over all patches) with its step: to(device),
                   autocast forward, scaled backward, AdamW step, zero_grad, loss.item().
  (d) breakdown    the per-batch sequence of engine.train_one_epoch written out here stage by stage
                   (the engine has no smaller unit than one epoch loop, so this pass re-states its
                   step: keep it in step with engine.train_one_epoch), with a synchronisation
                   between stages on CUDA: loader wait (next() on the loader), host-to-device copy,
                   on-device augmentation, forward + loss, backward, optimizer (unscale, clip,
                   step, zero_grad, the finite check and LR). Mean ms per step over all its steps,
                   their sum against (a)'s step time, and the stage that bounds the pipeline.
Before each timed loader pass of (a) and (c), the prefetch_factor x workers batches that its workers
made ready while the other passes ran are taken and dropped, so the pass does not get them for free;
the pass then starts with every worker busy and its queue empty, which costs it at most one batch's
worth of one worker's time per round (what every epoch start costs a real run as well). (d) follows
(a) on the same loader, in the state (a) left it in. One --warmup step of each pass precedes the
rounds. Also reported: the model FLOPs per sample (util.flops' counter on the first model-only step,
as engine.fit counts them) and the MFU of (a) and (b) against the measured matmul peak in the
run's precision (util.flops.matmul_peak_gflops), the worker count, the config's loader defaults and what the loader made of
them on this device, and peak RSS. This process: resource.getrusage ru_maxrss (cumulative over the
sizes, which run pluto first; also printed right after the imports and the store writing). Its
workers (those of (a) and (c), per size): with psutil, each child's RSS sampled after every pass;
without it, on Linux, each child's own peak (VmHWM in /proc/<pid>/status) read after every pass;
elsewhere getrusage RUSAGE_CHILDREN (the largest reaped child, and `import torch` already reaps a
large one). Forked workers also count the pages they share with this process, so their sum
overstates the memory they add. The method used is printed.
--threads sets the main process's intra-op threads (workers use 1): on a small machine shared with
other jobs, torch's default (one per core) can be several times slower than 1.
--set KEY=VALUE adds any config override (e.g. trainer.precision=32, data.pin_memory=false).

Run from the repository root:
    python bench/pretrain_pipeline.py [--sizes pluto,tiny,base] [--records 2048] [--length 5000]
        [--dtype float16|float32] [--batch B|max] [--workers N] [--crop T] [--augment-device cpu|device]
        [--rounds 3] [--steps-per-round 6] [--warmup 1] [--threads N] [--device cpu|cuda]
        [--set KEY=VALUE ...] [--out results.json]
The smallest run, seconds (tests/test_bench_pipeline.py runs it in-process):
    --sizes pluto --records 64 --length 1000 --batch 8 --workers 0 --rounds 2 --steps-per-round 2
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PROJECT_ROOT", str(REPO))

import engine  # noqa: E402
from bench.augment_throughput import RefCompose, RefCrop, RefFTSurrogate, RefJitter, RefRescaling  # noqa: E402
from bench.mae_step import ReferenceMAE  # noqa: E402
from datasets import build_data  # noqa: E402
from datasets.loading import shutdown_workers  # noqa: E402
from datasets.store import STANDARD_LEADS, Store, StoreWriter, make_splits  # noqa: E402
from models.vit import VIT_SIZES  # noqa: E402
from util.config import compose, load_yaml  # noqa: E402
from util.flops import matmul_peak_gflops  # noqa: E402
from util.lr_sched import lr_at, set_lr  # noqa: E402
from util.schema import Str  # noqa: E402
from util.train_state import TrainState  # noqa: E402

RATE = 500
STAGES = ("loader wait", "host-to-device", "device augment", "forward+loss", "backward", "optimizer")
SIZES = {  # size -> (experiment, default batch: None = the config's)
    "pluto": ("pre_training/ecg_demo", None),
    "tiny": ("pre_training/ecg_arrhythmia", 64),
    "base": ("pre_training/ecg_arrhythmia", 64),  # ViT-base-sized (768/12/12, decoder 512/8/16)
}


# ---------------------------------------------------------------------------------------------------
# Setup: the store and the config
# ---------------------------------------------------------------------------------------------------
def write_bench_store(root: Path, n: int, length: int, dtype: str, seed: int = 0) -> Path:
    """``n`` records of 12 x ``length`` noisy sines in mV, every record in the train split."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float32) / RATE
    with StoreWriter(root, n, (len(STANDARD_LEADS), length), np.dtype(dtype)) as writer:
        for start in range(0, n, 128):
            k = min(128, n - start)
            freq = rng.uniform(0.8, 2.5, size=(k, 1, 1)).astype(np.float32)
            x = np.sin(2 * np.pi * freq * t) + 0.1 * rng.standard_normal((k, len(STANDARD_LEADS), length),
                                                                          dtype=np.float32)
            writer.write_batch(start, x)
        splits = make_splits(n, None, val=0.0, test=0.0, folds=0, train_subsample=0.0)
        return writer.finish(labels=None, record_ids=[f"b{i}" for i in range(n)], splits=splits,
                             info={"modality": "ecg", "task_type": None, "label_names": [], "sampling_rate": RATE,
                                   "lead_names": list(STANDARD_LEADS), "units": "mV", "provenance": "bench",
                                   "synthetic": True})


def bench_config(size: str, tmp: Path, args, store_length: int):
    """The config `python main_pretrain.py experiment=<size's>` composes, pointed at the bench store."""
    experiment, default_batch = SIZES[size]
    base = [f"experiment={experiment}", f"paths.data_dir={tmp}", "modality.dataset_key=bench_ecg",
            "data.build_demo=false", f"paths.log_dir={tmp}/logs", f"hydra.run.dir={tmp}/run",
            f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", "trainer.enable_progress_bar=false",
            f"model.size={size}"]
    probe = compose(str(REPO / "configs"), "pretrain", base, job_name="main_pretrain")
    overrides = list(base)
    batch = args.batch if args.batch not in (None, "max") else default_batch
    if batch:
        overrides.append(f"data.batch_size={batch}")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
        if args.workers == 0:
            overrides.append("data.persistent_workers=false")
    if args.augment_device:
        overrides.append(f"data.augment_device={args.augment_device}")
    crop, note = args.crop, None
    if crop is None and int(probe.data.time_steps) > store_length:  # e.g. a short --length in the test
        width = int(probe.model.patch_size[1])
        crop = max(width, store_length // 2 // width * width)
        note = f"crop {crop} (the config's {probe.data.time_steps} does not fit records of {store_length})"
    if crop is not None:
        overrides.append(f"data.time_steps={crop}")
    overrides += list(args.set)
    cfg = compose(str(REPO / "configs"), "pretrain", overrides, job_name="main_pretrain")
    engine.check_config(cfg, {"export_encoder": Str(nullable=True)})  # as main_pretrain.main does
    return cfg, probe, overrides, note


# ---------------------------------------------------------------------------------------------------
# The reference-style pipeline
# ---------------------------------------------------------------------------------------------------
class RefStoreDataset(torch.utils.data.Dataset):
    """Whole (1, leads, T) float32 records, then the reference's per-sample Compose (built per sample)."""

    def __init__(self, root, records, crop: int, data_cfg):
        self.store, self.records, self.crop = Store(root), np.asarray(records), crop
        self.params = (float(data_cfg.ft_surr_phase_noise), float(data_cfg.ft_surr_p), float(data_cfg.jitter_sigma),
                       float(data_cfg.rescaling_sigma))

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        x = torch.from_numpy(self.store.read(int(self.records[i])).astype(np.float32))[None]
        phase, p, jitter, rescale = self.params
        return RefCompose([RefCrop(self.crop), RefFTSurrogate(phase, p), RefJitter(jitter), RefRescaling(rescale)])(x)


def reference_model(cfg) -> ReferenceMAE:
    m, sizes = cfg.model, VIT_SIZES[cfg.model.size]
    return ReferenceMAE(input_size=(len(cfg.data.input_electrodes), int(cfg.data.time_steps)),
                        patch_size=tuple(int(v) for v in m.patch_size), ncc_weight=float(m.ncc_weight), **sizes)


# ---------------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_stream(loader):
    """The loader's batches over consecutive epochs (the sampler's epoch set as engine.fit does)."""
    for epoch in itertools.count():
        sampler = getattr(loader, "epoch_sampler", None)
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader


def discard(stream, n: int) -> None:
    for _ in range(n):
        next(stream)


def prefetched(loader) -> int:
    """Batches a loader's workers hold ready after an idle spell: prefetch_factor x workers."""
    return (loader.prefetch_factor or 0) * loader.num_workers if loader.num_workers > 0 else 0


class PeakRSS:
    """Peak RSS of this process (getrusage ru_maxrss) and of its children, the DataLoader workers:
    psutil when installed (children's current RSS, sampled after every pass), else procfs on Linux
    (each child's own peak, VmHWM, read after every pass while it lives), else getrusage
    RUSAGE_CHILDREN (the largest reaped child; `import torch` already reaps a large one here)."""

    def __init__(self):
        try:
            import psutil
            self.proc, self.method = psutil.Process(), "psutil"
        except ImportError:
            self.proc = None
            self.method = "procfs" if os.path.exists("/proc/self/status") else "getrusage"
        self.children_baseline = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        self.reset()

    def describe(self) -> str:
        return {"psutil": "self: getrusage ru_maxrss; workers: psutil RSS of each child, sampled after every pass",
                "procfs": "self: getrusage ru_maxrss; workers: each child's VmHWM (its own peak) from /proc, read "
                          "after every pass (psutil is not installed)",
                "getrusage": "self: getrusage ru_maxrss; workers: RUSAGE_CHILDREN ru_maxrss, the largest reaped "
                             "child (psutil is not installed, no /proc)"}[self.method] + \
            "; forked workers also count the pages they share with the main process"

    def reset(self) -> None:
        self.child_peaks: dict[int, float] = {}

    @staticmethod
    def _children_procfs() -> list[int]:
        me, kids = os.getpid(), []
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    with open(f"/proc/{name}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                            kids.append(int(name))
        return kids

    def sample(self) -> None:
        if self.method == "psutil":
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(Exception):
                    mib = child.memory_info().rss / 2**20
                    self.child_peaks[child.pid] = max(self.child_peaks.get(child.pid, 0.0), mib)
        elif self.method == "procfs":
            for pid in self._children_procfs():
                with contextlib.suppress(OSError, ValueError):
                    with open(f"/proc/{pid}/status") as f:
                        hwm = next((line for line in f if line.startswith("VmHWM:")), None)
                    if hwm is None:  # a worker that has exited (a zombie has no memory lines)
                        continue
                    mib = int(hwm.split()[1]) / 1024
                    self.child_peaks[pid] = max(self.child_peaks.get(pid, 0.0), mib)

    def report(self) -> dict:
        out = {"method": self.method, "self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if self.method == "getrusage":
            out.update(largest_child_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                       children_baseline_mib=self.children_baseline)
        else:
            peaks = sorted(self.child_peaks.values(), reverse=True)
            out.update(workers=len(peaks), largest_child_mib=peaks[0] if peaks else 0.0, children_sum_mib=sum(peaks))
        return out


def _batch_arg(text: str):
    if text == "max":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("a batch size is a positive integer or max")
    return value


def bench_size(size: str, tmp: Path, args, rss: PeakRSS) -> dict:
    cfg, probe, overrides, note = bench_config(size, tmp, args, args.length)
    rss.reset()
    rt = engine.setup(cfg, "bench/pretrain_pipeline.py")
    device = rt.device
    data = build_data(cfg.data, ("train",), seed=cfg.seed, world_size=1, rank=0, training=True)
    objective = engine.build_objective(cfg, data.info, rt)
    if args.batch == "max":  # what trainer.find_batch_size=true does before training
        data.set_batch_size(engine.find_batch_size(objective, data.loaders["train"], rt, data.device_transforms,
                                                   start=int(cfg.data.batch_size)))
    loader = data.loaders["train"]
    B, W = int(loader.batch_size), int(loader.num_workers)

    # what engine.fit builds before the epochs
    settings = engine.LoopSettings.from_config(cfg.trainer)
    optimizer, lr = engine.build_optimizer(objective, B * settings.accumulate_grad_batches, device)
    optim = objective.optim
    settings.lr, settings.min_lr, settings.warmup_epochs = lr, float(optim["min_lr"]), float(optim["warmup_epochs"])
    settings.schedule_epochs = float(optim["epochs"] or settings.max_epochs)
    state = TrainState(objective, optimizer, engine.make_scaler(rt.precision))
    model = objective
    if settings.compile:  # trainer.compile, as engine.fit does
        model = torch.compile(objective, mode=settings.compile_mode)
    loop = engine.Loop(model, settings, rt, data.device_transforms)
    loop_model_only = engine.Loop(model, settings, rt, {})
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    stream = batch_stream(loader)

    def engine_steps(the_loop, batches, n):
        engine.train_one_epoch(the_loop, state, itertools.islice(batches, n), epoch=0, total=n, generator=generator)

    fixed = engine.apply_transforms(engine.to_device(next(stream), device), data.device_transforms, generator)

    # (c) the reference-style pipeline over the same train records
    ref_ds = RefStoreDataset(data.info.splits["train"]["store"], data.records["train"], int(cfg.data.time_steps),
                             cfg.data)
    ref_loader = torch.utils.data.DataLoader(
        ref_ds, batch_size=B, shuffle=True, num_workers=W, pin_memory=loader.pin_memory, drop_last=True,
        persistent_workers=loader.persistent_workers, generator=torch.Generator().manual_seed(int(cfg.seed)))
    ref_stream = batch_stream(ref_loader)
    torch.manual_seed(int(cfg.seed))
    ref = reference_model(cfg).to(device)
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=lr,
                                betas=tuple(optim["betas"]), weight_decay=float(optim["weight_decay"]))
    ref_scaler = engine.make_scaler(rt.precision)
    mask_ratio = float(cfg.model.mask_ratio)

    def ref_steps(n):
        ref.train()
        for batch in itertools.islice(ref_stream, n):
            x = batch.to(device, non_blocking=True)
            with rt.precision.autocast():
                loss = ref(x, mask_ratio=mask_ratio)["loss"]
            ref_scaler.scale(loss).backward()
            ref_scaler.step(ref_opt)
            ref_scaler.update()
            ref_opt.zero_grad(set_to_none=True)
            loss.item()  # the reference reads the loss every step

    # (d) engine.train_one_epoch's per-batch sequence, stage by stage
    stage_ms = {k: [] for k in STAGES}
    wall_ms = []
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def breakdown_steps(n):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        for i in range(n):
            times = [time.perf_counter()]

            def mark():
                _sync(device)
                times.append(time.perf_counter())

            batch = next(stream)
            mark()
            batch = engine.to_device(batch, device)
            mark()
            batch = engine.apply_transforms(batch, loop.transforms, generator)
            mark()
            with rt.precision.autocast():
                outputs = model(batch, generator=generator)
            loss = outputs["loss"]
            mark()
            state.scaler.scale(loss.float() / settings.accumulate_grad_batches).backward()
            mark()
            set_lr(optimizer, lr_at(i / n, lr=settings.lr, min_lr=settings.min_lr,
                                    warmup_epochs=settings.warmup_epochs, epochs=settings.schedule_epochs))
            bool(torch.isfinite(loss.detach()).item())
            engine._scalars(outputs)
            state.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, float(settings.gradient_clip_val or "inf"))
            state.scaler.step(optimizer)
            state.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            mark()
            for k, (t0, t1) in zip(STAGES, zip(times, times[1:])):
                stage_ms[k].append((t1 - t0) * 1e3)
            wall_ms.append((times[-1] - times[0]) * 1e3)

    def timed(fn, *a):
        _sync(device)
        t0 = time.perf_counter()
        fn(*a)
        _sync(device)
        return time.perf_counter() - t0

    S = args.steps_per_round
    dropped_a, dropped_c = prefetched(loader), prefetched(ref_loader)
    # warm-up: first iterations, workers started, allocator warm
    engine_steps(loop, stream, args.warmup)
    loop_model_only.count_flops = True  # FLOPs per sample of the first step, as engine.fit counts them
    engine_steps(loop_model_only, itertools.repeat(fixed), max(1, args.warmup))
    ref_steps(args.warmup)
    rates = {"end_to_end": [], "model_only": [], "reference": []}
    for _ in range(args.rounds):
        discard(stream, dropped_a)
        rates["end_to_end"].append(S * B / timed(engine_steps, loop, stream, S))
        rss.sample()
        breakdown_steps(S)  # the loader in the steady state (a) left it in
        rates["model_only"].append(S * B / timed(engine_steps, loop_model_only, itertools.repeat(fixed), S))
        discard(ref_stream, dropped_c)
        rates["reference"].append(S * B / timed(ref_steps, S))
        rss.sample()

    rss.sample()
    stream.close()
    ref_stream.close()
    shutdown_workers(loader)
    shutdown_workers(ref_loader)

    means = {k: statistics.fmean(v) for k, v in stage_ms.items()}
    total = sum(means.values())
    e2e = statistics.median(rates["end_to_end"])
    bound = max(means, key=means.get)
    result = {
        "size": size, "batch": B, "workers": W, "crop": int(cfg.data.time_steps), "note": note,
        "overrides": overrides, "device": str(device), "precision": rt.precision.name,
        "params_m": sum(p.numel() for p in objective.parameters() if p.requires_grad) / 1e6,
        "dropped_prefetched": {"end_to_end": dropped_a, "reference": dropped_c},
    }
    flops = loop_model_only.flops_per_sample
    peak = matmul_peak_gflops(device, rt.precision.dtype)
    result["gflop_per_sample"], result["peak_tflops"] = (flops or 0.0) / 1e9, peak / 1e3
    for name, values in rates.items():
        med = statistics.median(values)
        result[name] = {"samples_per_s": med, "step_ms": B / med * 1e3, "rounds": values}
        if name != "reference" and flops:  # the reference runs the same model FLOPs, counted on ours
            result[name]["mfu"] = flops * med / 1e9 / peak
    result["breakdown"] = {
        "stages_ms": means, "sum_ms": total, "wall_ms": statistics.fmean(wall_ms),
        "end_to_end_step_ms": B / e2e * 1e3, "bound": bound, "bound_share": means[bound] / total,
        "steps": len(wall_ms),
    }
    data_default = load_yaml((REPO / "configs" / "data" / "default.yaml").read_text())
    result["defaults"] = {
        "config_num_workers": probe.data.num_workers, "data_default_num_workers": data_default["num_workers"],
        "pin_memory_config": bool(cfg.data.pin_memory), "pin_memory_effective": bool(loader.pin_memory),
        "persistent_workers": bool(loader.persistent_workers), "prefetch_factor": loader.prefetch_factor,
        "augment_device": cfg.data.augment_device, "device_transforms": sorted(data.device_transforms),
        "cpu_count": os.cpu_count(), "main_threads": torch.get_num_threads(), "worker_threads": 1,
    }
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["rss"] = rss.report()
    return result


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
def print_header(results: dict) -> None:
    s = results["settings"]
    print(f"MAE pretraining pipeline: store of {s['records']} records 12 x {s['length']} {s['dtype']} at {RATE} Hz; "
          f"device {s['device_name']}, torch {torch.__version__}, main-process threads {s['threads']}, "
          f"{s['cpu_count']} CPU(s)")
    print(f"{s['rounds']} rounds x {s['steps_per_round']} steps per pass (after {s['warmup']} warm-up step(s)); "
          f"rates: median [min-max] over rounds; store written in {s['store_s']:.1f} s")
    print(f"peak RSS method: {results['rss_method']}")
    print(f"peak RSS of this process after the imports and writing the store: {results['rss_after_store']:.0f} MiB")


def print_size(r: dict) -> None:
    print()
    print(f"== {r['size']} ({r['params_m']:.2f}M params), batch {r['batch']}, crop {r['crop']}, workers "
          f"{r['workers']}, {r['precision']} on {r['device']}" + (f"; {r['note']}" if r["note"] else ""))
    hdr = f"{'pipeline':<62} {'samples/s [min-max]':>24} {'ms/step':>9} {'MFU':>6}"
    print(hdr)
    print("-" * len(hdr))
    names = {"end_to_end": "(a) end-to-end: store -> loader -> engine.train_one_epoch",
             "model_only": "(b) model only: one batch on the device, same engine step",
             "reference": "(c) reference-style: per-sample CPU transforms + ReferenceMAE"}
    for key, label in names.items():
        v = r[key]
        span = f"{v['samples_per_s']:.1f} [{min(v['rounds']):.1f}-{max(v['rounds']):.1f}]"
        mfu = f"{100 * v['mfu']:.1f}%" if "mfu" in v else ""
        print(f"{label:<62} {span:>24} {v['step_ms']:>9.1f} {mfu:>6}")
    print(f"MFU: {r['gflop_per_sample']:.3g} GFLOP per sample (forward + loss + backward, util.flops) against the "
          f"measured {r['precision']} matmul peak {r['peak_tflops']:.4g} TFLOP/s")
    b = r["breakdown"]
    print(f"(d) breakdown of (a), mean over {b['steps']} steps"
          + (" (synchronised between stages)" if r["device"].startswith("cuda") else "") + ":")
    for k, v in b["stages_ms"].items():
        print(f"    {k:<16} {v:>9.1f} ms  {100 * v / b['sum_ms']:>5.1f}%")
    print(f"    {'sum':<16} {b['sum_ms']:>9.1f} ms  (step wall {b['wall_ms']:.1f} ms; (a) step "
          f"{b['end_to_end_step_ms']:.1f} ms)")
    print(f"    bound by: {b['bound']} ({100 * b['bound_share']:.0f}% of the step)")
    d = r["defaults"]
    print(f"loader: {r['workers']} worker(s) used (config {d['config_num_workers']}; data/default.yaml "
          f"{d['data_default_num_workers']}: datasets.loading.resolve_num_workers), pin_memory {d['pin_memory_config']} -> "
          f"{d['pin_memory_effective']} here, persistent {d['persistent_workers']}, prefetch "
          f"{d['prefetch_factor']}, augment_device {d['augment_device']}, {d['cpu_count']} CPU(s), "
          f"{d['main_threads']} main thread(s) + {d['worker_threads']} per worker; prefetched batches dropped "
          f"before each (a) {r['dropped_prefetched']['end_to_end']}, (c) {r['dropped_prefetched']['reference']}")
    m = r["rss"]
    if m["method"] == "getrusage":
        print(f"peak RSS: self {m['self_mib']:.0f} MiB (so far), largest reaped child {m['largest_child_mib']:.0f} "
              f"MiB (so far; {m['children_baseline_mib']:.0f} MiB before any worker)")
    else:
        print(f"peak RSS: self {m['self_mib']:.0f} MiB (so far, all sizes), {m['workers']} worker process(es) of "
              f"(a) and (c): largest {m['largest_child_mib']:.0f} MiB, sum {m['children_sum_mib']:.0f} MiB")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="pluto,tiny",
                    help="comma-separated: pluto (the demo), tiny (the paper's), base (ViT-base-sized)")
    ap.add_argument("--records", type=int, default=2048, help="records N in the store")
    ap.add_argument("--length", type=int, default=5000, help="samples T per record (500 Hz)")
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored dtype (as ingest)")
    ap.add_argument("--batch", type=_batch_arg, default=None,
                    help="batch size, or max: the largest that fits (CUDA; engine.find_batch_size); default: the "
                         "demo's for pluto, 64 for tiny and base")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    ap.add_argument("--crop", type=int, default=None, help="data.time_steps (default: the config's)")
    ap.add_argument("--augment-device", choices=("cpu", "device"), default=None,
                    help="data.augment_device (default: the config's, cpu)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra config override, e.g. --set trainer.precision=32 (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps-per-round", type=int, default=6, help="timed optimizer steps per pass and round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per pass before the rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        ap.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available")
    if args.batch == "max" and args.device != "cuda":
        ap.error("--batch max searches the largest batch that fits in GPU memory: use it with --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)

    rss = PeakRSS()
    results = {"settings": {
        **{k: getattr(args, k) for k in ("records", "length", "dtype", "rounds", "steps_per_round", "warmup",
                                         "device")},
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
    }, "rss_method": rss.describe(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_bench_store(tmp / "bench_ecg", args.records, args.length, args.dtype)
        results["settings"]["store_s"] = time.perf_counter() - t0
        results["rss_after_store"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print_header(results)
        for size in sizes:  # each size's table as soon as it is measured
            results["sizes"][size] = bench_size(size, tmp, args, rss)
            print_size(results["sizes"][size])
            sys.stdout.flush()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
