"""Speed features that must not change results: torch.compile of the objective gives eager's losses
in fp32, and every run logs its model FLOPs and MFU."""
import json
import os

import main_pretrain
from builders import demo_data_fixture, pretrain_argv
from util import cli

import pytest


data_dir = demo_data_fixture()


def pretrain(data_dir, run_dir, *overrides):
    argv = pretrain_argv(data_dir, run_dir, "trainer.log_every_n_steps=1", "trainer.precision=32", *overrides)
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 0
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


@pytest.mark.slow  # compiling takes about a minute on 2 cores
def test_compiled_steps_give_the_eager_losses_for_20_fp32_steps(data_dir, tmp_path):
    # 96 demo records: 72 train -> 9 batches of 8 per epoch, 3 epochs = 27 optimizer steps
    eager = pretrain(data_dir, tmp_path / "eager", "trainer.max_epochs=3")
    compiled = pretrain(data_dir, tmp_path / "compiled", "trainer.max_epochs=3", "trainer.compile=true")
    steps_e = [(r["step"], r["train/loss"]) for r in eager if "train/grad_norm" in r]
    steps_c = [(r["step"], r["train/loss"]) for r in compiled if "train/grad_norm" in r]
    assert len(steps_e) == 27 and [s for s, _ in steps_e] == [s for s, _ in steps_c]
    for (step, a), (_, b) in zip(steps_e, steps_c):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (step, a, b)
    val_e = [r["val/loss"] for r in eager if "val/loss" in r]
    val_c = [r["val/loss"] for r in compiled if "val/loss" in r]
    assert val_e == pytest.approx(val_c, abs=1e-5)


def test_every_epoch_logs_its_throughput_tflops_and_mfu(data_dir, tmp_path):
    rows = pretrain(data_dir, tmp_path / "run", "trainer.max_epochs=1")
    epoch = [r for r in rows if "train/mfu" in r]
    assert len(epoch) == 1
    assert 0 < epoch[0]["train/mfu"] < 1 and epoch[0]["train/tflops"] > 0
    assert epoch[0]["train/samples_per_s_epoch"] > 0 and epoch[0]["train/samples"] == 72
    log = (tmp_path / "run" / "pretrain.log").read_text()
    assert "GFLOP per sample (forward + loss + backward)" in log and "measured matmul peak" in log


@pytest.mark.parametrize("cuda,cores,world,expected", [(False, 2, 1, 0), (False, 16, 1, 0), (True, 16, 1, 8),
                                                        (True, 16, 4, 3), (True, 2, 1, 1)])
def test_auto_workers_feed_a_gpu_and_leave_a_cpu_its_cores_for_the_step(monkeypatch, cuda, cores, world, expected):
    import torch

    from datasets.loading import resolve_num_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert resolve_num_workers("auto", world) == expected
    assert resolve_num_workers(3, world) == 3


def test_auto_augmentation_runs_batched_on_a_gpu_and_per_sample_on_a_cpu(monkeypatch):
    import torch

    from datasets.augment import resolve_augment_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_augment_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_augment_device("auto") == "device" and resolve_augment_device("cpu") == "cpu"


def test_measuring_the_matmul_peak_leaves_the_global_random_stream_alone():
    import torch

    from util.flops import MatmulPeak

    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    MatmulPeak(torch.device("cpu"), torch.float32, 64, 1).sample()
    assert torch.equal(torch.rand(4), expected)  # a resumed run restores its RNG before fit measures the peak
