"""Readers of raw datasets for ingestion (``python -m datasets.ingest <source> --raw DIR --out DIR``).

A reader knows one raw format and nothing about stores, resampling or splits: ``datasets.ingest``
does those for every source alike. A reader is a class with

    name                  the source's command-line name, e.g. "ptbxl"
    modality              "ecg" or "cmr"
    add_arguments(parser) (classmethod) its own command-line options, e.g. --labels, --rate
    __init__(raw, options)  raw: the downloaded folder (Path); options: the parsed argparse.Namespace
    index() -> list[RecordRef]   every record the raw folder describes, cheaply (metadata only), sorted
                          by record_id; entries whose metadata is unusable go to ``self.index_problems``
                          as ``(record_id, reason)`` instead of raising
    task_type             after index(): "multilabel" | "multiclass" | "regression" | None (no labels)
    label_names           after index(): the label vocabulary, in column / class-index order
    read(ref) -> Signal | Image   one record's data in its native units and rate; raises
                          ``BadRecord(reason)`` for a record that cannot be used (truncated file,
                          unreadable header, missing leads, NaNs where the source has none ...)
    provenance            one line: what the data is and where it comes from (URL, licence)
    excluded              (optional) {reason: count} of records index() left out on purpose, e.g.
                          {"no statement of the chosen label set": 412}; the ingest report shows it

``read`` runs in worker processes: a reader and its ``RecordRef.location`` values must pickle.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from datasets.store import STANDARD_LEADS

__all__ = ["RecordRef", "Signal", "Image", "BadRecord", "SOURCES", "source_class", "standard_lead", "files_by_stem"]


@dataclass
class RecordRef:
    """One record as the raw metadata describes it (before its data is read)."""
    record_id: str                     # unique and stable across runs (it names the record in the store)
    patient_id: Optional[str] = None   # the person, where the source knows it (grouped splits, overlap)
    labels: Any = None                 # multilabel: list of label names; multiclass: one name;
                                       # regression: float or list of floats; None: unlabelled
    split: Optional[str] = None        # "train" | "val" | "test" when the source defines official splits
    location: Any = None               # what read() needs (a path, (file, row), ...): picklable
    extra: dict = field(default_factory=dict)  # anything else worth keeping (age, sex, ...), JSON-able


@dataclass
class Signal:
    """One ECG as read: native rate and units; ``ingest`` converts to the store's contract."""
    data: np.ndarray                   # (leads, T) float
    sampling_rate: float               # Hz
    lead_names: Sequence[str]          # as the file names them ("I", "DI", "aVR", "AVR", "V1", ...)
    units: str                         # "mV" | "uV" | "V"


@dataclass
class Image:
    """One CMR image as read (a 2-D slice of one frame)."""
    data: np.ndarray                   # (H, W) or (C, H, W), any numeric dtype
    pixel_spacing: Optional[Sequence[float]] = None  # mm per pixel (row, column), when known
    note: str = ""                     # e.g. "ED frame 1, slice 5 of 10"


class BadRecord(Exception):
    """A record that cannot be ingested; the ingest report lists it with this reason and goes on."""


# source name -> reader class (dotted path, imported on use)
SOURCES = {
    "ptbxl": "datasets.sources.ptbxl.PTBXLSource",
    "arrhythmia": "datasets.sources.arrhythmia.ArrhythmiaSource",
    "mimic_iv_ecg": "datasets.sources.mimic_iv_ecg.MimicIVECGSource",
    "code15": "datasets.sources.code15.Code15Source",
    "ukb_ecg": "datasets.sources.ukb_ecg.UKBECGSource",
    "dicom_ecg": "datasets.sources.dicom_ecg.DicomECGSource",
    "acdc": "datasets.sources.acdc.ACDCSource",
    "ukb_cmr": "datasets.sources.ukb_cmr.UKBCMRSource",
    "reference_pt": "datasets.sources.reference_pt.ReferencePTSource",
}


def source_class(name: str):
    """The reader class of source ``name``."""
    module, _, cls = SOURCES[name].rpartition(".")
    return getattr(importlib.import_module(module), cls)


_ALIASES = {"DI": "I", "DII": "II", "DIII": "III", "LEAD I": "I", "LEAD II": "II", "LEAD III": "III"}


def standard_lead(name: str) -> Optional[str]:
    """A lead name as files write it ('DI', 'AVR', 'Lead aVL (Goldberger)', 'v1') -> ours, or None."""
    key = str(name).split("(")[0].strip()
    upper = key.upper()
    upper = upper[5:].strip() if upper.startswith("LEAD ") else upper
    if upper in _ALIASES:
        return _ALIASES[upper]
    return {lead.upper(): lead for lead in STANDARD_LEADS}.get(upper)


def files_by_stem(raw: Path, suffix: str, problems: list) -> list[tuple[Path, str, str]]:
    """``(path, path relative to raw, stem)`` of every ``*<suffix>`` file below ``raw`` (hidden ones
    left out), sorted: the stem is the record id, so a second file with a stem already seen goes to
    ``problems`` as ``(stem, reason)`` instead."""
    found, seen = [], {}
    for path in sorted(p for p in Path(raw).rglob("*") if p.suffix.lower() == suffix and p.is_file()
                       and not p.name.startswith(".")):
        rel, stem = path.relative_to(raw).as_posix(), path.stem
        if stem in seen:
            problems.append((stem, f"{rel}: a second file with this record id (first: {seen[stem]})"))
            continue
        seen[stem] = rel
        found.append((path, rel, stem))
    return found
