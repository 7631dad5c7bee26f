"""torch.distributed behaviour of the shared command line (CPU, gloo, 2 local processes): a sweep runs
every job on all ranks in order, and a crashing rank ends the run instead of hanging the others."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENTRY = """\
import json, os, sys
sys.path.insert(0, {repo!r})
import torch.distributed as dist
from util.cli import run_cli

def main(cfg):
    rank = int(os.environ.get("RANK", "0"))
    if cfg.get("crash_rank") == rank:
        raise RuntimeError("rank %d crashed" % rank)
    dist.barrier()  # the other rank waits here for the crashed one
    with open(os.path.join(cfg.paths.output_dir, "seen.jsonl"), "a") as f:
        f.write(json.dumps({{"rank": rank, "world": dist.get_world_size(), "epochs": cfg.trainer.max_epochs}}) + "\\n")
    return {{"epochs": cfg.trainer.max_epochs}}

sys.exit(run_cli(main, primary="finetune", prog="entry.py"))
"""


def torchrun_cmd(tmp_path, *args):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    script = tmp_path / "entry.py"
    script.write_text(ENTRY.format(repo=REPO))
    return [torchrun, "--standalone", "--nproc_per_node=2", str(script), f"paths.log_dir={tmp_path}/logs",
            f"paths.data_dir={tmp_path}/data", *args]


def test_a_sweep_under_torchrun_runs_each_job_on_all_ranks_in_order(tmp_path):
    cmd = torchrun_cmd(tmp_path, "-m", "trainer.max_epochs=1,2", f"hydra.sweep.dir={tmp_path}/sweep")
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=170,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    for num, epochs in (("0", 1), ("1", 2)):
        seen = [json.loads(line) for line in open(tmp_path / "sweep" / num / "seen.jsonl")]
        assert sorted(r["rank"] for r in seen) == [0, 1]
        assert all(r["world"] == 2 and r["epochs"] == epochs for r in seen)
    summary = json.load(open(tmp_path / "sweep" / "summary.json"))
    assert [j["metrics"] for j in summary["jobs"]] == [{"epochs": 1}, {"epochs": 2}]


def test_a_crashing_rank_makes_the_others_exit_instead_of_hanging(tmp_path):
    cmd = torchrun_cmd(tmp_path, "+crash_rank=1")
    start = time.time()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=170,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode != 0
    assert time.time() - start < 120
    assert "rank 1 crashed" in res.stderr


@pytest.mark.slow
def test_two_process_pretraining_matches_one_process_with_the_same_global_batch(tmp_path):
    """DDP averages gradients over ranks; data order (one permutation per epoch, sharded by rank),
    crops, augmentations and MAE masks are functions of the sample, so a few steps of 2 ranks x batch 2
    give the weights of 1 process x batch 4 (up to float summation order)."""
    import torch

    from datasets.demo import build_demo
    from util.checkpoint import load_checkpoint

    build_demo(str(tmp_path / "data"), n_records=96, seed=0, include_real=False)
    common = [f"paths.data_dir={tmp_path}/data", "model.size=pluto", "model.patch_size=[1,50]",
              "data.time_steps=500", "data.num_workers=0", "trainer.enable_progress_bar=false",
              "extras.print_config=false", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
              "model.optim.warmup_epochs=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, os.path.join(REPO, "main_pretrain.py"), *common, "data.batch_size=4",
                             f"hydra.run.dir={tmp_path}/one", f"paths.log_dir={tmp_path}/logs"],
                            cwd=REPO, capture_output=True, text=True, timeout=170, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    ddp = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", os.path.join(REPO, "main_pretrain.py"),
                          *common, "data.batch_size=2", f"hydra.run.dir={tmp_path}/two",
                          f"paths.log_dir={tmp_path}/logs"], cwd=REPO, capture_output=True, text=True,
                         timeout=170, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = load_checkpoint(str(tmp_path / "one" / "checkpoints" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "two" / "checkpoints" / "last.pt"))
    assert a["step"] == b["step"] == 2 * 4
    # The key bias (middle third of attn.qkv.bias) has an exactly zero gradient (softmax ignores a
    # constant added to every key): Adam turns its float noise into lr-sized steps, so it is left out.
    diffs = {}
    for k, wa in a["model"].items():
        wb = b["model"][k]
        if k.endswith("attn.qkv.bias"):
            d = wa.shape[0] // 3
            wa, wb = torch.cat([wa[:d], wa[2 * d:]]), torch.cat([wb[:d], wb[2 * d:]])
        diffs[k] = (wa - wb).abs().max().item()
    assert max(diffs.values()) <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
