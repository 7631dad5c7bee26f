"""bench/pretrain_pipeline.py still runs (its smallest setting, in this process): the three rates, the
MFU and the stage breakdown are reported. Not a timing assertion: the bounds are loose on purpose."""
import importlib.util
import json
import os

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_pretrain_pipeline",
                                                  os.path.join(REPO, "bench", "pretrain_pipeline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pipeline_bench_reports_three_rates_and_a_breakdown_that_adds_up(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "results.json"
    threads = torch.get_num_threads()
    try:  # one thread: 2 threads on 2 busy cores are several times slower
        bench.main(["--sizes", "pluto", "--records", "64", "--length", "800", "--batch", "8", "--workers", "0",
                    "--rounds", "2", "--steps-per-round", "2", "--warmup", "1", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "(a) end-to-end" in printed and "bound by:" in printed
    result = json.loads(out.read_text())["sizes"]["pluto"]
    assert result["batch"] == 8 and result["workers"] == 0 and result["crop"] == 400  # the demo's 1000 does not fit
    for name in ("end_to_end", "model_only", "reference"):
        assert result[name]["samples_per_s"] > 0 and len(result[name]["rounds"]) == 2
    # MFU of our two pipelines from the engine's FLOP count against the measured peak
    assert result["gflop_per_sample"] > 0 and result["peak_tflops"] > 0 and "MFU:" in printed
    assert 0 < result["end_to_end"]["mfu"] <= result["model_only"]["mfu"] * 2 and 0 < result["model_only"]["mfu"] < 2
    b = result["breakdown"]
    assert list(b["stages_ms"]) == list(bench.STAGES) and all(v >= 0 for v in b["stages_ms"].values())
    assert b["steps"] == 4 and b["bound"] in bench.STAGES
    assert abs(b["sum_ms"] - b["wall_ms"]) <= 0.05 * b["wall_ms"] + 1.0  # the stages cover the whole step
    # the same step as (a), timed apart on a shared machine: the same order of magnitude
    assert 0.1 < b["sum_ms"] / b["end_to_end_step_ms"] < 10
    assert result["rss"]["self_mib"] > 0
