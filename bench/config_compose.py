"""Benchmark: config composition, util.config.compose vs hydra-core 1.3 (a benchmark, not a test).

Both composers get the SAME seed-shaped config tree (about 40 YAML files, generated below into
a temp dir so later changes to configs/ do not move the numbers) and the same command line:

    primary finetune, experiment=fine_tuning/ecg_arrhythmia
    trainer.max_epochs=50 data.batch_size=32 model.learning_rate=1e-5

and each must return a fully resolved config:
  ours:  util.config.compose(config_dir, "finetune", overrides)
  hydra: initialize_config_dir(version_base="1.3") + compose(..., return_hydra_config=True)
         + hydra.runtime.output_dir / hydra.job.num set (as a real run does) + HydraConfig
         + OmegaConf.to_container(cfg, resolve=True)

Reported: median and IQR of wall time per composition, the hydra/ours ratio, ours on a fresh
copy of the tree each call (nothing it may cache can hit), the first compose in a new process,
and the import time of util.config (and of hydra) in fresh subprocesses.

Run from the repository root (hydra is optional; without it only ours is reported):
    /work/scratch/hydra-venv/bin/python bench/config_compose.py [--repeat 200] [--hydra-repeat 50]
        [--importtime] [--dump-tree DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

PRIMARY = "finetune"
OVERRIDES = [
    "experiment=fine_tuning/ecg_arrhythmia",
    "trainer.max_epochs=50",
    "data.batch_size=32",
    "model.learning_rate=1e-5",
]


# --------------------------------------------------------------------------------------------
# The config tree: shaped like the seed's configs (dmnkf/dl-framework), plain keys only, no
# `_target_` (instantiation is not benchmarked), no Hydra plugins, so real Hydra composes it.
# --------------------------------------------------------------------------------------------

PRIMARY_DEFAULTS = """\
defaults:
  - _self_
  - data: null
  - model: null
  - modality: null
  - trainer: default
  - callbacks: default
  - logger: tensorboard
  - paths: default
  - extras: default
  - hydra: default
  - experiment: null
  - hparams_search: null
  - optional local: default
  - debug: null
"""

TREE: dict[str, str] = {
    # ---- primaries ------------------------------------------------------------------------
    "finetune.yaml": "# @package _global_\n# primary: fine-tuning\n" + PRIMARY_DEFAULTS + """
task_name: finetune
tags: [dev]
seed: 42
ckpt_path: null
optimized_metric: null
""",
    "pretrain.yaml": "# @package _global_\n# primary: pre-training\n" + PRIMARY_DEFAULTS + """
task_name: pretrain
tags: [dev]
seed: 42
ckpt_path: null
""",
    "artifacts.yaml": "# @package _global_\n# primary: embeddings / saliency\n" + PRIMARY_DEFAULTS + """
task_name: artifacts
tags: [dev]
seed: 42
ckpt_path: null
splits: [train, val, test]
""",
    # ---- data: nested defaults (`- default` loads data/default.yaml into `data`) -----------
    "data/default.yaml": """
data_root: ${paths.data_dir}
dataset_key: ${modality.dataset_key}
dataset_dir: ${.data_root}/${.dataset_key}
num_workers: 4
pin_memory: true
persistent_workers: true
use_train_subsample: false
downstream: false
""",
    "data/ecg.yaml": """
defaults:
  - default

batch_size: 16
input_electrodes: ${modality.input_electrodes}
time_steps: ${modality.time_steps}
sampling_rate: ${modality.sampling_rate}
crop_scale: 0.5
jitter_sigma: 0.25
rescaling_sigma: 0.5
ft_surr_phase_noise: 0.075
cross_validation: false
fold_number: null
""",
    "data/cmr.yaml": """
defaults:
  - default

batch_size: 32
augmentation_rate: 0.95
live_loading: false
cross_validation: false
fold_number: null
manual_crop: null
img_size: ${modality.img_size}
rotation_degrees: 45
brightness: 0.5
contrast: 0.5
saturation: 0.25
random_crop_scale: [0.6, 1.0]
""",
    # ---- model -----------------------------------------------------------------------------
    "model/ecg_encoder.yaml": """
name: signal_vit
img_size:
  - ${modality.input_channels}
  - ${modality.input_electrodes}
  - ${modality.time_steps}
patch_size: [1, 100]
embedding_dim: 384
depth: 3
num_heads: 6
mlp_ratio: 4.0
qkv_bias: true
norm_eps: 1e-6
global_pool: attention_pool
""",
    "model/ecg_classifier.yaml": """
defaults:
  - ecg_encoder

name: signal_vit_classifier
learning_rate: 3e-6
weight_decay: .05
layer_decay: 0.75
drop_path_rate: 0.1
mask_ratio: 0.0
mask_c_ratio: 0.0
mask_t_ratio: 0.0
warmup_epochs: 5
max_epochs: ${trainer.max_epochs}
smoothing: 0.1
num_classes: ${modality.num_classes}
task_type: ${modality.task_type}
pretrained_weights: ${paths.data_dir}/model_weights/signal_encoder_mmcl.pth
""",
    "model/mae.yaml": """
defaults:
  - ecg_encoder

name: signal_mae
global_pool: avg
mask_ratio: 0.8
ncc_weight: 0.1
norm_pix_loss: false
decoder_embed_dim: 256
decoder_depth: 2
decoder_num_heads: 8
learning_rate: 1e-5
weight_decay: 0.15
warmup_epochs: 40
max_epochs: ${trainer.max_epochs}
pretrained_weights: null
""",
    "model/cmr_encoder.yaml": """
name: resnet
backbone_model_name: resnet50
""",
    "model/cmr_classifier.yaml": """
defaults:
  - cmr_encoder

name: resnet_classifier
num_classes: ${modality.num_classes}
classifier_type: linear
learning_rate: 3e-3
weight_decay: 1e-4
scheduler: cosine
warmup_epochs: 10
max_epochs: ${trainer.max_epochs}
anneal_max_epochs: ${trainer.max_epochs}
freeze_encoder: false
pretrained_weights: ${paths.data_dir}/model_weights/image_encoder_mmcl.pth
""",
    "model/sim_clr.yaml": """
defaults:
  - cmr_encoder

name: simclr
projection_dim: 128
temperature: 0.1
learning_rate: 3e-3
weight_decay: 1e-4
lr_classifier: 3e-4
num_classes: ${modality.num_classes}
scheduler: anneal
max_epochs: ${trainer.max_epochs}
warmup_epochs: 10
""",
    # ---- modality: options with slashes add no package levels -----------------------------
    "modality/ecg/arrhythmia.yaml": """# @package modality
dataset_key: arrhythmia
input_channels: 1
input_electrodes: 12
time_steps: 2500
sampling_rate: 500
num_classes: 20
task_type: multilabel
leads: [I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6]
""",
    "modality/ecg/ptbxl.yaml": """
dataset_key: ptbxl
input_channels: 1
input_electrodes: 12
time_steps: 2500
sampling_rate: 500
num_classes: 5
task_type: multilabel
""",
    "modality/cmr/acdc.yaml": """
dataset_key: acdc
img_size: 224
num_classes: 5
task_type: multiclass
""",
    "modality/cmr/ukbb.yaml": """
dataset_key: ukbb
img_size: 210
num_classes: 2
task_type: binary
""",
    # ---- trainer / callbacks / logger / paths / hydra / extras -----------------------------
    "trainer/default.yaml": """
default_root_dir: ${paths.output_dir}
min_epochs: 1
max_epochs: 30
accelerator: auto
devices: 1
num_nodes: 1
precision: 16-mixed
check_val_every_n_epoch: 1
log_every_n_steps: 50
deterministic: false
gradient_clip_val: null
accumulate_grad_batches: 1
fast_dev_run: false
limit_train_batches: null
limit_val_batches: null
limit_test_batches: null
overfit_batches: 0
detect_anomaly: false
profiler: null
""",
    "trainer/cpu.yaml": "defaults:\n  - default\n\naccelerator: cpu\ndevices: 1\n",
    "trainer/gpu.yaml": "defaults:\n  - default\n\naccelerator: gpu\ndevices: 1\n",
    "callbacks/default.yaml": """
defaults:
  - model_checkpoint
  - early_stopping
  - _self_

model_checkpoint:
  dirpath: ${paths.output_dir}/checkpoints
  filename: "epoch_{epoch:03d}"
  monitor: val/loss
  mode: min
  save_last: true
  save_top_k: 1
early_stopping:
  monitor: val/loss
  mode: min
  patience: 25
""",
    "callbacks/model_checkpoint.yaml": """
model_checkpoint:
  dirpath: null
  filename: null
  monitor: null
  mode: min
  save_last: null
  save_top_k: 1
  every_n_epochs: 1
  save_weights_only: false
""",
    "callbacks/early_stopping.yaml": """
early_stopping:
  monitor: ???
  min_delta: 0.0
  patience: 3
  mode: min
  strict: true
  check_finite: true
""",
    "callbacks/none.yaml": "{}\n",
    "logger/tensorboard.yaml": """
tensorboard:
  save_dir: ${paths.output_dir}/tensorboard
  name: null
  prefix: ""
  tags: ${tags}
""",
    "logger/csv.yaml": """
csv:
  save_dir: ${paths.output_dir}
  name: csv
  prefix: ""
""",
    "paths/default.yaml": """
root_dir: ${oc.env:PROJECT_ROOT}
data_dir: ${paths.root_dir}/data
log_dir: ${paths.root_dir}/logs
output_dir: ${hydra:runtime.output_dir}
work_dir: ${hydra:runtime.cwd}
""",
    "hydra/default.yaml": """
run:
  dir: ${paths.log_dir}/${task_name}/runs/${now:%Y-%m-%d}_${now:%H-%M-%S}
sweep:
  dir: ${paths.log_dir}/${task_name}/multiruns/${now:%Y-%m-%d}_${now:%H-%M-%S}
  subdir: ${hydra.job.num}
job:
  chdir: false
""",
    "extras/default.yaml": "ignore_warnings: false\nenforce_tags: true\nprint_config: true\n",
    # ---- debug (global package, nested defaults) -------------------------------------------
    "debug/default.yaml": """# @package _global_
task_name: debug
callbacks: null
logger: null
extras:
  ignore_warnings: false
  enforce_tags: false
trainer:
  max_epochs: 1
  accelerator: cpu
  devices: 1
  detect_anomaly: true
data:
  num_workers: 0
  pin_memory: false
""",
    "debug/fdr.yaml": "# @package _global_\ndefaults:\n  - default\n\ntrainer:\n  fast_dev_run: true\n",
    "debug/overfit.yaml": """# @package _global_
defaults:
  - default

trainer:
  max_epochs: 20
  overfit_batches: 3
callbacks: null
""",
    "debug/limit.yaml": """# @package _global_
defaults:
  - default

trainer:
  max_epochs: 3
  limit_train_batches: 0.01
  limit_val_batches: 0.05
  limit_test_batches: 0.05
""",
    "debug/profiler.yaml": """# @package _global_
defaults:
  - default

trainer:
  max_epochs: 1
  profiler: simple
""",
    # ---- experiments: `override /group`, interpolation in the defaults list ----------------
    "experiment/pre_training/ecg_arrhythmia.yaml": """# @package _global_
defaults:
  - override /model: mae
  - override /modality: ${data}/arrhythmia
  - override /data: ecg

data:
  batch_size: 128
  jitter_sigma: 0.25
  rescaling_sigma: 0.5
  ft_surr_phase_noise: 0.1
trainer:
  max_epochs: 400
tags: [pretrain, ecg]
""",
    "experiment/pre_training/cmr_acdc.yaml": """# @package _global_
defaults:
  - override /model: sim_clr
  - override /modality: ${data}/acdc
  - override /data: cmr

trainer:
  max_epochs: 200
""",
    "experiment/fine_tuning/ecg_arrhythmia.yaml": """# @package _global_
defaults:
  - override /model: ecg_classifier
  - override /modality: ${data}/arrhythmia
  - override /data: ecg

data:
  batch_size: 128
  downstream: true
  jitter_sigma: 0.2
  rescaling_sigma: 0.5
  ft_surr_phase_noise: 0.075
model:
  warmup_epochs: 10
  learning_rate: 3e-6
trainer:
  max_epochs: 200
callbacks:
  early_stopping:
    monitor: val/auroc
    mode: max
  model_checkpoint:
    monitor: ${callbacks.early_stopping.monitor}
    mode: ${callbacks.early_stopping.mode}
tags: [finetune, ecg, "${modality.dataset_key}"]
""",
    "experiment/fine_tuning/ecg_ptbxl.yaml": """# @package _global_
defaults:
  - override /model: ecg_classifier
  - override /modality: ${data}/ptbxl
  - override /data: ecg

data:
  downstream: true
trainer:
  max_epochs: 100
""",
    "experiment/fine_tuning/cmr_acdc.yaml": """# @package _global_
defaults:
  - override /model: cmr_classifier
  - override /modality: ${data}/acdc
  - override /data: cmr

data:
  batch_size: 8
  saturation: 0.5
  downstream: true
model:
  learning_rate: 0.00009044034567645982
  classifier_type: linear
  warmup_epochs: 15
  weight_decay: 0.00000061789258310122
trainer:
  max_epochs: 150
""",
    # ---- hparams_search (basic sweeper shape; not selected in the timed composition) -------
    "hparams_search/ecg_classifier.yaml": """# @package _global_
defaults:
  - override /model: ecg_classifier

optimized_metric: val/auroc
task_name: hparams_search
hydra:
  mode: MULTIRUN
  sweeper:
    params:
      model.learning_rate: 1e-6,3e-6,1e-5,3e-5
      model.layer_decay: 0.5,0.75
""",
    "hparams_search/cmr_classifier.yaml": """# @package _global_
defaults:
  - override /model: cmr_classifier

optimized_metric: val/accuracy
task_name: hparams_search
hydra:
  mode: MULTIRUN
  sweeper:
    params:
      data.batch_size: 8,16,32
      model.classifier_type: linear,mlp
""",
}


def write_tree(root: Path) -> Path:
    """Write TREE under root/configs and return that config dir."""
    config_dir = root / "configs"
    for rel, text in TREE.items():
        path = config_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return config_dir


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------

def stats(samples_s: list[float]) -> tuple[float, float]:
    """Median and interquartile range, in seconds."""
    if len(samples_s) == 1:
        return samples_s[0], 0.0
    q1, med, q3 = statistics.quantiles(samples_s, n=4, method="inclusive")
    return med, q3 - q1


def time_calls(fn, n: int) -> list[float]:
    gc.collect()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:9.2f} ms"


def to_plain(node):
    """Config (a dict subclass) / DictConfig containers -> plain dicts and lists."""
    if isinstance(node, dict):
        return {k: to_plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [to_plain(v) for v in node]
    return node


def flatten(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def run_py(code: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *extra, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)


def fresh_process_seconds(code: str, env: dict, n: int) -> tuple[list[float], str | None]:
    """Run `code` (which prints one float per line) in n fresh interpreters."""
    out = []
    for _ in range(n):
        proc = run_py(code, env)
        if proc.returncode != 0:
            return out, (proc.stderr.strip().splitlines() or ["?"])[-1]
        out.append([float(x) for x in proc.stdout.split()])
    return out, None


def importtime_top(module_stmt: str, env: dict, k: int = 8) -> list[tuple[int, int, str]]:
    """Top k imports by cumulative time (us) from `python -X importtime`, minus the modules
    every interpreter imports at startup."""

    def parse(code):
        rows = []
        for line in run_py(code, env, "-X", "importtime").stderr.splitlines():
            # "import time:       123 |        456 |   package.module"
            parts = line.split(":", 1)[-1].split("|")
            if not line.startswith("import time:") or len(parts) != 3 or "self [us]" in line:
                continue
            self_us, cum_us, name = parts
            rows.append((int(cum_us), int(self_us), name.rstrip()))
        return rows

    startup = {name.strip() for _, _, name in parse("pass")}
    rows = [r for r in parse(module_stmt) if r[2].strip() not in startup]
    rows.sort(reverse=True)
    return rows[:k]


# --------------------------------------------------------------------------------------------
# The two composers
# --------------------------------------------------------------------------------------------

def load_ours():
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from util import config as ucfg  # noqa: WPS433
    except Exception as e:  # not written yet, or broken: report hydra only
        return None, f"{type(e).__name__}: {e}"
    if not hasattr(ucfg, "compose"):
        return None, "util.config has no compose()"
    return ucfg.compose, None


def load_hydra():
    try:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf, open_dict
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"

    def hydra_compose(config_dir: str, name: str, overrides, output_dir: str | None = None,
                      initialized: bool = False) -> dict:
        """Compose like a real single run, then resolve everything (hydra node included)."""
        if initialized:
            cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
        else:
            GlobalHydra.instance().clear()
            with initialize_config_dir(version_base="1.3", config_dir=config_dir):
                cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            # a real run sets output_dir to the resolved run dir; the compose API leaves it '???'
            cfg.hydra.runtime.output_dir = output_dir or OmegaConf.select(cfg, "hydra.run.dir")
            # hydra.sweep.subdir = ${hydra.job.num}: set as the first multirun job would, so a
            # full resolve of the hydra node does not stop at '???'
            cfg.hydra.job.num = 0
            cfg.hydra.job.id = "0"
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolvers read this
        return OmegaConf.to_container(cfg, resolve=True)

    class Initialized:
        """Context: hydra initialized once (compose API's warm path)."""

        def __init__(self, config_dir):
            GlobalHydra.instance().clear()
            self.ctx = initialize_config_dir(version_base="1.3", config_dir=config_dir)

        def __enter__(self):
            self.ctx.__enter__()

        def __exit__(self, *exc):
            return self.ctx.__exit__(*exc)

    hydra_compose.Initialized = Initialized
    return hydra_compose, None


# --------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=200, help="timed compositions, ours")
    ap.add_argument("--hydra-repeat", type=int, default=50, help="timed compositions, hydra")
    ap.add_argument("--procs", type=int, default=10, help="fresh interpreters for import timing")
    ap.add_argument("--importtime", action="store_true",
                    help="also list the slowest imports of util.config (python -X importtime)")
    ap.add_argument("--dump-tree", metavar="DIR", help="also write the config tree to DIR")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-config-"))
    try:
        config_dir = write_tree(tmp)
        if args.dump_tree:
            write_tree(Path(args.dump_tree))
        # paths/default.yaml needs PROJECT_ROOT; point it at the temp dir so nothing composed
        # here points into the checkout
        os.environ["PROJECT_ROOT"] = str(tmp)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PROJECT_ROOT=str(tmp))
        # import times as users see them: with bytecode caching (this machine sets
        # PYTHONDONTWRITEBYTECODE); one warm-up import writes the caches first
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        run_py("import util.config, util.cli", env)
        n_files = sum(1 for _ in config_dir.rglob("*.yaml"))

        print(f"config tree : {n_files} YAML files (generated in {config_dir})")
        print(f"composition : {PRIMARY} {' '.join(OVERRIDES)}")
        print(f"python      : {sys.version.split()[0]} ({sys.executable})")
        rows: list[tuple[str, str, str, str]] = []

        def row(label, samples):
            med, iqr = stats(samples)
            rows.append((label, fmt_ms(med), fmt_ms(iqr), str(len(samples))))
            return med

        # ---- ours ------------------------------------------------------------------------
        ours, ours_err = load_ours()
        ours_med = ours_result = None
        if ours is None:
            print(f"ours        : util.config.compose not available ({ours_err})")
        else:
            try:
                t0 = time.perf_counter()
                ours_result = to_plain(ours(str(config_dir), PRIMARY, list(OVERRIDES)))
                first = time.perf_counter() - t0
                samples = time_calls(lambda: ours(str(config_dir), PRIMARY, list(OVERRIDES)),
                                     args.repeat)
                rows.append(("ours: first compose in this process", fmt_ms(first), "", "1"))
                ours_med = row("ours: compose, warm process", samples)

                # fresh copy of the tree per call: nothing cached by path can hit
                cold = []
                for i in range(min(args.repeat, 50)):
                    copy = tmp / f"copy{i}"
                    shutil.copytree(config_dir, copy / "configs")
                    t0 = time.perf_counter()
                    ours(str(copy / "configs"), PRIMARY, list(OVERRIDES))
                    cold.append(time.perf_counter() - t0)
                    shutil.rmtree(copy)
                row("ours: compose, fresh copy of tree", cold)

                code = (
                    "import time; t=time.perf_counter(); from util.config import compose; "
                    "t1=time.perf_counter(); "
                    f"compose({str(config_dir)!r}, {PRIMARY!r}, {OVERRIDES!r}); "
                    "t2=time.perf_counter(); print(t1-t, t2-t1)")
                res, err = fresh_process_seconds(code, env, args.procs)
                if err:
                    print(f"ours        : fresh-process run failed: {err}")
                else:
                    row("import util.config (new process)", [r[0] for r in res])
                    row("ours: first compose, new process", [r[1] for r in res])
            except Exception as e:
                print(f"ours        : compose failed: {type(e).__name__}: {e}")
                ours = None

        # ---- hydra -----------------------------------------------------------------------
        hyd, hyd_err = load_hydra()
        hyd_med = None
        if hyd is None:
            print(f"hydra       : not available ({hyd_err}); reporting ours only")
        else:
            import hydra
            import omegaconf
            print(f"hydra       : hydra-core {hydra.__version__}, omegaconf {omegaconf.__version__}")
            try:
                t0 = time.perf_counter()
                hyd(str(config_dir), PRIMARY, OVERRIDES)
                first = time.perf_counter() - t0
                samples = time_calls(lambda: hyd(str(config_dir), PRIMARY, OVERRIDES),
                                     args.hydra_repeat)
                rows.append(("hydra: first compose in this process", fmt_ms(first), "", "1"))
                hyd_med = row("hydra: init+compose+resolve", samples)
                with hyd.Initialized(str(config_dir)):
                    samples = time_calls(
                        lambda: hyd(str(config_dir), PRIMARY, OVERRIDES, initialized=True),
                        args.hydra_repeat)
                row("hydra: compose+resolve (initialized)", samples)
                code = ("import time; t=time.perf_counter(); "
                        "from hydra import compose, initialize_config_dir; "
                        "from omegaconf import OmegaConf; print(time.perf_counter()-t)")
                res, err = fresh_process_seconds(code, env, args.procs)
                if not err:
                    row("import hydra+omegaconf (new process)", [r[0] for r in res])
            except Exception as e:
                print(f"hydra       : compose failed: {type(e).__name__}: {e}")
                hyd = None

        # ---- table -----------------------------------------------------------------------
        print()
        ratio_label = "ratio hydra/ours (warm medians; >1 = ours faster)"
        w = max([len(r[0]) for r in rows] + [len(ratio_label)])
        print(f"{'':{w}}  {'median':>12}  {'IQR':>12}  {'n':>4}")
        for label, med, iqr, n in rows:
            print(f"{label:{w}}  {med:>12}  {iqr:>12}  {n:>4}")
        if ours_med and hyd_med:
            print(f"{ratio_label:{w}}  {hyd_med / ours_med:11.1f}x")

        # ---- do both produce the same job config? (informational) ------------------------
        if ours_result is not None and hyd is not None:
            out_dir = (ours_result.get("paths") or {}).get("output_dir")
            ref = hyd(str(config_dir), PRIMARY, OVERRIDES, output_dir=out_dir)
            a = dict(flatten({k: v for k, v in ours_result.items() if k != "hydra"}))
            b = dict(flatten({k: v for k, v in ref.items() if k != "hydra"}))
            diff = sorted(k for k in a.keys() | b.keys()
                          if a.get(k, "<absent>") != b.get(k, "<absent>")
                          or type(a.get(k)) is not type(b.get(k)))
            if diff:
                print(f"\njob config differs from hydra's in {len(diff)} keys, e.g.:")
                for k in diff[:5]:
                    print(f"  {k}: ours={a.get(k, '<absent>')!r} hydra={b.get(k, '<absent>')!r}")
            else:
                print(f"\njob config identical to hydra's ({len(a)} leaf values)")

        if args.importtime and ours is not None:
            print("\nslowest imports of util.config (python -X importtime, cumulative):")
            for cum, self_us, name in importtime_top("import util.config", env):
                print(f"  {cum / 1e3:8.2f} ms cumulative  {self_us / 1e3:8.2f} ms self  {name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
