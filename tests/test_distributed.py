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
