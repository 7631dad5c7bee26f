"""CODE-15%: 345,779 12-lead ECGs of 233,770 patients (Ribeiro et al.; doi:10.5281/zenodo.4916206).

Raw layout: the Zenodo record, with the 18 zips unpacked (anywhere below the raw folder)::

    exams.csv                 one line per exam: exam_id, age, is_male, nn_predicted_age, 1dAVb, RBBB,
                              LBBB, SB, ST, AF, patient_id, death, timey, normal_ecg, trace_file
    exams_part0.hdf5 ... exams_part17.hdf5
                              datasets ``tracings`` (N, 4096, 12) float32 and ``exam_id`` (N,)

Signals: 400 Hz, leads DI, DII, DIII, AVR, AVL, AVF, V1-V6; the 7-10 s recordings are zero-padded
(on both sides) to 4096 samples, and ``read`` strips the leading and trailing all-zero samples.

Amplitude units. The sources disagree, so the factor is an option:
  * The authors' READMEs (github.com/antonior92/automatic-ecg-diagnosis README.md and
    data/README.md; github.com/antonior92/ecg-age-prediction README.md) say the signals are "at the
    scale 1e-4V: so if the signal is in V it should be multiplied by 1000", which contradicts itself
    (1e-4 V would mean tenths of mV; "x1000 from V" means mV). The Zenodo record states no unit.
  * The authors' preprocessing repository, github.com/antonior92/ecg-preprocessing README.md
    ("Available datasets in HDF5"), says CODE-15% was produced by ``generate_h5.py --scale 2
    --use_all_leads --new_freq 400 --new_len 4096``: "they were scaled by 2"; its preprocess.py
    multiplies the WFDB physical signal (mV) by that scale. So the stored values are 2 x mV.
  * The PhysioNet Challenge 2025 conversion script (prepare_code15_data.py) writes them as mV unscaled.
  So ``--stored-per-mv`` (stored units per mV) defaults to 2, the authors' own statement of what
  they did; 1 reproduces the Challenge's reading. ``read`` divides by it and reports mV.

Options:
    --labels abnormalities|none   the six ECG abnormalities 1dAVb, RBBB, LBBB, SB, ST, AF
                                  (multilabel) or no labels (default abnormalities)
    --with-normal                 add normal_ecg as a seventh label
    --stored-per-mv X             stored units per millivolt (default 2, see above)

What comes out: record_id str(exam_id), patient_id str(patient_id), extra age, is_male,
nn_predicted_age, death, timey (where given). index() reads exams.csv and only the ``exam_id``
dataset of each HDF5 part (never the tracings): an exam of exams.csv in no readable part goes to
``index_problems``; an HDF5 row whose exam is not in exams.csv is counted in ``excluded``.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

import numpy as np

from datasets.sources import BadRecord, RecordRef, Signal

ABNORMALITIES = ["1dAVb", "RBBB", "LBBB", "SB", "ST", "AF"]
LEAD_NAMES = ["DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
RATE = 400.0
SAMPLES = 4096
STORED_PER_MV = 2.0
LABELS = ("abnormalities", "none")
NO_CSV_LINE = "HDF5 row without an exams.csv line"
REPEATED_ROW = "HDF5 row repeating an exam found earlier"
_EXTRA = ("age", "is_male", "nn_predicted_age", "death", "timey")


def _part_number(path: Path) -> int:
    match = re.search(r"exams_part(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _truth(value):
    """exams.csv flags ('True'/'False', bools or 0/1) -> bool, or None where the cell is empty."""
    if isinstance(value, str):
        text = value.strip().lower()
        return {"true": True, "false": False, "1": True, "0": False}.get(text)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def _json_value(value):
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class Code15Source:
    name = "code15"
    modality = "ecg"
    provenance = ("CODE-15%, a stratified 15% sample of the CODE study (Telehealth Network of Minas Gerais, "
                  "2010-2016): Ribeiro et al., doi:10.5281/zenodo.4916206, https://zenodo.org/records/4916206; "
                  "CC BY 4.0")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--labels", choices=LABELS, default="abnormalities",
                            help="the six abnormalities 1dAVb, RBBB, LBBB, SB, ST, AF (multilabel) or none")
        parser.add_argument("--with-normal", action="store_true", help="add normal_ecg as a seventh label")
        parser.add_argument("--stored-per-mv", type=float, default=STORED_PER_MV,
                            help="stored units per millivolt: 2 per the authors' preprocessing (default), "
                                 "1 to read the stored values as mV")

    def __init__(self, raw: Path, options: argparse.Namespace):
        self.raw = Path(raw)
        self.labels = getattr(options, "labels", None) or "abnormalities"
        if self.labels not in LABELS:
            raise ValueError(f"code15: --labels must be one of {', '.join(LABELS)}, not {self.labels!r}")
        self.with_normal = bool(getattr(options, "with_normal", False))
        if self.with_normal and self.labels == "none":
            raise ValueError("code15: --with-normal adds a label, so it needs --labels abnormalities")
        self.stored_per_mv = float(getattr(options, "stored_per_mv", None) or STORED_PER_MV)
        if not self.stored_per_mv > 0:
            raise ValueError(f"code15: --stored-per-mv must be positive, not {self.stored_per_mv}")
        self.index_problems: list = []
        self.excluded: dict = {}
        self.task_type = None
        self.label_names: list = []
        self._files: dict = {}  # path -> open h5py.File, in this process only
        self._pid = None

    def __getstate__(self):  # open HDF5 handles stay in the process that opened them
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None
        return state

    # ---- index ---------------------------------------------------------------------------------
    def _scan_parts(self) -> tuple[dict, dict]:
        """({exam_id: (path, row)}, {part file name: why it cannot be read}) from the exam_id datasets."""
        import h5py

        where, unreadable = {}, {}
        for path in sorted(self.raw.rglob("exams_part*.hdf5"), key=lambda p: (_part_number(p), str(p))):
            try:
                with h5py.File(path, "r") as f:
                    ids = np.asarray(f["exam_id"][:]).astype(np.int64).reshape(-1)
                    shape = f["tracings"].shape
            except Exception as e:  # noqa: BLE001 - h5py raises OSError, KeyError ... for damaged files
                unreadable[path.name] = f"{type(e).__name__}: {e}"
                continue
            if len(shape) != 3 or shape[0] != len(ids) or shape[2] != len(LEAD_NAMES):
                unreadable[path.name] = f"tracings has shape {shape} for {len(ids)} exam ids (expected (N, 4096, 12))"
                continue
            for row, exam in enumerate(ids.tolist()):
                if exam in where:
                    self.excluded[REPEATED_ROW] = self.excluded.get(REPEATED_ROW, 0) + 1
                else:
                    where[exam] = (str(path), row)
        return where, unreadable

    def index(self) -> list:
        import pandas as pd

        self.index_problems, self.excluded = [], {}
        csv = self.raw / "exams.csv"
        if not csv.is_file():
            raise FileNotFoundError(f"code15: {csv} not found: --raw must be the folder holding exams.csv "
                                    "and the unpacked exams_part*.hdf5 files")
        names = []
        if self.labels == "abnormalities":
            names = ABNORMALITIES + (["normal_ecg"] if self.with_normal else [])
        table = pd.read_csv(csv)
        missing = [c for c in ["exam_id", "patient_id", *names] if c not in table.columns]
        if missing:
            raise ValueError(f"code15: {csv} lacks the column(s) {', '.join(missing)}")
        where, unreadable = self._scan_parts()
        if not where and not unreadable:
            raise FileNotFoundError(f"code15: no exams_part*.hdf5 below {self.raw}: unpack the zips there")

        refs, in_csv = [], set()
        extra_columns = [c for c in _EXTRA if c in table.columns]
        used = ["exam_id", "patient_id", "trace_file", *names, *extra_columns]
        columns = {c: table[c].tolist() for c in dict.fromkeys(used) if c in table.columns}  # plain Python values
        for i in range(len(table)):
            row = {c: values[i] for c, values in columns.items()}
            exam = int(row["exam_id"])
            rid = str(exam)
            if exam in in_csv:
                self.index_problems.append((rid, "exams.csv lists this exam twice; the first line is used"))
                continue
            in_csv.add(exam)
            if exam not in where:
                part = row.get("trace_file") if isinstance(row.get("trace_file"), str) else ""
                if part in unreadable:
                    reason = f"its HDF5 part {part} cannot be read ({unreadable[part]})"
                else:
                    reason = f"in no HDF5 part (exams.csv says {part or 'no trace_file'})"
                self.index_problems.append((rid, reason))
                continue
            labels = None
            if names:
                flags = {n: _truth(row[n]) for n in names}
                empty = [n for n, v in flags.items() if v is None]
                if empty:
                    self.index_problems.append((rid, f"exams.csv has no value for {', '.join(empty)}"))
                    continue
                labels = [n for n in names if flags[n]]
            patient = row["patient_id"]
            patient = None if _json_value(patient) is None else str(int(patient))
            extra = {c: _json_value(row[c]) for c in extra_columns if _json_value(row[c]) is not None}
            refs.append(RecordRef(record_id=rid, patient_id=patient, labels=labels, location=where[exam],
                                  extra=extra))
        without = len(set(where) - in_csv)
        if without:
            self.excluded[NO_CSV_LINE] = without
        if names:
            self.task_type, self.label_names = "multilabel", list(names)
        return sorted(refs, key=lambda r: r.record_id)

    # ---- read ----------------------------------------------------------------------------------
    def _file(self, path: str):
        import h5py

        if self._pid != os.getpid():  # a forked worker must not reuse its parent's handles
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            self._files[path] = h5py.File(path, "r")
        return self._files[path]

    def read(self, ref: RecordRef) -> Signal:
        path, row = ref.location
        try:
            x = np.asarray(self._file(path)["tracings"][int(row)], dtype=np.float32)  # (4096, 12)
        except Exception as e:  # noqa: BLE001 - truncated or damaged part
            raise BadRecord(f"{Path(path).name} row {row} unreadable ({type(e).__name__}: {e})") from None
        active = np.flatnonzero(np.any(x != 0, axis=1))
        if active.size == 0:
            raise BadRecord("all-zero tracing (no signal recorded)")
        x = x[active[0]:active[-1] + 1].T / np.float32(self.stored_per_mv)  # padding off, stored units -> mV
        return Signal(data=x, sampling_rate=RATE, lead_names=list(LEAD_NAMES), units="mV")
