"""The preprocessing contract: what a model's input data looked like, so that data prepared
differently is never fed to it silently.

A store's ``info.json`` holds its contract (``datasets.ingest`` writes it): the sampling rate, record
length, channel order, units, filters and normalisation, and how the store was made. Checkpoints and
exported encoders record the contract of the data they were trained on; fine-tuning, evaluation and
artifacts compare it with the store they are given (``mismatches``) and refuse a difference in the
fields that change what the model sees (``COMPARED``), unless the run allows it explicitly
(``data.contract_mismatch=warn``), which the log then says.
"""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["COMPARED", "mismatches", "describe"]

# the fields that change what a network sees (``normalize``: the signal loader's per-crop z-score); the
# record length, the source and the options that produced the same values (e.g. the number of ingest
# workers) may differ
COMPARED = ("modality", "sampling_rate", "channel_names", "units", "baseline", "clip", "zscore", "normalize",
            "image_size", "intensity")


def mismatches(trained: Optional[dict], given: Optional[dict]) -> list[str]:
    """``field: trained value vs given value`` for every compared field the two contracts both state
    and that differs (empty when either contract is unknown)."""
    if not trained or not given:
        return []
    out = []
    for key in COMPARED:
        if key in trained and key in given and trained[key] != given[key]:
            out.append(f"{key}: {trained[key]!r} (trained) vs {given[key]!r} (this data)")
    return out


def describe(contract: Optional[dict]) -> str:
    """One line: the compared fields a contract states."""
    if not contract:
        return "unknown"
    return ", ".join(f"{k}={contract[k]}" for k in COMPARED if k in contract)


def check(trained: Optional[dict], given: Optional[dict], *, what: str, policy: str, log: Any = None) -> None:
    """Refuse (``policy`` error) or warn about (``warn``) a contract mismatch; ``what`` names the model.
    A contract of several inputs (one sub-contract per input field, e.g. paired data) is compared
    input by input."""
    from util.errors import ConfigError

    if trained and given:
        nested = [k for k, v in trained.items() if isinstance(v, dict) and isinstance(given.get(k), dict)]
        for field in nested:
            check(trained[field], given[field], what=f"{what} ({field})", policy=policy, log=log)
    found = mismatches(trained, given)
    if not found:
        return
    message = f"{what} was trained on data prepared differently from this data: {'; '.join(found)}"
    if policy == "warn":
        if log is not None:
            log.warning("data.contract_mismatch=warn: using it anyway: %s", message)
        return
    raise ConfigError(f"{message}. Ingest the data with the trained contract (python -m datasets.ingest ... "
                      "--rate/--baseline/--zscore), or accept the difference with data.contract_mismatch=warn")
