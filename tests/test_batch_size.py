"""trainer.find_batch_size: the largest batch that fits, found by doubling then bisecting, probed
with real training steps that leave the model as they found it; refused where nothing runs out of
memory (a CPU); a resumed run keeps its checkpoint's batch size."""
import json
import os

import torch
import yaml

import engine
import main_pretrain
from builders import demo_data_fixture, pretrain_argv
from models.objectives import MAEPretraining
from util import cli
from util.batch_size import largest_fitting
from util.checkpoint import load_checkpoint

import pytest


data_dir = demo_data_fixture()


def expected_largest(threshold, limit):
    best = min(threshold, limit)
    return best - best % 8 if best >= 8 and best != limit else best


@pytest.mark.parametrize("start", [1, 8, 50, 64, 1000])
@pytest.mark.parametrize("limit", [5, 72, 1000])
def test_the_search_finds_the_largest_fitting_batch_in_few_probes(start, limit):
    for threshold in list(range(1, 130)) + [999, 5000]:
        probes = []

        def fits(size):
            probes.append(size)
            return size <= threshold

        found = largest_fitting(fits, start=start, limit=limit)
        assert found == expected_largest(threshold, limit), (start, limit, threshold, probes)
        assert all(1 <= p <= limit for p in probes)
        assert len(probes) <= 2 * max(1, limit).bit_length() + 2, probes  # doubling + bisection, not a scan


def test_the_search_says_0_when_not_even_one_record_fits():
    assert largest_fitting(lambda size: False, start=64, limit=100) == 0


def oom_above(monkeypatch, limit):
    """MAE training steps on batches of more than ``limit`` records run out of memory."""
    forward = MAEPretraining.forward
    sizes = []

    def limited(self, batch, generator=None):
        n = batch["ecg"].shape[0]
        if self.training:
            sizes.append(n)
        if self.training and n > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (fake): batch {n}")
        return forward(self, batch, generator)

    monkeypatch.setattr(MAEPretraining, "forward", limited)
    return sizes


def test_find_batch_size_probes_real_steps_and_restores_weights_and_rng(data_dir, monkeypatch):
    from datasets import build_data
    from util.cli import CONFIG_DIR
    from util.config import compose

    cfg = compose(CONFIG_DIR, "pretrain", [f"paths.data_dir={data_dir}", "model.size=pluto", "model.patch_size=[1,50]",
                                           "data.time_steps=500", "data.num_workers=0"])
    data = build_data(cfg.data, ("train",), seed=0)
    rt = engine.Runtime(torch.device("cpu"), engine.resolve_precision("32", torch.device("cpu")), 1, 0)
    objective = engine.build_objective(cfg, data.info, rt)
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    sizes = oom_above(monkeypatch, 44)
    torch.manual_seed(5)
    expected_rand = torch.rand(3)
    torch.manual_seed(5)
    found = engine.find_batch_size(objective, data.loaders["train"], rt, data.device_transforms, start=8)
    assert found == 40  # 8, 16, 32 fit, 64 not; 48 not, 40 fits
    assert sizes[:2] == [8, 8] and 64 in sizes and 48 in sizes  # two steps per probe
    after = objective.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the probe steps changed the weights"
    assert all(p.grad is None for p in objective.parameters())
    assert torch.equal(torch.rand(3), expected_rand), "the probe steps moved the global random stream"


def test_find_batch_size_is_refused_on_a_cpu_with_exit_code_2(data_dir, tmp_path, capsys):
    argv = pretrain_argv(data_dir, tmp_path / "run", "trainer.find_batch_size=true")
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 2
    err = capsys.readouterr().err
    assert "trainer.find_batch_size=true" in err and "data.batch_size" in err and "CUDA" in err


def test_a_run_trains_with_the_batch_found_and_its_resume_keeps_it(data_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "BATCH_SEARCH_DEVICES", ("cuda", "cpu"))  # probe on CPU with a fake limit
    oom_above(monkeypatch, 44)
    run = tmp_path / "run"
    argv = pretrain_argv(data_dir, run, "trainer.find_batch_size=true", "trainer.max_epochs=1", "trainer.precision=32")
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 0
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["train/samples"] for r in rows if "train/samples" in r] == [40]  # 76 train records: one batch of 40
    log = (run / "pretrain.log").read_text()
    assert "data.batch_size=40 per rank" in log and "effective batch 40" in log
    ckpt = load_checkpoint(str(run / "checkpoints" / "last.pt"))
    assert yaml.safe_load(ckpt["config"])["data"]["batch_size"] == 40

    def no_search(*args, **kwargs):
        raise AssertionError("a resumed run searched again")

    monkeypatch.setattr(engine, "find_batch_size", no_search)
    argv = pretrain_argv(data_dir, run, "trainer.find_batch_size=true", "trainer.max_epochs=2", "trainer.precision=32",
                         "resume=auto")
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 0
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["train/samples"] for r in rows if "train/samples" in r][-1] == 40
    assert "data.batch_size=40 from the checkpoint resumed" in (run / "pretrain.log").read_text()
    assert os.path.isfile(run / "encoder.pth")


TWO_RANKS = """\
import json, os, sys
sys.path.insert(0, {repo!r})
import torch
import engine
from datasets import build_data
from models.objectives import MAEPretraining
from util import distributed
from util.cli import CONFIG_DIR
from util.config import compose

distributed.init_distributed()
rank = distributed.rank()
limit = (44, 36)[rank]  # rank 1 has less memory
forward = MAEPretraining.forward

def limited(self, batch, generator=None):
    if self.training and batch["ecg"].shape[0] > limit:
        raise torch.OutOfMemoryError("fake")
    return forward(self, batch, generator)

MAEPretraining.forward = limited
cfg = compose(CONFIG_DIR, "pretrain", ["paths.data_dir={data}", "model.size=pluto", "model.patch_size=[1,50]",
                                       "data.time_steps=500", "data.num_workers=0"])
data = build_data(cfg.data, ("train",), seed=0, world_size=2, rank=rank)
rt = engine.Runtime(torch.device("cpu"), engine.resolve_precision("32", torch.device("cpu")), 2, rank)
objective = engine.build_objective(cfg, data.info, rt)
found = engine.find_batch_size(objective, data.loaders["train"], rt, data.device_transforms, start=8)
with open(os.path.join({out!r}, "rank%d.json" % rank), "w") as f:
    json.dump({{"found": found, "per_rank": len(data.loaders["train"].epoch_sampler)}}, f)
"""


@pytest.mark.slow  # two torchrun processes
def test_every_rank_takes_the_largest_batch_that_fits_on_all_of_them(data_dir, tmp_path):
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    script = tmp_path / "two_ranks.py"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script.write_text(TWO_RANKS.format(repo=repo, data=str(data_dir), out=str(tmp_path)))
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script)], cwd=repo,
                         capture_output=True, text=True, timeout=170, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    results = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    # 38 records per rank: 8, 16, 32 fit on both; 38 on rank 0 only (which alone would take it) -> both 32
    assert [r["found"] for r in results] == [32, 32] and results[0]["per_rank"] == 38
