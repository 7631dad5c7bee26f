"""Benchmark: ECG train augmentation throughput per CPU core (a benchmark, not a test).

What one DataLoader worker does per sample (``torch.set_num_threads(1)``, one process):
crop 12 x 5000 -> 12 x 2500, FT surrogate (phase noise 0.1, with probability p), jitter 0.25,
rescaling 0.5. Compared side by side in one run:

  reference  a re-implementation, from the math in ../shared/REFERENCE.md section 3, of the
             reference's per-sample transforms in its style: numpy coin flips and crop start,
             full complex128 fft/ifft with an explicit Hermitian phase array tiled over the leads,
             separate jitter and rescaling ops, each allocating.
  ours       datasets.augment.random_crop + ECGTransform (rfft/irfft in float32, jitter and
             rescaling fused into one noise draw and one product).
  batched    datasets.augment.BatchECGTransform on a CPU batch (B, 1, 12, 2500) of crops
             (the transform only; reported per sample).

FT probability p = 1 is the worst case, p = 0.5 the paper's pipeline. Reported: median and
IQR over repeats of the time per sample, samples/s per core, and ours/reference. The variants
take turns inside every repeat, so load from other processes hits them alike.

The reference's time depends on glibc malloc: its 480 KB complex128 buffers sit near malloc's
dynamic mmap/trim thresholds, and when they are served by fresh pages each sample pays page
faults (p = 1: about 1.0 ms/sample on this machine in one state, 1.8-2.5 ms in the other).
Ours allocates only buffers below 128 KB per sample and does not move. For the reference's
best case, keep everything on the heap:
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_TOP_PAD_=67108864

Run from the repository root:
    /work/scratch/venv/bin/python bench/augment_throughput.py [--repeat 15] [--samples 200]
        [--batch 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.augment import BatchECGTransform, ECGTransform, random_crop  # noqa: E402

LEADS, RECORD_LEN, TIME_STEPS = 12, 5000, 2500
PHASE_NOISE, JITTER_SIGMA, RESCALING_SIGMA = 0.1, 0.25, 0.5


# --------------------------------------------------------------------------------------------
# Reference-style baseline (per-sample, each op allocating; written from the math)
# --------------------------------------------------------------------------------------------

class RefCrop:
    def __init__(self, time_steps):
        self.time_steps = time_steps

    def __call__(self, sample):
        start = np.random.randint(low=0, high=sample.shape[-1] - self.time_steps + 1)
        cropped = torch.zeros_like(sample)  # the reference allocates a zero buffer, then slices
        cropped = sample[..., start:start + self.time_steps]
        return cropped


class RefFTSurrogate:
    def __init__(self, magnitude, prob):
        self.magnitude = magnitude
        self.prob = prob

    def hermitian_phase(self, n):
        """(1, n) complex128: 0, 2j*pi*U for 0 < k < n/2, [0 at n/2], conjugate mirror."""
        zero = torch.zeros((1, 1))
        if n % 2 == 0:
            half = torch.from_numpy(2j * np.pi * np.random.random_sample((1, n // 2 - 1)))
            return torch.cat([zero, half, zero, -torch.flip(half, [-1])], dim=-1)
        half = torch.from_numpy(2j * np.pi * np.random.random_sample((1, (n - 1) // 2)))
        return torch.cat([zero, half, -torch.flip(half, [-1])], dim=-1)

    def __call__(self, sample):
        if np.random.uniform() < self.prob:
            spectrum = torch.fft.fft(sample.double(), dim=-1)
            phase = torch.tile(self.hermitian_phase(spectrum.shape[-1]), (spectrum.shape[-2], 1))
            shifted = torch.fft.ifft(spectrum * torch.exp(self.magnitude * phase), dim=-1)
            return shifted.real.float()
        return sample


class RefJitter:
    def __init__(self, sigma, amplitude=0.6):
        self.sigma = sigma
        self.amplitude = amplitude

    def __call__(self, sample):
        scaled = self.amplitude * sample
        return sample + scaled * torch.normal(mean=0.0, std=self.sigma, size=sample.shape)


class RefRescaling:
    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, sample):
        return sample * torch.normal(mean=torch.tensor([1.0]), std=torch.tensor([self.sigma]))


class RefCompose:
    def __init__(self, ops):
        self.ops = ops

    def __call__(self, sample):
        for op in self.ops:
            sample = op(sample)
        return sample


def reference_pipeline(ft_p):
    """The reference's dataset builds its Compose inside __getitem__, once per sample."""
    return RefCompose([RefCrop(TIME_STEPS), RefFTSurrogate(PHASE_NOISE, ft_p),
                       RefJitter(JITTER_SIGMA), RefRescaling(RESCALING_SIGMA)])


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def time_interleaved(steps, repeat, warmup=3):
    """Median and IQR of seconds per sample for each named step.

    ``steps``: {name: (step, n_calls, samples_per_call)}. The variants take turns inside every
    repeat, so a change in machine load hits all of them alike.
    """
    for step, n_calls, _ in steps.values():
        for _ in range(warmup):
            step()
    per_sample = {name: [] for name in steps}
    for _ in range(repeat):
        for name, (step, n_calls, samples_per_call) in steps.items():
            start = time.perf_counter()
            for _ in range(n_calls):
                step()
            per_sample[name].append((time.perf_counter() - start) / (n_calls * samples_per_call))
    result = {}
    for name, times in per_sample.items():
        quartiles = statistics.quantiles(times, n=4)
        result[name] = (statistics.median(times), quartiles[2] - quartiles[0])
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per variant")
    parser.add_argument("--samples", type=int, default=200, help="samples per timed run")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the batched variant")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker uses 1)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    np.random.seed(0)
    torch.manual_seed(0)
    records = torch.randn(64, 1, LEADS, RECORD_LEN)  # the reference keeps (1, leads, T) samples
    generator = torch.Generator().manual_seed(0)
    counter = [0]

    def next_record():
        counter[0] = (counter[0] + 1) % len(records)
        return records[counter[0]]

    rows = []
    for ft_p in (1.0, 0.5):
        ours = ECGTransform(ft_surr_phase_noise=PHASE_NOISE, ft_surr_p=ft_p, jitter_sigma=JITTER_SIGMA,
                            rescaling_sigma=RESCALING_SIGMA)
        batched = BatchECGTransform(ft_surr_phase_noise=PHASE_NOISE, ft_surr_p=ft_p,
                                    jitter_sigma=JITTER_SIGMA, rescaling_sigma=RESCALING_SIGMA)
        batch = torch.stack([random_crop(records[i % len(records)], TIME_STEPS, generator)
                             for i in range(args.batch)])  # (B, 1, 12, 2500)

        n_batches = max(1, math.ceil(args.samples / args.batch))
        times = time_interleaved({
            "reference": (lambda: reference_pipeline(ft_p)(next_record()), args.samples, 1),
            "ours": (lambda: ours(random_crop(next_record(), TIME_STEPS, generator), generator), args.samples, 1),
            f"batched B={args.batch}": (lambda: batched(batch, generator), n_batches, args.batch),
        }, args.repeat)
        for name, (median, iqr) in times.items():
            rows.append((name, ft_p, median, iqr, times["reference"][0] / median))

    print(f"ECG augmentation, crop {LEADS}x{RECORD_LEN} -> {LEADS}x{TIME_STEPS} + FT surrogate {PHASE_NOISE} "
          f"+ jitter {JITTER_SIGMA} + rescaling {RESCALING_SIGMA}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeat} x {args.samples} samples")
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    print("glibc malloc: " + (" ".join(f"{k}={v}" for k, v in sorted(malloc.items())) or "defaults"))
    print(f"{'variant':<16} {'FT p':>5} {'us/sample':>10} {'IQR us':>8} {'samples/s':>10} {'vs ref':>7}")
    for name, ft_p, median, iqr, ratio in rows:
        print(f"{name:<16} {ft_p:>5.2f} {median * 1e6:>10.1f} {iqr * 1e6:>8.1f} {1.0 / median:>10.0f} "
              f"{ratio:>6.2f}x")


if __name__ == "__main__":
    main()
