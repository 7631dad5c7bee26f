"""Seeds and random-number-generator states.

Every random stream of a run is a pure function of integers (the run's seed, the epoch, the rank,
the sample): ``derive_seed(seed, epoch, index)`` names one. That is what makes a batch the same with
0 or 8 DataLoader workers, N ranks train like one process, and a resumed run end with the weights
of an uninterrupted one.
"""
from __future__ import annotations

import random
from typing import Optional

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. seed, epoch, rank or sample index)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def seed_everything(seed: Optional[int]) -> None:
    """Seed Python, NumPy and torch (the same seed on every rank; samplers shard the data)."""
    if seed is None:
        return
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors and plain values (``weights_only``-safe)."""
    import torch

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
